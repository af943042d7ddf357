"""Unstructured magnitude pruning with ``torch.nn.utils.prune``."""

from __future__ import annotations

from torch import nn

from audit.pruning.base import Applied, PruneContext, Pruner, Selection, prune_lowest


class MagnitudePruner(Pruner):
    """Zero the smallest-|w| weights, per layer (``scope: layer``) or model-wide (``global``).

    Layers with a per-layer override are always pruned to their own target; with
    ``scope: global`` the remaining layers share one magnitude threshold.
    """

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        prune_lowest(selection, self.params.scope)
        return Applied()
