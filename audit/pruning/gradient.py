"""Gradient ("synaptic") importance pruning from labelled calibration data.

``taylor``: ``score = sum_b |w * dL_b/dw|`` (first-order Taylor estimate of the loss
change when the weight is removed, accumulated per batch; Molchanov et al. 2019,
"Importance Estimation for Neural Network Pruning").
``snip``: ``score = |w * sum_b dL_b/dw|`` (connection sensitivity; Lee et al. 2019,
"SNIP: Single-shot Network Pruning based on Connection Sensitivity").

``L`` is the summed cross-entropy of the model's logits against the calibration
labels, computed in eval mode (no dropout). The mask is applied with
``torch.nn.utils.prune`` using the scores as ``importance_scores``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from audit.pruning.base import CalibrationData, PruneContext, Pruner, build_record, layer_targets, select_layers
from audit.pruning.calibration import model_device, to_device
from audit.results import PruningRecord


def gradient_scores(
    model: nn.Module, layers: list[tuple[str, nn.Module]], calibration: CalibrationData, criterion: str = "taylor"
) -> dict[str, torch.Tensor]:
    """Importance of every weight of ``layers`` (same shapes as the weights)."""
    device = model_device(model)
    weights = [m.weight for _, m in layers]
    acc = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    was_training = model.training
    model.eval()
    flags = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            for batch, labels in zip(calibration.batches, calibration.batch_labels, strict=True):
                out = model(**to_device(batch, device))
                logits = out.logits if hasattr(out, "logits") else out[0]
                loss = F.cross_entropy(logits.float(), labels.to(device), reduction="sum")
                grads = torch.autograd.grad(loss, weights)
                for a, w, g in zip(acc, weights, grads, strict=True):
                    if criterion == "taylor":
                        a += (w.detach() * g).abs().double()
                    else:
                        a += g.double()
    finally:
        for w, f in zip(weights, flags, strict=True):
            w.requires_grad_(f)
        model.train(was_training)
    if criterion == "snip":
        acc = [(w.detach().double() * a).abs() for w, a in zip(weights, acc, strict=True)]
    return {name: a for (name, _), a in zip(layers, acc, strict=True)}


class GradientPruner(Pruner):
    """Zero the weights with the lowest gradient importance, per layer or globally."""

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruningRecord:
        started = time.perf_counter()
        assert ctx.calibration is not None
        layers = select_layers(model, ctx.layers)
        targets = layer_targets(layers, ctx.sparsity, ctx.layers)
        scores = gradient_scores(model, layers, ctx.calibration, self.params.criterion)
        overridden = {n for n, t in targets.items() if t != ctx.sparsity}
        if self.params.scope == "global":
            shared = [(n, m) for n, m in layers if n not in overridden]
            total = sum(m.weight.numel() for _, m in shared)
            if shared and ctx.sparsity > 0:
                prune.global_unstructured(
                    [(m, "weight") for _, m in shared],
                    pruning_method=prune.L1Unstructured,
                    importance_scores={(m, "weight"): scores[n] for n, m in shared},
                    amount=int(round(ctx.sparsity * total)),
                )
                for _, m in shared:
                    prune.remove(m, "weight")
            todo = [(n, m) for n, m in layers if n in overridden]
        else:
            todo = layers
        for name, module in todo:
            amount = int(round(targets[name] * module.weight.numel()))
            if amount > 0:
                prune.l1_unstructured(module, "weight", amount=amount, importance_scores=scores[name])
                prune.remove(module, "weight")
        c = ctx.calibration.record
        return build_record(
            model=model,
            spec=self.spec,
            params=self.params,
            ctx=ctx,
            layers=layers,
            targets=targets,
            started=started,
            notes=[
                f"{self.params.criterion} importance from {c.n} labelled calibration examples "
                f"(cross-entropy, eval mode); sample drawn with the point's seed"
            ],
        )
