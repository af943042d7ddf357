"""Iterative magnitude pruning with weight rewinding: lottery tickets (Frankle & Carbin
2019; Frankle et al. 2019, "Stabilizing the Lottery Ticket Hypothesis", arXiv:1903.01611;
for pre-trained BERT, Chen et al. 2020, "The Lottery Ticket Hypothesis for Pre-trained
BERT Networks", arXiv:2007.12223).

Round ``r = 1..R``: fine-tune every parameter for ``finetune_steps`` batches (masks in
place, so pruned weights stay zero), prune the smallest-magnitude surviving weights up to
``s_r = 1 − (1 − s_f)^(r/R)`` (each round removes the same fraction of the survivors),
then rewind every parameter of the model to its value ``rewind_step`` steps into the
first round (0: the model as given, i.e. the pre-trained weights) and restart the
optimizer. The final mask on the rewound weights, the ticket, is fine-tuned for
``final_finetune_steps``. Masks go through ``torch.nn.utils.prune`` and compose.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from audit.pruning.base import Applied, PruneContext, Pruner, Selection
from audit.pruning.gradual import GradualPruner
from audit.pruning.training import seeded_tuner, training_note


def imp_schedule(final: float, rounds: int) -> list[float]:
    """Sparsity after each round: ``1 − (1 − final)^(r/rounds)``, ending exactly at ``final``."""
    values = [1.0 - (1.0 - final) ** (r / rounds) for r in range(1, rounds + 1)]
    values[-1] = final
    return values


class IMPPruner(Pruner):
    """Train → prune by magnitude → rewind, for a number of rounds; then train the ticket."""

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        calibration = self.calibration(ctx)
        p = self.params
        layers, targets = selection.layers, selection.targets
        shared, own = selection.split(p.scope)
        schedule = imp_schedule(ctx.sparsity, p.rounds)
        params = list(model.parameters())
        rewind: list[torch.Tensor] = []

        def snapshot() -> None:
            rewind[:] = [q.detach().clone() for q in params]

        with seeded_tuner(model, calibration, ctx.seed, p) as tuner:
            if p.rewind_step == 0:
                snapshot()
            try:
                for r, level in enumerate(schedule, start=1):
                    at_rewind = (lambda k: snapshot() if k == p.rewind_step else None) if r == 1 else None
                    tuner.steps(p.finetune_steps, after_step=at_rewind if p.rewind_step > 0 else None)
                    frac = level / ctx.sparsity if ctx.sparsity > 0 else 0.0
                    GradualPruner._prune_to(shared, own, targets, level, frac)
                    with torch.no_grad():
                        for q, saved in zip(params, rewind, strict=True):
                            q.copy_(saved)
                    tuner.opt = tuner.new_optimizer()
                tuner.steps(p.final_finetune_steps)
            finally:
                for _, m in layers:
                    if prune.is_pruned(m) and hasattr(m, "weight_orig"):
                        prune.remove(m, "weight")
        training = tuner.record("imp", schedule, rewind_step=p.rewind_step)
        rewound_to = "the weights as given (pre-trained)" if p.rewind_step == 0 else f"step {p.rewind_step}"
        notes = [
            f"{p.rounds} rounds of fine-tune → magnitude prune ({'global' if p.scope == 'global' else 'per layer'})"
            " → rewind: " + ", ".join(f"{s:.3f}" for s in schedule),
            f"every parameter rewound to {rewound_to} after each round; the ticket then fine-tuned for "
            f"{p.final_finetune_steps} steps",
            training_note(training),
        ]
        return Applied(notes=notes, training=training)
