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

import torch
from torch import nn

from audit.pruning.base import Applied, CalibrationData, PruneContext, Pruner, Selection, prune_lowest
from audit.pruning.calibration import eval_mode, labelled_loss, model_device


def gradient_scores(
    model: nn.Module, layers: list[tuple[str, nn.Module]], calibration: CalibrationData, criterion: str = "taylor"
) -> dict[str, torch.Tensor]:
    """Importance of every weight of ``layers`` (same shapes as the weights)."""
    device = model_device(model)
    weights = [m.weight for _, m in layers]
    acc = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    with eval_mode(model):
        flags = [w.requires_grad for w in weights]
        try:
            for w in weights:
                w.requires_grad_(True)
            with torch.enable_grad():
                for batch, labels in calibration.labelled_batches():
                    loss = labelled_loss(model, batch, labels, device, reduction="sum")
                    grads = torch.autograd.grad(loss, weights)
                    for a, w, g in zip(acc, weights, grads, strict=True):
                        if criterion == "taylor":
                            a += (w.detach() * g).abs().double()
                        else:
                            a += g.double()
        finally:
            for w, f in zip(weights, flags, strict=True):
                w.requires_grad_(f)
    if criterion == "snip":
        acc = [(w.detach().double() * a).abs() for w, a in zip(weights, acc, strict=True)]
    return {name: a for (name, _), a in zip(layers, acc, strict=True)}


class GradientPruner(Pruner):
    """Zero the weights with the lowest gradient importance, per layer or globally."""

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        calibration = self.calibration(ctx)
        scores = gradient_scores(model, selection.layers, calibration, self.params.criterion)
        prune_lowest(selection, self.params.scope, scores)
        return Applied(
            notes=[
                f"{self.params.criterion} importance from {calibration.record.n} labelled calibration examples "
                f"(cross-entropy, eval mode); sample drawn with the point's seed"
            ]
        )
