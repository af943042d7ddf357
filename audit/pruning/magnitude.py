"""Unstructured magnitude pruning with ``torch.nn.utils.prune``."""

from __future__ import annotations

import time

from torch import nn
from torch.nn.utils import prune

from audit.pruning.base import PruneContext, Pruner, build_record, layer_targets, select_layers
from audit.results import PruningRecord


class MagnitudePruner(Pruner):
    """Zero the smallest-|w| weights, per layer (``scope: layer``) or model-wide (``global``).

    Layers with a per-layer override are always pruned to their own target; with
    ``scope: global`` the remaining layers share one magnitude threshold.
    """

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruningRecord:
        started = time.perf_counter()
        layers = select_layers(model, ctx.layers)
        targets = layer_targets(layers, ctx.sparsity, ctx.layers)
        overridden = {n for n, t in targets.items() if t != ctx.sparsity}
        if self.params.scope == "global":
            shared = [(m, "weight") for n, m in layers if n not in overridden]
            total = sum(m.weight.numel() for m, _ in shared)
            if shared and ctx.sparsity > 0:
                prune.global_unstructured(
                    shared, pruning_method=prune.L1Unstructured, amount=int(round(ctx.sparsity * total))
                )
                for m, _ in shared:
                    prune.remove(m, "weight")
            todo = [(n, m) for n, m in layers if n in overridden]
        else:
            todo = layers
        for name, module in todo:
            amount = int(round(targets[name] * module.weight.numel()))
            if amount <= 0:
                continue
            prune.l1_unstructured(module, "weight", amount=amount)
            prune.remove(module, "weight")
        return build_record(
            model=model,
            spec=self.spec,
            params=self.params,
            ctx=ctx,
            layers=layers,
            targets=targets,
            started=started,
        )
