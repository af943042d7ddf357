"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by
Fine-Tuning", arXiv:2005.07683): first-order scores, hard top-k masks.

Each pruned layer's weight is reparametrized (``torch.nn.utils.parametrize``) as
``W' = W ⊙ M``. During fine-tuning a gradient hook on ``W'`` accumulates the movement
score ``S -= (∂L/∂W') ⊙ W`` for every weight, masked or not: the straight-through
estimator of the paper, with the score's learning rate folded into its scale (a hard
top-k mask depends only on the scores' order within its scope). ``W`` itself gets
``(∂L/∂W') ⊙ M``, so pruned weights do not move. After each cycle of fine-tuning the
mask keeps the highest scores up to the cycle's level of the cubic schedule; a weight
pruned earlier whose score climbs back comes back. The last mask is fine-tuned for
``final_finetune_steps`` and made permanent (a plain parameter with zeros).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from audit.errors import UsageError
from audit.pruning.base import Applied, PruneContext, Selection
from audit.pruning.gradual import GradualPruner, cubic_schedule
from audit.pruning.training import seeded_tuner, training_note


class MovementMask(nn.Module):
    """``W ↦ W ⊙ M``, accumulating the movement score ``−(∂L/∂W')·W`` of every weight in backward."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.keep = torch.ones_like(weight, dtype=torch.bool)
        self.scores = torch.zeros_like(weight, dtype=torch.float32)
        self.regrown = 0
        """Weights that a re-mask brought back after an earlier cycle had pruned them."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = w * self.keep.to(w.dtype)
        if out.requires_grad:
            wd = w.detach()

            def accumulate(g: torch.Tensor) -> None:
                self.scores.sub_((g * wd).float())

            out.register_hook(accumulate)
        return out


def keep_top(scores: list[torch.Tensor], amount: int) -> list[torch.Tensor]:
    """Keep-masks that drop the ``amount`` lowest scores across ``scores`` (one shared threshold)."""
    flat = torch.cat([s.flatten() for s in scores])
    keep = torch.ones_like(flat, dtype=torch.bool)
    if amount > 0:
        keep[torch.topk(flat, amount, largest=False).indices] = False
    out, i = [], 0
    for s in scores:
        out.append(keep[i : i + s.numel()].reshape(s.shape))
        i += s.numel()
    return out


class MovementPruner(GradualPruner):
    """Fine-tune → re-mask by movement score, on a cubic schedule."""

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        super().validate(model, ctx)  # initial_sparsity within the target
        if self.params.finetune_steps < 1:
            raise UsageError(
                "movement pruning needs finetune_steps >= 1: the scores are accumulated while fine-tuning",
                where=f"method {self.name!r}",
            )

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        calibration = self.calibration(ctx)
        p = self.params
        layers, targets = selection.layers, selection.targets
        shared, own = selection.split(p.scope)
        schedule = cubic_schedule(min(p.initial_sparsity, ctx.sparsity), ctx.sparsity, p.steps)
        masks: dict[str, MovementMask] = {}
        with seeded_tuner(model, calibration, ctx.seed, p) as tuner:
            try:
                for name, m in layers:
                    masks[name] = MovementMask(m.weight)
                    parametrize.register_parametrization(m, "weight", masks[name])
                tuner.opt = tuner.new_optimizer()
                for level in schedule:
                    tuner.steps(p.finetune_steps)
                    frac = level / ctx.sparsity if ctx.sparsity > 0 else 0.0
                    self._remask(masks, shared, own, targets, level, frac)
                tuner.steps(p.final_finetune_steps)
            finally:
                for _, m in layers:
                    if parametrize.is_parametrized(m, "weight"):
                        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        regrown = sum(mk.regrown for mk in masks.values())
        training = tuner.record("movement", schedule)
        notes = [
            "cubic schedule (Sanh et al. 2020, after Zhu & Gupta 2017): " + ", ".join(f"{s:.3f}" for s in schedule),
            "movement scores S = −Σ (∂L/∂W')·W over the fine-tuning steps (straight-through), top-k per "
            + ("layer" if p.scope != "global" else "model")
            + f"; {regrown} weights pruned at an earlier cycle came back at a later one",
            training_note(training) + "; every parameter is fine-tuned, masked weights do not move",
        ]
        return Applied(notes=notes, training=training)

    @staticmethod
    def _remask(
        masks: dict[str, MovementMask],
        shared: list[tuple[str, nn.Module]],
        own: list[tuple[str, nn.Module]],
        targets: dict[str, float],
        level: float,
        frac: float,
    ) -> None:
        def set_keep(name: str, keep: torch.Tensor) -> None:
            mk = masks[name]
            mk.regrown += int((keep & ~mk.keep).sum())
            mk.keep = keep

        if shared:
            total = sum(masks[n].scores.numel() for n, _ in shared)
            keeps = keep_top([masks[n].scores for n, _ in shared], int(round(level * total)))
            for (n, _), keep in zip(shared, keeps, strict=True):
                set_keep(n, keep)
        for n, _ in own:
            s = masks[n].scores
            set_keep(n, keep_top([s], int(round(targets[n] * frac * s.numel())))[0])
