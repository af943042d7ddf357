"""Params of the methods that fine-tune while they prune (gradual, movement, imp), no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from audit.registry import PluginParams


class DistillParams(BaseModel):
    """Knowledge distillation from the dense model during a method's fine-tuning
    (Hinton et al. 2015; as in Sanh et al. 2020): the loss is
    ``(1 - alpha) · CE(labels) + alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T))``
    on the rows the training loss uses (a classifier: each example's class logits; a causal
    LM: each real next-token position). The teacher is the unpruned model the method was
    given, frozen in eval mode. ``alpha: 1`` trains on the teacher alone (labels unused).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the distillation term (1 − alpha: labels).")
    temperature: float = Field(2.0, gt=0.0, le=100.0, description="Softmax temperature T of teacher and student.")


class _FineTuned(PluginParams):
    """Shared by the methods that fine-tune while they prune (labelled calibration data)."""

    finetune_steps: int = Field(16, ge=0, le=100_000, description="Optimizer steps per cycle.")
    learning_rate: float = Field(3e-5, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    scope: Literal["layer", "global"] = "layer"
    distill: DistillParams | None = Field(
        None, description="Distil from the dense model's logits during fine-tuning (omitted: labels only)."
    )


class GradualParams(_FineTuned):
    """Gradual magnitude pruning with recovery fine-tuning (Zhu & Gupta 2017): ``steps``
    prune → fine-tune cycles following the cubic schedule
    ``s_t = s_f + (s_i - s_f) (1 - t/steps)^3``; each cycle fine-tunes every parameter
    for ``finetune_steps`` batches of labelled calibration data while pruned weights
    stay at zero. ``distill`` adds a KL term towards the dense model's logits. Slow, so
    never part of a default sweep: it runs only when listed.

    ```yaml
    sweep:
      methods:
        - {name: gradual, params: {steps: 4, finetune_steps: 16, learning_rate: 3.0e-5}}
        - {name: gradual, params: {steps: 4, distill: {alpha: 0.5, temperature: 2.0}}}
    ```
    """

    steps: int = Field(4, ge=1, le=100, description="Number of prune → fine-tune cycles.")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="s_i of the cubic schedule.")
    final_finetune_steps: int = Field(0, ge=0, le=100_000, description="Extra steps after the last cycle.")


class MovementParams(_FineTuned):
    """Movement pruning (Sanh et al. 2020, arXiv:2005.07683), first-order, hard top-k:
    every weight carries a score ``S = −Σ_t (∂L/∂W')·W`` accumulated over the fine-tuning
    steps (``W' = W ⊙ M``; the straight-through estimator passes the gradient of ``W'``
    to the score of every weight, pruned or not), so weights the fine-tuning moves
    towards zero lose. In each of ``steps`` cycles the model is fine-tuned for
    ``finetune_steps`` batches, then the mask keeps the top scores up to the cycle's
    level of the cubic schedule (a weight pruned earlier can come back); the last mask
    is fine-tuned for ``final_finetune_steps`` more. Opt-in, slow.

    ```yaml
    sweep:
      methods:
        - {name: movement, params: {steps: 4, finetune_steps: 16, final_finetune_steps: 16}}
    ```
    """

    steps: int = Field(4, ge=1, le=100, description="Number of fine-tune → re-mask cycles.")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="s_i of the cubic schedule.")
    final_finetune_steps: int = Field(16, ge=0, le=100_000, description="Steps on the final mask.")


class IMPParams(_FineTuned):
    """Iterative magnitude pruning with weight rewinding (lottery tickets; Frankle et al.
    2019, arXiv:1903.01611; for pre-trained BERT, Chen et al. 2020, arXiv:2007.12223):
    ``rounds`` rounds of fine-tune ``finetune_steps`` batches → prune the smallest
    surviving weights up to ``s_r = 1 − (1 − s_f)^(r/rounds)`` → rewind every parameter
    to its value after ``rewind_step`` steps of the first round (0: the model as given,
    Chen et al.'s pre-trained rewind). The final mask on the rewound weights (the
    ticket) is fine-tuned for ``final_finetune_steps``. ``scope: global`` as Chen et al.

    ```yaml
    sweep:
      methods:
        - {name: imp, params: {rounds: 3, finetune_steps: 16, rewind_step: 0, scope: global}}
    ```
    """

    rounds: int = Field(3, ge=1, le=50, description="Prune-and-rewind rounds.")
    rewind_step: int = Field(0, ge=0, le=100_000, description="Rewind point: steps into the first round (0: none).")
    final_finetune_steps: int = Field(16, ge=0, le=100_000, description="Steps training the final ticket.")

    @model_validator(mode="after")
    def _rewind_within_round(self) -> IMPParams:
        if self.rewind_step > self.finetune_steps:
            raise ValueError(
                f"rewind_step ({self.rewind_step}) is past the first round's {self.finetune_steps} fine-tuning steps"
            )
        return self
