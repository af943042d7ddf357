"""Quantization methods (``int8_dynamic``, ``int8_dynamic_token``, ``int8_weight``, ``int4_weight``) and hybrids.

A quantization method is a sweep method like a pruner: it changes the weights of the
selected Linear layers (rounds them onto an integer grid) in place. Each selected
``nn.Linear`` becomes a :class:`~audit.deploy.quantized.QuantReferenceLinear` holding the
dequantized weight, the variant's reference; deployment puts each on its scheme's quantized
kernel and proves it computes that reference (:mod:`audit.deploy.quantized`). With
``prune`` set, the named mask pruner runs first at the point's sparsity (a hybrid, e.g.
Wanda 50 % then int8); the grids are symmetric with an exact zero, so its mask survives.
"""

from __future__ import annotations

import time

from torch import nn

from audit.deploy.quantized import QuantReferenceLinear, describe
from audit.errors import UsageError
from audit.pruning.base import PruneContext, Pruner, build_record, layer_targets, select_layers
from audit.registry import PRUNERS
from audit.results import PruningRecord, QuantLayerRecord


class QuantizePruner(Pruner):
    """Quantize the selected layers (after the hybrid's pruner, if any) and record each one's grid."""

    @property
    def scheme(self) -> str:
        return str(self.spec.scheme)  # type: ignore[attr-defined]

    @property
    def group_size(self) -> int | None:
        return getattr(self.params, "group_size", None)

    @property
    def activations(self) -> str:
        """The weight-only schemes' activation dtype (``int8_dynamic`` quantizes its own)."""
        return str(getattr(self.params, "activations", "fp32"))

    def inner(self) -> Pruner | None:
        """The hybrid's pruner (None for plain quantization)."""
        params = self.params.inner_params()  # type: ignore[attr-defined]
        if params is None:
            return None
        spec = PRUNERS.get(self.params.prune)  # type: ignore[attr-defined]
        return spec.load()(spec, params)  # type: ignore[no-any-return]

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        inner = self.inner()
        if inner is not None:
            inner.validate(model, ctx)
        else:
            super().validate(model, ctx)
            if ctx.sparsity != 0.0:
                raise UsageError(
                    f"{self.name} without a prune method runs at sparsity 0, but this point asks for {ctx.sparsity:g}",
                    where=f"method {self.name!r}",
                    hint="set params.prune (e.g. prune: wanda) to prune before quantizing",
                )
        layers = select_layers(model, ctx.layers)
        device = next(model.parameters()).device.type
        if device != "cpu":
            raise UsageError(
                f"{self.name} deploys on the pinned torch's CPU kernel, but the model is on {device}",
                where=f"method {self.name!r}",
                hint="run quantization methods on a CPU machine (runtime.device: cpu)",
            )
        gs = self.group_size
        for name, module in layers:
            if gs is not None and module.in_features % gs:
                raise UsageError(
                    f"{self.name} with group_size {gs} needs every quantized layer's input width to be a multiple "
                    f"of {gs}, but {name} has {module.in_features} inputs",
                    where=f"method {self.name!r} params.group_size",
                    hint="pick a group_size that divides it (32, 64, 128, 256) or exclude the layer",
                )

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruningRecord:
        started = time.perf_counter()
        inner = self.inner()
        first = inner.prune(model, ctx) if inner is not None else None
        layers = select_layers(model, ctx.layers)
        targets = (
            layer_targets(layers, ctx.sparsity, ctx.layers)
            if inner is not None
            else dict.fromkeys((n for n, _ in layers), 0.0)
        )
        zeros_before = {n: int((m.weight == 0).sum()) for n, m in layers}
        quantized = []
        for name, module in layers:
            ref = QuantReferenceLinear(module, self.scheme, self.group_size, self.activations)
            _set(model, name, ref)
            quantized.append((name, ref))
        info = describe(self.scheme, self.group_size, self.activations)
        notes = list(first.notes) if first is not None else []
        if first is not None:
            notes.insert(0, f"pruned by {first.method} first (achieved {first.achieved_sparsity:.1%}), then quantized")
        notes.append(
            f"{info.bits}-bit round-to-nearest, {info.granularity}; activations {info.activations}; "
            f"deployed on {info.kernel}"
        )
        record = build_record(
            model=model, spec=self.spec, params=self.params, ctx=ctx, layers=quantized, targets=targets,
            started=started, notes=notes,
        )  # fmt: skip
        for rec, (name, ref) in zip(record.layers, quantized, strict=True):
            rec.quant = QuantLayerRecord(**info.as_dict(), zeros_before=zeros_before[name], zeros_kept=ref.zeros_kept)
        update = {} if first is None or first.profile is None else {"profile": first.profile}
        return record.model_copy(update=update) if update else record


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
