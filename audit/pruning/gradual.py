"""Gradual magnitude pruning with recovery fine-tuning (Zhu & Gupta 2017, "To prune, or
not to prune", arXiv:1710.01878).

At steps ``t = 0..n`` the sparsity follows ``s_t = s_f + (s_i - s_f)(1 - t/n)^3`` (the
step ``t = 0`` is skipped when ``s_i = 0``). Each step prunes the smallest-magnitude
surviving weights up to ``s_t`` with ``torch.nn.utils.prune`` (masks compose, so pruned
weights stay pruned) and then fine-tunes every parameter of the model for a few
batches of labelled calibration data, with the masks in place so pruned weights stay
zero. Per-layer override targets follow the same schedule shape. The seed fixes the
batch order and dropout of the fine-tuning, and selects the calibration sample. With
``distill`` the fine-tuning also distils from the dense model (:mod:`audit.pruning.training`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from audit.errors import UsageError
from audit.pruning.base import Applied, PruneContext, Pruner, Selection
from audit.pruning.training import seeded_tuner, training_note


def cubic_schedule(initial: float, final: float, steps: int) -> list[float]:
    """Sparsity after each step ``t = 0..steps`` of the cubic schedule (``t = 0`` dropped when it is 0)."""
    values = [final + (initial - final) * (1.0 - t / steps) ** 3 for t in range(steps + 1)]
    values[-1] = final
    return values if initial > 0 else values[1:]


def _pruned_count(module: nn.Module) -> int:
    mask = getattr(module, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


class GradualPruner(Pruner):
    """Prune → fine-tune cycles on a cubic schedule."""

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        super().validate(model, ctx)
        if self.params.initial_sparsity > ctx.sparsity:
            raise UsageError(
                f"initial_sparsity {self.params.initial_sparsity:g} is above the target {ctx.sparsity:g}",
                where=f"method {self.name!r}",
                hint="the schedule goes from initial_sparsity up to the sweep level",
            )

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        calibration = self.calibration(ctx)
        p = self.params
        layers, targets = selection.layers, selection.targets
        shared, own = selection.split(p.scope)
        schedule = cubic_schedule(min(p.initial_sparsity, ctx.sparsity), ctx.sparsity, p.steps)
        with seeded_tuner(model, calibration, ctx.seed, p) as tuner:
            try:
                for step, level in enumerate(schedule):
                    frac = level / ctx.sparsity if ctx.sparsity > 0 else 0.0
                    self._prune_to(shared, own, targets, level, frac)
                    tuner.steps(p.finetune_steps + (p.final_finetune_steps if step == len(schedule) - 1 else 0))
            finally:
                for _, m in layers:
                    if prune.is_pruned(m) and hasattr(m, "weight_orig"):
                        prune.remove(m, "weight")
        training = tuner.record("gradual", schedule)
        notes = [
            "cubic schedule (Zhu & Gupta 2017): " + ", ".join(f"{s:.3f}" for s in schedule),
            training_note(training) + "; every parameter is fine-tuned, pruned weights stay zero",
        ]
        return Applied(notes=notes, training=training)

    @staticmethod
    def _prune_to(
        shared: list[tuple[str, nn.Module]],
        own: list[tuple[str, nn.Module]],
        targets: dict[str, float],
        level: float,
        frac: float,
    ) -> None:
        if shared:
            total = sum(m.weight.numel() for _, m in shared)
            amount = int(round(level * total)) - sum(_pruned_count(m) for _, m in shared)
            if amount > 0:
                prune.global_unstructured(
                    [(m, "weight") for _, m in shared], pruning_method=prune.L1Unstructured, amount=amount
                )
        for name, m in own:
            amount = int(round(targets[name] * frac * m.weight.numel())) - _pruned_count(m)
            if amount > 0:
                prune.l1_unstructured(m, "weight", amount=amount)
