"""SparseGPT: one-shot pruning with second-order weight reconstruction.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot" (arXiv:2301.00774); follows the authors' reference
``SparseGPT.fasterprune``. For a Linear layer with weight ``W [out, in]`` and
calibration inputs ``X [in, tokens]`` it approximately solves the layer-wise masked
least-squares problem ``min ||W X - Ŵ X||²`` subject to the sparsity pattern:

1. ``H = 2 X Xᵀ / N`` (accumulated per token), dead inputs (``H_jj = 0``) zeroed,
   ``H += percdamp · mean(diag H) · I``;
2. ``U = chol(H⁻¹)`` (upper), so that row ``j`` of ``U`` holds the OBS update for
   column ``j`` given that columns ``< j`` are fixed;
3. columns in blocks of ``blocksize``: the block's mask is chosen adaptively as the
   smallest ``w² / U_jj²`` (or, for N:M, the ``m - n`` smallest of each group of ``m``
   columns), then column by column the pruned weights are removed and the error
   ``(w - q) / U_jj`` is propagated to the remaining columns of the block; after the
   block, its accumulated errors update all later columns at once (lazy batch update).

Adaptations, stated: the unstructured mask of a block removes exactly
``round(sparsity · rows · blocksize)`` weights (the reference removes those ``<=`` a
threshold, which can overshoot by ties); ``H`` is accumulated in float64 from float32
products (the reference keeps it in float32); padded token positions are excluded from ``H``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from audit.pruning.base import Applied, PruneContext, Pruner, Selection
from audit.pruning.calibration import Hessian, model_device, sequential_calibrate


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    *,
    n: int | None = None,
    m: int | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    """Prune and reconstruct one weight matrix.

    Args:
        weight: ``[out, in]`` dense weight (not modified).
        hessian: ``[in, in]`` ``2 X Xᵀ / N`` of the layer's calibration inputs.
        sparsity: Fraction of weights to zero (ignored when ``n``/``m`` are set).
        n: Weights kept per group of ``m`` consecutive inputs (N:M), or None.
        m: Group size of the N:M pattern, or None.
        blocksize: Columns per lazy-update block.
        percdamp: Dampening, as a fraction of the mean diagonal of ``H``.
        dtype: Working precision (float32 as in the reference; float64 for exactness checks).

    Returns:
        The new weight (same dtype and device as ``weight``) and the OBS loss estimate
        ``Σ (w - q)² / (2 U_jj²)`` summed over rows.
    """
    W = weight.detach().clone().to(dtype)
    H = hessian.detach().clone().to(dtype)
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols, device=H.device)
    H[diag, diag] += damp
    L = torch.linalg.cholesky(H)
    # = torch.cholesky_inverse(L) as in the reference; cholesky_solve is the same H⁻¹ but
    # avoids LAPACK potri, which stalls (10-100x) with several threads on a busy CPU
    Hinv = torch.cholesky_solve(torch.eye(cols, dtype=H.dtype, device=H.device), L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    nm = n is not None and m is not None
    prune_per_group = (m - n) if nm else 0  # type: ignore[operator]
    # Work on Wᵀ so that "column j of W" is a contiguous row: same arithmetic as the
    # reference, but each rank-1 update touches contiguous memory (about 10x faster on CPU).
    Wt = W.t().contiguous()
    losses = torch.zeros(rows, dtype=dtype, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = Wt[i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        dinv = torch.diag(Hinv1).reshape(-1, 1)
        if nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            tmp = W1**2 / dinv**2
            k = int(round(tmp.numel() * sparsity))
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool, device=W.device)
            if k > 0:
                mask1[torch.topk(tmp.flatten(), k, largest=False).indices] = True
            mask1 = mask1.reshape(tmp.shape)
        for i in range(count):
            w = W1[i]
            d = Hinv1[i, i]
            if nm and i % m == 0:  # type: ignore[operator]
                tmp = W1[i : i + m] ** 2 / dinv[i : i + m] ** 2
                mask1.scatter_(0, i + torch.topk(tmp, prune_per_group, dim=0, largest=False).indices, True)
            q = w.masked_fill(mask1[i], 0.0)
            Q1[i] = q
            err1 = (w - q) / d
            W1[i:].addr_(Hinv1[i, i:], err1, alpha=-1.0)  # W[:, i:] -= err1 ⊗ Hinv1[i, i:]
            Err1[i] = err1
        Wt[i1:i2] = Q1
        losses += torch.sum(Err1**2, 0) / 2  # (w - q)² / d² = err1²
        Wt[i2:] -= Hinv[i1:i2, i2:].t().matmul(Err1)  # lazy batch update of the later columns
    W = Wt.t()
    return W.to(dtype=weight.dtype, device=weight.device), float(losses.sum())


class SparseGPTPruner(Pruner):
    """SparseGPT one-shot pruning of the selected Linear layers, block by block.

    Each block's layers get their Hessians from the block's inputs, which come from
    the already pruned blocks before it (the reference's sequential procedure). The
    seed selects the calibration sample.
    """

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        p = self.params
        targets = selection.targets
        device = model_device(model)
        extra: dict[str, dict[str, float]] = {}

        def make_stat(_name: str, module: nn.Module) -> Hessian:
            return Hessian(module.weight.shape[1], device)

        def finish(name: str, module: nn.Module, stat: Hessian) -> None:
            new, loss = sparsegpt_prune(
                module.weight,
                stat.H,
                targets[name],
                n=p.n,
                m=p.m,
                blocksize=p.blocksize,
                percdamp=p.percdamp,
            )
            with torch.no_grad():
                module.weight.copy_(new)
            extra[name] = {"obs_loss": loss, "tokens": stat.tokens}

        notes = sequential_calibrate(
            model, selection.active(), self.calibration(ctx), make_stat=make_stat, finish=finish
        )
        worst = max(extra.items(), key=lambda kv: kv[1]["obs_loss"], default=None)
        if worst is not None and math.isfinite(worst[1]["obs_loss"]):
            notes.append(f"largest OBS loss estimate: {worst[0]} ({worst[1]['obs_loss']:.4g})")
        pattern = f"{p.n}:{p.m}" if p.n is not None else "unstructured"
        notes.insert(
            0,
            f"{pattern}, blocksize {p.blocksize}, percdamp {p.percdamp}; remaining weights updated; "
            "calibration sample drawn with the point's seed",
        )
        return Applied(notes=notes)
