"""OWL: Outlier Weighed Layerwise sparsity (Yin et al. 2024, arXiv:2310.05175), a sparsity profile.

A profile decides each layer's target before a method (magnitude, Wanda, SparseGPT) prunes
it. OWL, as in the authors' reference code (``luuyin/OWL``, ``prune_wanda_outlier``):

1. one pass of the calibration data through the *dense* blocks, in order (each block's
   inputs are the dense outputs of the block before it), gives each selected Linear
   layer's input norms ``||X_j||_2``;
2. per transformer block ``l``, the Layerwise Outlier Distribution ``D_l`` is the fraction
   of the Wanda scores ``|W_ij|·||X_j||_2`` of all its selected layers that are greater
   than ``M`` times the block's mean score;
3. ``D_l`` is min-max normalised and mapped linearly to ``S_l = S + λ - 2λ·norm(D_l)``
   (more outliers, lower sparsity), then shifted so that the mean of ``S_l`` weighted by the
   blocks' pruned weights is exactly the target ``S``; every layer of a block gets ``S_l``.

Stated differences from the reference: the mean is weighted by each block's weights (the
reference takes the plain mean; the same when blocks are equal), and the shift is clipped
to the band ``[S - λ, S + λ]`` (the reference's plain shift can leave it when the outlier
ratios are skewed), the shift found by bisection so the weighted mean stays ``S``. When
every block has the same ``D_l`` the profile is uniform. Layers outside the blocks and
layers with a ``sweep.layers.overrides`` entry keep their own target and do not enter the
allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from audit.errors import UsageError
from audit.pruning.base import CalibrationData, Selection
from audit.pruning.calibration import SquaredNorm, find_blocks, model_device, sequential_calibrate
from audit.results import BlockProfileRecord, LayerRecord, ProfileRecord


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of the scores (all tensors together) greater than ``m`` times their mean."""
    total = sum(s.numel() for s in scores)
    if total == 0:
        return 0.0
    mean = sum(float(s.sum()) for s in scores) / total
    return sum(int((s > m * mean).sum()) for s in scores) / total


def owl_sparsities(ratios: list[float], sizes: list[int], target: float, lam: float) -> list[float]:
    """Block sparsities from outlier ratios: linear in the normalised ratio over
    ``[target - lam, target + lam]``, shifted (and clipped to that band) so that the mean
    weighted by ``sizes`` is ``target``.
    """
    d = np.asarray(ratios, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64)
    lo, hi = target - lam, target + lam
    span = float(d.max() - d.min()) if d.size else 0.0
    if d.size == 0 or span <= 0.0 or w.sum() <= 0:
        return [float(target)] * int(d.size)
    base = target + lam - 2.0 * lam * (d - d.min()) / span

    def mean_at(c: float) -> float:
        return float(np.dot(np.clip(base + c, lo, hi), w) / w.sum())

    a, b = -2.0 * lam, 2.0 * lam  # all at lo, all at hi
    for _ in range(200):
        c = 0.5 * (a + b)
        if mean_at(c) < target:
            a = c
        else:
            b = c
    return [float(x) for x in np.clip(base + 0.5 * (a + b), lo, hi)]


def block_of(model: nn.Module) -> tuple[str, int]:
    """(prefix of the block list, number of blocks); a :class:`UsageError` without blocks."""
    found = find_blocks(model)
    if found is None:
        raise UsageError(
            "profile owl allocates sparsity per transformer block, but the model's adapter finds no block list",
            where="sweep.methods[].params.profile",
            hint="use profile: uniform for this model",
        )
    return found[0], len(found[1])


def check_owl(model: nn.Module, sparsity: float, lam: float, method: str) -> None:
    """The band ``[S - λ, S + λ]`` lies in ``[0, 1)`` and the model has blocks (before any pruning)."""
    if not (sparsity - lam >= 0.0 and sparsity + lam < 1.0):
        raise UsageError(
            f"profile owl with lambda {lam:g} at sparsity {sparsity:g} gives block sparsities in "
            f"[{sparsity - lam:g}, {sparsity + lam:g}], outside [0, 1)",
            where=f"method {method!r}",
            hint="lower owl.lambda or drop this sparsity level for the OWL method",
        )
    block_of(model)


@dataclass
class OwlPlan:
    """The per-block decision of :func:`owl_selection` or :func:`blocks_selection`, recorded after pruning."""

    M: float | None
    lam: float | None
    target: float
    blocks: list[tuple[str, int, list[str], int, float | None, float]]
    """(block name, index, layer names, weights, D_l, S_l) per block that holds allocated layers (D_l: OWL only)."""
    name: str = "owl"

    def record(self, layers: list[LayerRecord]) -> ProfileRecord:
        """The profile's record, with each block's achieved sparsity counted from the layer records."""
        by_name = {r.name: r for r in layers}
        rows = []
        zeros_all = 0
        total_all = 0
        for name, index, names, size, d, s in self.blocks:
            total = sum(by_name[n].total for n in names)
            zeros = sum(by_name[n].total - by_name[n].nonzero for n in names)
            zeros_all += zeros
            total_all += total
            rows.append(
                BlockProfileRecord(
                    block=name,
                    index=index,
                    weights=size,
                    layers=len(names),
                    outlier_ratio=d,
                    target_sparsity=s,
                    achieved_sparsity=zeros / total if total else 0.0,
                )
            )
        sizes = sum(b[3] for b in self.blocks)
        return ProfileRecord(
            name=self.name,
            M=self.M,
            lambda_=self.lam,
            target_sparsity=self.target,
            weighted_target=sum(b[3] * b[5] for b in self.blocks) / sizes if sizes else self.target,
            achieved_sparsity=zeros_all / total_all if total_all else 0.0,
            blocks=rows,
        )


def allocated_blocks(selection: Selection, prefix: str) -> dict[int, list[tuple[str, nn.Module]]]:
    """Block index -> the selected layers inside it that are at the sweep level (no override)."""
    head = f"{prefix}."
    grouped: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in selection.layers:
        if name.startswith(head) and selection.targets[name] == selection.sparsity:
            grouped.setdefault(int(name[len(head) :].split(".", 1)[0]), []).append((name, module))
    return grouped


def check_blocks(model: nn.Module, blocks: dict[int, float], method: str) -> None:
    """Every block of the model is given a sparsity, and no index beyond the model's blocks (before pruning)."""
    _, n_blocks = block_of(model)
    extra = sorted(i for i in blocks if i >= n_blocks)
    missing = [i for i in range(n_blocks) if i not in blocks]
    if extra or missing:
        what = f"names block(s) {extra} beyond the model's {n_blocks}" if extra else f"leaves out block(s) {missing}"
        raise UsageError(
            f"profile blocks {what} (the model has blocks 0-{n_blocks - 1})",
            where=f"method {method!r}: params.blocks",
            hint=f"give every block 0-{n_blocks - 1} a sparsity, e.g. {{'0-{n_blocks - 1}': 0.5}}",
        )


def blocks_selection(model: nn.Module, selection: Selection, blocks: dict[int, float]) -> tuple[Selection, OwlPlan]:
    """``selection`` with the listed per-block targets, and the plan to record (the model is not changed)."""
    prefix, _ = block_of(model)
    grouped = allocated_blocks(selection, prefix)
    targets = dict(selection.targets)
    rows = []
    for i in sorted(grouped):
        names = [n for n, _ in grouped[i]]
        for n in names:
            targets[n] = blocks[i]
        size = sum(mod.weight.numel() for _, mod in grouped[i])
        rows.append((f"{prefix}.{i}", i, names, size, None, blocks[i]))
    plan = OwlPlan(M=None, lam=None, target=selection.sparsity, blocks=rows, name="blocks")
    return Selection(selection.layers, targets, selection.sparsity), plan


def blocks_note(plan: OwlPlan) -> str:
    """One line for the record's notes."""
    if not plan.blocks:
        return "profile blocks: no selected layer inside the blocks; every layer at the sweep level"
    sizes = sum(b[3] for b in plan.blocks)
    mean = sum(b[3] * b[5] for b in plan.blocks) / sizes
    text = ", ".join(f"{b[1]}: {b[5]:.4g}" for b in plan.blocks)
    return f"profile blocks (explicit per-block sparsities {text}; weighted mean {mean:.6f})"


@torch.no_grad()
def owl_selection(
    model: nn.Module, selection: Selection, calibration: CalibrationData, m: float, lam: float
) -> tuple[Selection, OwlPlan]:
    """``selection`` with OWL's per-block targets, and the plan to record (the model is not changed)."""
    prefix, _ = block_of(model)
    grouped = allocated_blocks(selection, prefix)
    norms: dict[str, torch.Tensor] = {}
    device = model_device(model)

    def make_stat(_name: str, module: nn.Module) -> SquaredNorm:
        return SquaredNorm(module.weight.shape[1], device)

    def finish(name: str, _module: nn.Module, stat: SquaredNorm) -> None:
        norms[name] = stat.norm()  # nothing is pruned: the next block sees the dense outputs

    chosen = [item for i in sorted(grouped) for item in grouped[i]]
    if chosen:
        sequential_calibrate(model, chosen, calibration, make_stat=make_stat, finish=finish)
    order = sorted(grouped)
    ratios = []
    sizes = []
    for i in order:
        scores = [mod.weight.detach().abs().double() * norms[n].reshape(1, -1) for n, mod in grouped[i]]
        ratios.append(outlier_ratio(scores, m))
        sizes.append(sum(mod.weight.numel() for _, mod in grouped[i]))
    sparsities = owl_sparsities(ratios, sizes, selection.sparsity, lam)
    targets = dict(selection.targets)
    blocks = []
    for i, d, size, s in zip(order, ratios, sizes, sparsities, strict=True):
        names = [n for n, _ in grouped[i]]
        for n in names:
            targets[n] = s
        blocks.append((f"{prefix}.{i}", i, names, size, d, s))
    plan = OwlPlan(M=m, lam=lam, target=selection.sparsity, blocks=blocks)
    return Selection(selection.layers, targets, selection.sparsity), plan


def owl_note(plan: OwlPlan) -> str:
    """One line for the record's notes."""
    if not plan.blocks:
        return "profile owl: no selected layer inside the blocks; every layer at the sweep level"
    s = [b[5] for b in plan.blocks]
    return (
        f"profile owl (M {plan.M:g}, lambda {plan.lam:g}): {len(plan.blocks)} blocks at sparsity "
        f"{min(s):.3f}-{max(s):.3f} (weighted mean {plan.target:g}), outlier ratios from the dense model's "
        "Wanda scores on the calibration sample"
    )
