"""Convert a pruned model, in place, into its deployed form: one format per Linear layer.

Each ``nn.Linear`` is looked at once: a layer without zeros stays dense (structured
variants are already physically smaller), a layer that is too dense stays dense
without timing, and every other layer gets the format :func:`audit.deploy.choose.decide`
picks from measured timings. The original module is replaced, so the masked-dense
weights are freed as the conversion goes.

With ``deploy.regime_split_tokens`` set, a layer whose decode and prefill regimes pick different
formats (:func:`audit.deploy.choose.decide_regimes`) becomes a
:class:`~audit.deploy.regime.RegimeLinear` holding both (a dense side keeps the original module),
recorded as ``<decode>|<prefill>``, and is checked on inputs of both regimes against its masked
weight before the model-level checks (:meth:`Converter.check_regimes`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from audit.deploy.activation import ActSparseReferenceLinear, check_act_layer
from audit.deploy.choose import (
    Decision,
    LayerTimer,
    TimingCache,
    build_module,
    decide,
    decide_regimes,
)
from audit.deploy.format_classes import implementation, stored_bytes
from audit.deploy.formats import DENSE, spec_of
from audit.deploy.modules import DeployedLinear, top_level_linears
from audit.deploy.quantized import QuantReferenceLinear, check_quant_layer
from audit.deploy.regime import RegimeLinear, build_regime, check_regime_layer

if TYPE_CHECKING:
    from audit.config import DeployConfig

log = logging.getLogger(__name__)

TIMING_ROUNDS = 3
"""Interleaved dense/candidate rounds per layer configuration (median same-round ratio)."""


@dataclass
class LayerDeployment:
    """What deployment did to one Linear layer."""

    name: str
    format: str
    reason: str
    shape: tuple[int, int]
    density: float
    bytes_dense: int
    bytes_deployed: int
    speedup: float | None = None
    kept_dense: str | None = None
    """Why a dense layer stayed dense (:attr:`audit.deploy.choose.Decision.kept_dense`)."""


@dataclass
class Conversion:
    """The result of converting a model."""

    layers: list[LayerDeployment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_measured: int = 0
    timings_cached: int = 0

    def formats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.format] = out.get(layer.format, 0) + 1
        return dict(sorted(out.items()))

    def kept_dense(self) -> dict[str, int]:
        """Dense layers by why they stayed dense (``unknown`` for layers deployed earlier)."""
        out: dict[str, int] = {}
        for layer in self.layers:
            if layer.format == DENSE:
                why = layer.kept_dense or "unknown"
                out[why] = out.get(why, 0) + 1
        return dict(sorted(out.items()))


class Converter:
    """Chooses formats and swaps modules; one instance can serve every variant of a run."""

    def __init__(
        self,
        config: DeployConfig | None = None,
        cache: TimingCache | None = None,
        *,
        threads: int | None = None,
        timing_rounds: int = TIMING_ROUNDS,
    ) -> None:
        """``config``: the audit config's ``deploy:`` section (its defaults when None).

        ``threads``: the timing threads (``runtime.threads``; torch's current count when None).
        """
        if config is None:
            from audit.config import DeployConfig

            config = DeployConfig()
        self.config = config
        self.threads = threads
        self.timing_rounds = timing_rounds
        self.cache = (
            cache if cache is not None else (TimingCache.default() if config.timing_cache else TimingCache(None))
        )
        self._timers: dict[tuple[int, str], LayerTimer] = {}
        self.unavailable: dict[str, str] = {}

    def timer(self, device: str) -> LayerTimer:
        threads = self.threads or torch.get_num_threads()
        key = (threads, device)
        if key not in self._timers:
            self._timers[key] = LayerTimer(self.cache, threads, device, self.config.timing_min_s, self.timing_rounds)
        return self._timers[key]

    # -- candidates ----------------------------------------------------------------------
    def candidates(self, weight: torch.Tensor, density: float) -> tuple[list[tuple[str, float]], list[str]]:
        """(format, density to time at) pairs that apply to this weight, and why others do not."""
        device = weight.device.type
        out: list[tuple[str, float]] = []
        skipped: list[str] = []
        for name in self.config.formats:
            fmt = implementation(name)
            why = fmt.unavailable(device, weight.dtype)
            if why is not None:
                if fmt.worth_noting(weight):
                    self.unavailable.setdefault(name, why)
                continue
            cands, not_applied = fmt.applies_to(weight, density, self.config)
            out.extend(cands)
            skipped.extend(not_applied)
        return out, skipped

    # -- choosing ------------------------------------------------------------------------
    def choose(self, weight: torch.Tensor, has_bias: bool) -> tuple[Decision, float]:
        """The decision for one weight, and its density."""
        total = weight.numel()
        nnz = int(torch.count_nonzero(weight))
        density = nnz / total if total else 1.0
        if nnz == total:
            return Decision(DENSE, "no zeros to skip: stays dense", kept_dense="no_zeros"), density
        cands, skipped = self.candidates(weight, density)
        note = f"; not tried: {', '.join(skipped)}" if skipped else ""
        forced = self.config.force_format
        if forced is not None:
            names = [f for f, _ in cands]
            if forced in names or forced == DENSE:
                why = "forced" if forced == DENSE else None
                return Decision(forced, f"forced by deploy.force_format={forced}", kept_dense=why), density
            base = spec_of(forced).name
            why = self.unavailable.get(base) or next((s for s in skipped if s.startswith(forced)), "not applicable")
            return (
                Decision(
                    DENSE, f"kept dense: forced format {forced} does not apply ({why})", kept_dense="not_applicable"
                ),
                density,
            )
        if density > self.config.max_density:
            return (
                Decision(
                    DENSE,
                    f"kept dense without timing: density {density:.2f} is above deploy.max_density "
                    f"{self.config.max_density:g}",
                    kept_dense="above_max_density",
                ),
                density,
            )
        if not cands:
            return Decision(DENSE, f"kept dense: no sparse format applies{note}", kept_dense="not_applicable"), density
        timer = self.timer(weight.device.type)
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        timings: dict[str, dict[int, float]] = {DENSE: {}}
        for fmt, _ in cands:
            timings[fmt] = {}
        for tokens in self.config.choose_tokens:
            cached = {f: timer.cached(f, shape, d, has_bias, tokens) for f, d in [(DENSE, 1.0), *cands]}
            if all(v is not None for v in cached.values()):
                for f, v in cached.items():
                    timings[f][tokens] = float(v)  # type: ignore[arg-type]
                continue
            measured = timer.compare(cands, shape, has_bias, tokens, rounds=self.timing_rounds, dtype=weight.dtype)
            for f, v in measured.items():
                timings[f][tokens] = v
        split = self.config.regime_split_tokens
        if split is not None:
            decision = decide_regimes(timings, split=split, min_speedup=self.config.min_speedup)
        else:
            decision = decide(timings, min_speedup=self.config.min_speedup)
        decision.reason += note
        return decision, density

    def check_regimes(
        self, name: str, module: RegimeLinear, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[list[int], float]:
        """Both regimes of a per-regime layer against ``F.linear`` with its masked weight (:func:`check_regime_layer`).

        Run on 1 token and ``split`` tokens (decode) and ``split + 1`` and the smallest timed prefill
        count (prefill), so that each side and the routing at the split are checked before any
        model-level check (a classifier's probe batch runs the prefill side only). Returns the token
        counts and the worst ``max |Δ| / tolerance``.

        Raises:
            audit.deploy.verify.EquivalenceError: A side differs beyond the per-layer tolerance.
        """
        from audit.deploy.verify import EquivalenceError

        split = module.split
        prefill = min((t for t in self.config.choose_tokens if t > split), default=split + 1)
        tokens = sorted({1, split, split + 1, prefill})
        worst = 0.0
        for n, side, diff, tol in check_regime_layer(module, weight, bias, tokens, factor=self.config.tolerance_factor):
            if not diff <= tol:
                raise EquivalenceError(
                    f"layer {name} ({module.format}): its {side} side differs from the masked-dense layer at {n} "
                    f"tokens by {diff:.3g} (tolerance {tol:.3g})"
                )
            worst = max(worst, diff / tol)
        return tokens, worst

    # -- converting ----------------------------------------------------------------------
    def _deploy_quantized(self, model: nn.Module, name: str, module: QuantReferenceLinear) -> LayerDeployment:
        """A quantized layer goes to its scheme's kernel, never timed or forced away: another format
        would not compute the quantized model that is audited. The kernel is first checked against
        the reference layer on its own (:func:`~audit.deploy.quantized.check_quant_layer`).

        Raises:
            audit.deploy.verify.EquivalenceError: The kernel differs from its reference layer.
        """
        from audit.deploy.verify import EquivalenceError

        weight = module.weight.detach()
        new = module.deploy()
        info = module.info
        diff, tol = check_quant_layer(module, new, factor=self.config.tolerance_factor)
        if not diff <= tol:
            raise EquivalenceError(
                f"layer {name} ({new.format}): {info.kernel} differs from its quantized reference layer by "
                f"{diff:.3g} on a seeded input (tolerance {tol:.3g})"
            )
        _set_submodule(model, name, new)
        nnz = int(torch.count_nonzero(weight))
        return LayerDeployment(
            name=name,
            format=new.format,
            reason=f"quantized by {info.scheme}: {info.bits}-bit, {info.granularity}; runs {info.kernel} "
            f"(checked against the reference layer: max |Δ| {diff:.2g}, tolerance {tol:.2g})",
            shape=(int(weight.shape[0]), int(weight.shape[1])),
            density=nnz / weight.numel() if weight.numel() else 1.0,
            bytes_dense=weight.numel() * 4,
            bytes_deployed=stored_bytes(new),
        )

    def _deploy_activation(self, model: nn.Module, name: str, module: ActSparseReferenceLinear) -> LayerDeployment:
        """An activation-sparse layer goes to the skipping kernel (``act_sparse``), never timed or forced
        away, after a check against its thresholded reference layer on its own
        (:func:`~audit.deploy.activation.check_act_layer`).

        Raises:
            audit.deploy.verify.EquivalenceError: The deployed layer differs from its reference layer.
        """
        from audit.deploy.verify import EquivalenceError

        weight = module.weight.detach()
        new = module.deploy()
        diff, tol = check_act_layer(module, new, factor=self.config.tolerance_factor)
        if not diff <= tol:
            raise EquivalenceError(
                f"layer {name} ({new.format}): the activation-sparse kernel differs from its thresholded reference "
                f"layer by {diff:.3g} on a seeded input (tolerance {tol:.3g})"
            )
        _set_submodule(model, name, new)
        gate = (
            f"input gated at |x| < {module.threshold:.3g}" if module.gated else "input zero where the CATS gate closed"
        )
        return LayerDeployment(
            name=name,
            format=new.format,
            reason=f"activation-sparse ({gate}); calls of at most {module.max_tokens} token(s) run pa_act_mm, which "
            f"skips the weight rows of zero inputs, longer calls a GEMM on the gated input (checked against the "
            f"reference layer: max |Δ| {diff:.2g}, tolerance {tol:.2g})",
            shape=(int(weight.shape[0]), int(weight.shape[1])),
            density=1.0,
            bytes_dense=weight.numel() * 4,
            bytes_deployed=stored_bytes(new),
        )

    def convert(self, model: nn.Module, keep_dense: Collection[str] = ()) -> Conversion:
        """Replace every ``nn.Linear`` of ``model`` by its deployed module (in place).

        ``keep_dense``: Linear layers that stay ``nn.Linear`` whatever they hold (a causal
        LM's head), recorded as kept dense (``not_applicable``).
        """
        result = Conversion()
        hits0, measured0 = self.cache.hits, self.cache.measured
        self.unavailable = {}  # notes are about this model's layers, not earlier conversions'
        names = top_level_linears(model)
        checked: list[float] = []  # per-regime layers' worst |Δ| / tolerance (check_regimes)
        tokens: list[int] = []
        for name, module in names:
            if isinstance(module, DeployedLinear):
                result.layers.append(
                    LayerDeployment(
                        name,
                        module.format,
                        "already deployed",
                        (module.out_features, module.in_features),
                        module.nnz / (module.out_features * module.in_features),
                        module.out_features * module.in_features * 4,
                        module.stored_bytes(),
                    )
                )
                continue
            if isinstance(module, QuantReferenceLinear):
                result.layers.append(self._deploy_quantized(model, name, module))
                continue
            if isinstance(module, ActSparseReferenceLinear):
                result.layers.append(self._deploy_activation(model, name, module))
                continue
            weight = module.weight.detach()
            if name in keep_dense:
                nnz = int(torch.count_nonzero(weight))
                decision, density = (
                    Decision(DENSE, "kept dense: not a decoder-block layer (the LM head stays dense)",
                             kept_dense="not_applicable"),
                    nnz / weight.numel() if weight.numel() else 1.0,
                )  # fmt: skip
            else:
                decision, density = self.choose(weight, module.bias is not None)
            bytes_dense = weight.numel() * weight.element_size()
            bias = None if module.bias is None else module.bias.detach()
            if decision.format == DENSE:
                new: nn.Module = module
            elif decision.regimes is not None and decision.split is not None:
                new = build_regime(*decision.regimes, decision.split, weight, bias, module)
                tokens, ratio = self.check_regimes(name, new, weight, bias)
                checked.append(ratio)
                _set_submodule(model, name, new)
            else:
                new = build_module(decision.format, weight, bias)
                _set_submodule(model, name, new)
            result.layers.append(
                LayerDeployment(
                    name=name,
                    format=decision.format,
                    reason=decision.reason,
                    shape=(int(weight.shape[0]), int(weight.shape[1])),
                    density=density,
                    bytes_dense=bytes_dense,
                    bytes_deployed=stored_bytes(new),
                    speedup=decision.speedup,
                    kept_dense=decision.kept_dense if decision.format == DENSE else None,
                )
            )
            del weight, module, new, bias
        result.timings_measured = self.cache.measured - measured0
        result.timings_cached = self.cache.hits - hits0
        if result.timings_measured:
            self.cache.save()
        if checked:
            result.notes.append(
                f"{len(checked)} layers with a format per regime checked against their masked weights at "
                f"{', '.join(map(str, tokens))} tokens: worst max |Δ| {max(checked):.2g}x the per-layer tolerance"
            )
        for fmt, why in sorted(self.unavailable.items()):
            if fmt in self.config.formats:
                result.notes.append(why)
        return result


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
