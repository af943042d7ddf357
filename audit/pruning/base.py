"""Shared machinery of pruners: layer selection, calibration data, the PruningRecord.

A pruner mutates a copy of the dense model in place and returns a
:class:`~audit.results.PruningRecord` whose numbers are counted on the real tensors
afterwards (never copied from the request).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from audit.config import LayerSelection
from audit.errors import UsageError
from audit.models import adapter_of
from audit.registry import PluginParams, PrunerSpec
from audit.results import CalibrationRecord, LayerRecord, PruningRecord, TrainingRecord

log = logging.getLogger(__name__)


@dataclass
class CalibrationData:
    """Calibration examples, already tokenized into batches."""

    texts: list[str]
    labels: np.ndarray | None
    batches: list[dict[str, torch.Tensor]]
    batch_labels: list[torch.Tensor]
    record: CalibrationRecord

    def labelled_batches(self) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """(batch, labels) pairs, in order."""
        return list(zip(self.batches, self.batch_labels, strict=True))


@dataclass
class PruneContext:
    """What a pruner is asked to do for one sweep point."""

    sparsity: float
    seed: int
    layers: LayerSelection
    calibration: CalibrationData | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Selection:
    """The Linear layers one point prunes (model order) and each one's target sparsity."""

    layers: list[tuple[str, nn.Module]]
    targets: dict[str, float]
    sparsity: float

    def active(self) -> list[tuple[str, nn.Module]]:
        """The layers with a target above zero (an override of 0 keeps a layer dense)."""
        return [(n, m) for n, m in self.layers if self.targets[n] > 0.0]

    def split(self, scope: str) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
        """(layers sharing one model-wide threshold, layers pruned each to its own target).

        With ``scope: global`` the layers without an override share the threshold; with
        ``scope: layer`` none does.
        """
        if scope != "global":
            return [], list(self.layers)
        overridden = {n for n, t in self.targets.items() if t != self.sparsity}
        shared = [(n, m) for n, m in self.layers if n not in overridden]
        own = [(n, m) for n, m in self.layers if n in overridden]
        return shared, own


@dataclass
class ShapeChange:
    """What a structured method removed: sizes before removal and the units gone.

    ``original_shapes``/``original_totals`` are keyed by Linear layer (achieved sparsity
    counts removed weights as zeros), ``original_params_total`` is the model's parameter
    count before removal (biases included), ``heads_removed``/``neurons_removed`` are
    keyed by transformer block and ``layer_extra`` adds per-Linear details.
    """

    original_shapes: dict[str, list[int]]
    original_totals: dict[str, int]
    original_params_total: int
    heads_removed: dict[str, list[int]] = field(default_factory=dict)
    neurons_removed: dict[str, int] = field(default_factory=dict)
    layer_extra: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Applied:
    """What a method's :meth:`Pruner.apply` reports back to the template :meth:`Pruner.prune`."""

    notes: list[str] = field(default_factory=list)
    recorded: Selection | None = None
    """The layers to record when they are not the selected ones (structured: the layers that shrank)."""
    shapes: ShapeChange | None = None
    training: TrainingRecord | None = None
    """How a fine-tuning method trained (schedule, steps, data, teacher)."""


class Pruner:
    """Base class of pruning methods.

    :meth:`prune` is the template every method shares: select the layers and their
    targets, check the calibration data the spec declares, :meth:`apply` the method,
    and record what happened on the real tensors. A method writes only :meth:`apply`
    (and, for checks that need the model's shapes, :meth:`validate`). What a method
    needs and does (calibration, labels, changed shapes, an N:M pattern) is declared on
    its :class:`~audit.registry.PrunerSpec`.
    """

    def __init__(self, spec: PrunerSpec, params: PluginParams) -> None:
        self.spec = spec
        self.params = params

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_calibration(self) -> bool:
        """Whether this method, with these params, needs calibration data."""
        return self.spec.uses_calibration(self.params)

    @property
    def needs_labels(self) -> bool:
        """Whether this method, with these params, needs labelled calibration data."""
        return self.spec.uses_labels(self.params)

    @property
    def nm(self) -> tuple[int, int] | None:
        """The (n, m) pattern these params set, or None."""
        return self.spec.nm_pattern(self.params)

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        """Raise :class:`UsageError` if this point cannot run (called before any pruning).

        Subclasses add their shape-dependent checks after calling this.
        """
        s = ctx.sparsity
        if not (isinstance(s, (int, float)) and 0.0 <= float(s) < 1.0):
            raise UsageError(
                f"sparsity must be in [0, 1), found {s!r}",
                where=f"method {self.name!r}",
                hint="0.5 means half of the weights are zero",
            )
        check_overrides(ctx.layers)
        if self.needs_calibration and ctx.calibration is None:
            raise self._no_calibration()
        if self.needs_labels and ctx.calibration is not None and ctx.calibration.labels is None:
            raise UsageError(
                f"method {self.name!r} needs labelled calibration data but the calibration set has no labels",
                where="sweep.calibration",
                hint="use a calibration split with a label column",
            )
        if self.needs_calibration and ctx.calibration is not None and not ctx.calibration.batches:
            raise UsageError(f"method {self.name!r}: the calibration set is empty", where="sweep.calibration")
        layers = select_layers(model, ctx.layers)
        if not layers:
            raise UsageError(
                "no Linear layer matches sweep.layers.include",
                where="sweep.layers",
                hint=f"the model's Linear layers look like {_example_names(model)}",
            )
        if self.nm is not None:
            check_nm(layers, ctx, self.name, *self.nm)
        owl = getattr(self.params, "owl_params", None)
        if owl is not None:
            from audit.pruning.owl import check_owl

            check_owl(model, float(ctx.sparsity), owl.lambda_, self.name)
        blocks = getattr(self.params, "block_sparsities", None)
        if blocks is not None:
            from audit.pruning.owl import check_blocks

            check_blocks(model, blocks, self.name)

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruningRecord:
        """Prune ``model`` in place for one point and return its record (the template)."""
        started = time.perf_counter()
        layers = select_layers(model, ctx.layers)
        selection = Selection(layers, layer_targets(layers, ctx.sparsity, ctx.layers), ctx.sparsity)
        if self.needs_calibration and ctx.calibration is None:
            raise self._no_calibration()
        owl = getattr(self.params, "owl_params", None)
        plan = None
        if owl is not None:
            from audit.pruning.owl import owl_selection

            selection, plan = owl_selection(model, selection, self.calibration(ctx), owl.M, owl.lambda_)
        blocks = getattr(self.params, "block_sparsities", None)
        if blocks is not None:
            from audit.pruning.owl import blocks_selection

            selection, plan = blocks_selection(model, selection, blocks)
        applied = self.apply(model, selection, ctx)
        if plan is not None:
            from audit.pruning.owl import blocks_note, owl_note

            applied.notes.insert(0, owl_note(plan) if plan.name == "owl" else blocks_note(plan))
        recorded = applied.recorded or selection
        record = build_record(
            model=model,
            spec=self.spec,
            params=self.params,
            ctx=ctx,
            layers=recorded.layers,
            targets=recorded.targets,
            started=started,
            shapes=applied.shapes,
            notes=applied.notes,
        )
        if applied.training is not None:
            record = record.model_copy(update={"training": applied.training})
        return record if plan is None else record.model_copy(update={"profile": plan.record(record.layers)})

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        """The method itself: prune ``selection`` (in place) and say what it did."""
        raise NotImplementedError

    def calibration(self, ctx: PruneContext) -> CalibrationData:
        """The point's calibration data (for methods whose spec declares they need it)."""
        if ctx.calibration is None:
            raise self._no_calibration()
        return ctx.calibration

    def _no_calibration(self) -> UsageError:
        return UsageError(
            f"method {self.name!r} needs calibration data but none is configured",
            where="sweep.calibration",
            hint="set data.splits.calibration (or sweep.calibration.split) to a split with examples",
        )


def _example_names(model: nn.Module, k: int = 3) -> list[str]:
    return [n for n, _ in adapter_of(model, where="sweep.layers").prunable_linears(model)][:k]


def select_layers(model: nn.Module, selection: LayerSelection) -> list[tuple[str, nn.Linear]]:
    """The adapter's prunable Linear layers whose names match ``include`` and not ``exclude`` (in model order).

    ``include`` unset: the adapter's ``default_include`` (none: every prunable layer).
    """
    adapter = adapter_of(model, where="sweep.layers")
    include = adapter.spec.default_include if selection.include is None else selection.include
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in selection.exclude]
    out = []
    for name, module in adapter.prunable_linears(model):
        if inc and not any(p.search(name) for p in inc):
            continue
        if any(p.search(name) for p in exc):
            continue
        out.append((name, module))
    return out


def layer_targets(layers: list[tuple[str, nn.Module]], sparsity: float, selection: LayerSelection) -> dict[str, float]:
    """Target sparsity per layer: the sweep level unless an override regex matches."""
    overrides = [(re.compile(p), float(v)) for p, v in selection.overrides.items()]
    targets = {}
    for name, _ in layers:
        target = sparsity
        for pat, value in overrides:
            if pat.search(name):
                target = value
        targets[name] = target
    return targets


def check_overrides(selection: LayerSelection) -> None:
    for pattern, value in selection.overrides.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"invalid regex {pattern!r}: {exc}", where="sweep.layers.overrides") from None
        if not (0.0 <= float(value) < 1.0):
            raise UsageError(
                f"override sparsity must be in [0, 1), found {value} for {pattern!r}",
                where="sweep.layers.overrides",
            )


def apply_mask(module: nn.Module, keep: torch.Tensor) -> None:
    """Zero ``module.weight`` where ``keep`` is False, through ``torch.nn.utils.prune``
    (``custom_from_mask`` then ``remove``), leaving a plain dense parameter with zeros.
    """
    torch_prune.custom_from_mask(module, "weight", keep.to(device=module.weight.device, dtype=torch.bool))
    torch_prune.remove(module, "weight")


def row_keep_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask that drops the ``round(sparsity * in)`` lowest scores of every output row."""
    rows, cols = scores.shape
    k = int(round(sparsity * cols))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=1, largest=False).indices
        keep.scatter_(1, idx, False)
    return keep


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores of every ``m`` consecutive inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise UsageError(f"N:M with m={m} needs an input width divisible by m, found {cols}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=2, largest=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, idx, True)
    return keep.reshape(rows, cols)


def check_nm(layers: list[tuple[str, nn.Module]], ctx: PruneContext, method: str, n: int | None, m: int | None) -> None:
    """Shape and sweep checks of an N:M pattern (nothing to do when ``n``/``m`` are unset)."""
    if n is None or m is None:
        return
    implied = 1.0 - n / m
    if abs(ctx.sparsity - implied) > 1e-9:
        raise UsageError(
            f"{n}:{m} fixes the sparsity at {implied:g}, but this point asks for {ctx.sparsity:g}",
            where=f"method {method!r}",
            hint="the sweep runs N:M methods at 1 - n/m; call them with that sparsity",
        )
    for pattern, value in ctx.layers.overrides.items():
        if float(value) not in (0.0, implied):
            raise UsageError(
                f"an override of {value:g} cannot be met by a {n}:{m} pattern (only {implied:g}, or 0 to keep "
                "a layer dense)",
                where=f"sweep.layers.overrides[{pattern!r}]",
            )
    for name, module in layers:
        cols = module.weight.shape[1]
        if cols % m:
            raise UsageError(
                f"{n}:{m} needs every pruned layer's input width to be divisible by {m}, but {name} has {cols} inputs",
                where=f"method {method!r}",
                hint="exclude that layer (sweep.layers.exclude) or pick an m that divides it",
            )


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over every parameter of the model."""
    total = 0
    nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def mask_fingerprint(layers: list[tuple[str, nn.Module]]) -> str:
    """sha256 over the zero patterns of the given layers (same mask ⇔ same digest)."""
    h = hashlib.sha256()
    for name, module in layers:
        w = module.weight.detach()
        h.update(name.encode())
        h.update(str(tuple(w.shape)).encode())
        h.update(np.packbits((w != 0).cpu().numpy().ravel()).tobytes())
    return h.hexdigest()


def prune_lowest(selection: Selection, scope: str, scores: dict[str, torch.Tensor] | None = None) -> None:
    """Zero the lowest-scoring weights (``|w|`` without ``scores``) with ``torch.nn.utils.prune``.

    Under ``scope: global`` the layers without an override share one threshold
    (``round(sparsity · their weights)`` pruned); every other layer is pruned to its own
    target. The masks are made permanent (plain dense parameters with zeros).
    """
    shared, own = selection.split(scope)
    if shared and selection.sparsity > 0:
        total = sum(m.weight.numel() for _, m in shared)
        torch_prune.global_unstructured(
            [(m, "weight") for _, m in shared],
            pruning_method=torch_prune.L1Unstructured,
            importance_scores=None if scores is None else {(m, "weight"): scores[n] for n, m in shared},
            amount=int(round(selection.sparsity * total)),
        )
        for _, m in shared:
            torch_prune.remove(m, "weight")
    for name, module in own:
        amount = int(round(selection.targets[name] * module.weight.numel()))
        if amount > 0:
            torch_prune.l1_unstructured(
                module, "weight", amount=amount, importance_scores=None if scores is None else scores[name]
            )
            torch_prune.remove(module, "weight")


def build_record(
    *,
    model: nn.Module,
    spec: PrunerSpec,
    params: PluginParams,
    ctx: PruneContext,
    layers: list[tuple[str, nn.Module]],
    targets: dict[str, float],
    started: float,
    shapes: ShapeChange | None = None,
    notes: list[str] | None = None,
) -> PruningRecord:
    """Count what pruning did, on the real tensors (``shapes``: what a structured method removed)."""
    original_shapes = shapes.original_shapes if shapes else {}
    original_totals = shapes.original_totals if shapes else {}
    layer_extra = shapes.layer_extra if shapes else {}
    layer_records = []
    prunable_total = 0
    prunable_nonzero = 0
    for name, module in layers:
        w = module.weight.detach()
        shape_now = list(w.shape)
        total = original_totals.get(name, w.numel())
        nonzero = int(torch.count_nonzero(w))
        achieved = 1.0 - nonzero / total if total else 0.0
        prunable_total += total
        prunable_nonzero += nonzero
        before = original_shapes.get(name, shape_now)
        layer_records.append(
            LayerRecord(
                name=name,
                shape=before,
                shape_after=shape_now if shape_now != before else None,
                total=total,
                nonzero=nonzero,
                target_sparsity=float(targets.get(name, ctx.sparsity)),
                achieved_sparsity=float(achieved),
                heads_removed=list(layer_extra.get(name, {}).get("heads_removed", [])),
                neurons_removed=int(layer_extra.get(name, {}).get("neurons_removed", 0)),
            )
        )
    params_total, params_nonzero = count_params(model)
    if shapes is not None:
        params_total = int(shapes.original_params_total)
    return PruningRecord(
        method=spec.name,
        params=params.model_dump(mode="json"),
        criterion=spec.criterion,
        structured=spec.structured,
        seed=ctx.seed,
        target_sparsity=float(ctx.sparsity),
        achieved_sparsity=float(1.0 - prunable_nonzero / prunable_total) if prunable_total else 0.0,
        model_sparsity=float(1.0 - params_nonzero / params_total) if params_total else 0.0,
        params_total=int(params_total),
        params_nonzero=int(params_nonzero),
        prunable_total=int(prunable_total),
        prunable_nonzero=int(prunable_nonzero),
        layers=layer_records,
        heads_removed={k: list(v) for k, v in (shapes.heads_removed if shapes else {}).items()},
        neurons_removed=dict(shapes.neurons_removed if shapes else {}),
        calibration=ctx.calibration.record if ctx.calibration is not None and spec.uses_calibration(params) else None,
        mask_fingerprint=mask_fingerprint(layers),
        wall_time_s=float(time.perf_counter() - started),
        notes=list(notes or []),
    )
