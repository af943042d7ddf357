"""Wanda: pruning by weights and activations (Sun et al. 2023, arXiv:2306.11695)."""

from __future__ import annotations

import torch
from torch import nn

from audit.pruning.base import Applied, PruneContext, Pruner, Selection, apply_mask, nm_keep_mask, row_keep_mask
from audit.pruning.calibration import SquaredNorm, model_device, sequential_calibrate


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * ||X_j||_2`` for a ``[out, in]`` weight and per-input norms ``[in]``."""
    return weight.detach().abs().double() * input_norm.reshape(1, -1).to(weight.device)


def wanda_keep_mask(
    weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float, n: int | None = None, m: int | None = None
) -> torch.Tensor:
    """Wanda's keep-mask: the lowest scores of each output row go (or N:M within each row)."""
    scores = wanda_scores(weight, input_norm)
    if n is not None and m is not None:
        return nm_keep_mask(scores, n, m)
    return row_keep_mask(scores, sparsity)


class WandaPruner(Pruner):
    """Score ``|W_ij| * ||X_j||_2`` with ``X`` the layer's calibration inputs, compared per output row.

    No weight update. Blocks are pruned in order with each block's inputs produced by
    the already pruned blocks (as in the reference implementation). The seed selects
    the calibration sample.
    """

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        n, m = self.params.n, self.params.m
        targets = selection.targets
        device = model_device(model)

        def make_stat(_name: str, module: nn.Module) -> SquaredNorm:
            return SquaredNorm(module.weight.shape[1], device)

        def finish(name: str, module: nn.Module, stat: SquaredNorm) -> None:
            apply_mask(module, wanda_keep_mask(module.weight, stat.norm(), targets[name], n, m))

        notes = sequential_calibrate(
            model, selection.active(), self.calibration(ctx), make_stat=make_stat, finish=finish
        )
        pattern = f"{n}:{m} within each row" if n is not None else "per output row"
        notes.insert(0, f"score |W|·||X||_2 compared {pattern}; calibration sample drawn with the point's seed")
        return Applied(notes=notes)
