"""N:M semi-structured magnitude pruning (2:4, 4:8)."""

from __future__ import annotations

import time

from torch import nn

from audit.pruning.base import (
    PruneContext,
    Pruner,
    apply_mask,
    build_record,
    check_nm,
    layer_targets,
    nm_keep_mask,
    select_layers,
)
from audit.results import PruningRecord


class NMPruner(Pruner):
    """Keep the ``n`` largest |w| of every ``m`` consecutive input weights of each row.

    Groups run along the input dimension (the reduction dimension of ``x @ W.T``),
    the layout NVIDIA's 2:4 sparse tensor cores and ``torch.sparse`` semi-structured
    tensors expect. A layer overridden to sparsity 0 stays dense.
    """

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        super().validate(model, ctx)
        check_nm(select_layers(model, ctx.layers), ctx, self.name, self.params.n, self.params.m)

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruningRecord:
        started = time.perf_counter()
        n, m = self.params.n, self.params.m
        layers = select_layers(model, ctx.layers)
        targets = layer_targets(layers, ctx.sparsity, ctx.layers)
        for name, module in layers:
            if targets[name] == 0.0:
                continue
            apply_mask(module, nm_keep_mask(module.weight.detach().abs(), n, m))
        return build_record(
            model=model,
            spec=self.spec,
            params=self.params,
            ctx=ctx,
            layers=layers,
            targets=targets,
            started=started,
            notes=[f"{n}:{m} pattern along the input dimension; deterministic (the seed does not change the mask)"],
        )
