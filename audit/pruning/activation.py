"""Activation sparsity as a sweep method: TEAL (each layer's input) and CATS (a gated MLP's activation).

No weight changes. Each gate's threshold is the quantile, at the point's sparsity level, of the
magnitudes of the activations it sees on the calibration data; blocks are calibrated in order
(:func:`~audit.pruning.calibration.sequential_calibrate`), each on the outputs of the already gated
blocks before it, so a threshold is set on the activations the deployed model will see. Padded
positions never enter a quantile. What is gated and how it deploys: :mod:`audit.deploy.activation`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from audit.deploy.activation import ActSparseReferenceLinear, GatedActivation
from audit.errors import UsageError
from audit.models.decoders import set_module as _set
from audit.pruning.base import PruneContext, Pruner, build_record, select_layers
from audit.pruning.calibration import sequential_calibrate
from audit.results import ActivationLayerRecord, ActivationRecord, PruningRecord


class MagnitudeSample:
    """The magnitudes of a gate's calibration activations (every token, or an even stride when over ``cap``)."""

    def __init__(self, cap: int) -> None:
        self.cap = int(cap)
        self.parts: list[torch.Tensor] = []
        self.values = 0
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        self.tokens += int(x.shape[0])
        flat = x.detach().abs().float().reshape(-1).cpu()
        self.parts.append(flat)
        self.values += flat.numel()

    def threshold(self, sparsity: float) -> tuple[float, float]:
        """``(t, share below t)``: the ``sparsity`` quantile of the magnitudes and the share strictly below it."""
        if not self.values:
            raise UsageError("no calibration activation reached a gate", where="sweep.calibration")
        values = torch.cat(self.parts)
        if values.numel() > self.cap:
            step = -(-values.numel() // self.cap)
            values = values[::step]
        ordered = torch.sort(values).values
        k = min(int(round(sparsity * ordered.numel())), ordered.numel() - 1)
        t = float(ordered[k])
        return t, float((ordered < t).double().mean())


def gated_mlps(layers: list[tuple[str, nn.Module]], model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The selected ``down_proj`` layers whose parent is a gated MLP (``act_fn``, ``gate_proj``, ``up_proj``)."""
    out = []
    for name, module in layers:
        parent_name, _, child = name.rpartition(".")
        if child != "down_proj" or not parent_name:
            continue
        parent = model.get_submodule(parent_name)
        if all(hasattr(parent, a) for a in ("act_fn", "gate_proj", "up_proj")):
            out.append((name, module))
    return out


class ActivationSparsityPruner(Pruner):
    """``teal`` or ``cats`` (the spec's name): gate activations at calibrated magnitude thresholds."""

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        super().validate(model, ctx)
        if not 0.0 < float(ctx.sparsity) < 1.0:
            raise UsageError(
                f"{self.name} needs a target activation sparsity in (0, 1), found {ctx.sparsity:g}",
                where=f"method {self.name!r}",
                hint="the sweep's sparsity level is the share of activations zeroed, e.g. 0.4",
            )
        if ctx.layers.overrides:
            raise UsageError(
                f"{self.name} calibrates one activation sparsity for every gate; per-layer overrides do not apply",
                where="sweep.layers.overrides",
                hint="drop the overrides for this method",
            )
        device = next(model.parameters()).device.type
        if device != "cpu":
            raise UsageError(
                f"{self.name} deploys on the compiled CPU kernel, but the model is on {device}",
                where=f"method {self.name!r}",
                hint="run activation-sparsity methods on a CPU machine (runtime.device: cpu)",
            )
        layers = select_layers(model, ctx.layers)
        if self.name == "cats" and not gated_mlps(layers, model):
            raise UsageError(
                "cats gates the activation of a gated MLP (a down_proj whose parent has act_fn, gate_proj and "
                "up_proj, as in Llama), but no selected layer is such a down_proj",
                where=f"method {self.name!r}",
                hint="use teal for this architecture, or include the MLPs' down_proj in sweep.layers",
            )

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruningRecord:
        started = time.perf_counter()
        target = float(ctx.sparsity)
        cap = int(self.params.max_calibration_values)  # type: ignore[attr-defined]
        max_tokens = int(self.params.max_tokens)  # type: ignore[attr-defined]
        layers = select_layers(model, ctx.layers)
        gates: list[tuple[str, nn.Module]] = []  # (name sequential_calibrate files it under, the gate module)
        gated: dict[str, tuple[str, ActSparseReferenceLinear]] = {}  # gate name -> (layer name, its layer)
        recorded: list[tuple[str, nn.Module]] = []
        if self.name == "cats":
            for name, lin in gated_mlps(layers, model):
                mlp_name = name.rpartition(".")[0]
                mlp = model.get_submodule(mlp_name)
                act = GatedActivation(mlp.act_fn, 0.0)
                mlp.act_fn = act
                ref = ActSparseReferenceLinear(lin, 0.0, gated=False, max_tokens=max_tokens)
                _set(model, name, ref)
                gates.append((f"{mlp_name}.act_fn.gate", act.gate))
                gated[f"{mlp_name}.act_fn.gate"] = (name, ref)
                recorded.append((name, ref))
        else:
            for name, lin in layers:
                ref = ActSparseReferenceLinear(lin, 0.0, gated=True, max_tokens=max_tokens)
                _set(model, name, ref)
                gates.append((name, ref))
                gated[name] = (name, ref)
                recorded.append((name, ref))
        found: dict[str, ActivationLayerRecord] = {}

        def make_stat(_name: str, _module: nn.Module) -> MagnitudeSample:
            return MagnitudeSample(cap)

        def finish(name: str, module: nn.Module, stat: MagnitudeSample) -> None:
            t, below = stat.threshold(target)
            gate = module.gate if isinstance(module, ActSparseReferenceLinear) else module
            gate.threshold.fill_(t)
            layer_name, _ = gated[name]
            found[layer_name] = ActivationLayerRecord(
                gate="input" if self.name == "teal" else name.rpartition(".gate")[0],
                threshold=t, target=target, calibrated_sparsity=below, tokens=stat.tokens,
            )  # fmt: skip

        notes = sequential_calibrate(model, gates, self.calibration(ctx), make_stat=make_stat, finish=finish)
        widths = {n: m.in_features for n, m in recorded}
        total = sum(widths[n] for n in found)
        overall = sum(r.calibrated_sparsity * widths[n] for n, r in found.items()) / total if total else 0.0
        where = "each selected layer's input" if self.name == "teal" else "each gated MLP's activation output"
        notes.insert(
            0,
            f"{self.name}: {where} gated at a magnitude threshold calibrated to {target:.0%} activation sparsity "
            f"({overall:.1%} of calibration activations below it over {len(found)} gates); weights unchanged; calls "
            f"of at most {max_tokens} token(s) run the kernel that skips the weight rows of zeroed inputs",
        )
        record = build_record(
            model=model, spec=self.spec, params=self.params, ctx=ctx, layers=recorded,
            targets=dict.fromkeys(widths, 0.0), started=started, notes=notes,
        )  # fmt: skip
        for rec in record.layers:
            rec.activation = found.get(rec.name)
        summary = ActivationRecord(
            mode=self.name, target=target, calibrated_sparsity=overall, gates=len(found), max_tokens=max_tokens
        )
        return record.model_copy(update={"activation": summary})
