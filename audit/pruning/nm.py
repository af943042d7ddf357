"""N:M semi-structured magnitude pruning (2:4, 4:8)."""

from __future__ import annotations

from torch import nn

from audit.pruning.base import Applied, PruneContext, Pruner, Selection, apply_mask, nm_keep_mask


class NMPruner(Pruner):
    """Keep the ``n`` largest |w| of every ``m`` consecutive input weights of each row.

    Groups run along the input dimension (the reduction dimension of ``x @ W.T``),
    the layout NVIDIA's 2:4 sparse tensor cores and ``torch.sparse`` semi-structured
    tensors expect. A layer overridden to sparsity 0 stays dense. The pattern's checks
    (``m`` divides every input width, overrides 0 or ``1 - n/m``) are the base
    pruner's, declared by the spec's ``nm``.
    """

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        n, m = self.params.n, self.params.m
        for _name, module in selection.active():
            apply_mask(module, nm_keep_mask(module.weight.detach().abs(), n, m))
        return Applied(
            notes=[f"{n}:{m} pattern along the input dimension; deterministic (the seed does not change the mask)"]
        )
