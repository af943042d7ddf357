"""The fine-tuning loop shared by the methods that train while they prune (``gradual``,
``movement``, ``imp``), with optional distillation from the dense model.

A :class:`FineTuner` draws labelled calibration batches in a seeded order, takes AdamW
steps on every trainable parameter and records each step's loss. With ``distill`` the
loss is ``(1 - alpha) · CE + alpha · T² · KL(teacher_T ‖ student_T)`` on the rows the
model's adapter names (:meth:`audit.models.adapter.ModelAdapter.training_rows`); the
teacher is a frozen copy of the model taken before any pruning, in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audit.models import adapter_of
from audit.pruning.base import CalibrationData
from audit.pruning.calibration import model_device, to_device
from audit.pruning.specs import DistillParams
from audit.results import TrainingRecord


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, averaged over rows."""
    t = float(temperature)
    return F.kl_div(
        F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1), log_target=True,
        reduction="batchmean",
    ) * (t * t)  # fmt: skip


class FineTuner:
    """Seeded AdamW fine-tuning on labelled calibration batches (optionally distilled)."""

    def __init__(
        self,
        model: nn.Module,
        calibration: CalibrationData,
        *,
        seed: int,
        learning_rate: float,
        weight_decay: float,
        distill: DistillParams | None,
    ) -> None:
        self.model = model
        self.batches = calibration.labelled_batches()
        self.examples = calibration.record.n
        self.device = model_device(model)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.distill = distill
        self.adapter = adapter_of(model, where="sweep.calibration")
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.losses: list[float] = []
        self.cycle_losses: list[list[float]] = []
        self.teacher: nn.Module | None = None
        if distill is not None:
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.opt = self.new_optimizer()

    def new_optimizer(self) -> torch.optim.Optimizer:
        """A fresh AdamW over the model's trainable parameters (IMP restarts it every round)."""
        return torch.optim.AdamW(
            [q for q in self.model.parameters() if q.requires_grad], lr=self.learning_rate,
            weight_decay=self.weight_decay,
        )  # fmt: skip

    def loss(self, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (labels, distillation, or both)."""
        batch = to_device(batch, self.device)
        logits, target = self.adapter.training_rows(self.model, batch, labels.to(self.device))
        if self.distill is None:
            return F.cross_entropy(logits, target)
        assert self.teacher is not None
        with torch.no_grad():
            teacher_logits, _ = self.adapter.training_rows(self.teacher, batch, labels.to(self.device))
        kd = distillation_loss(logits, teacher_logits.float(), self.distill.temperature)
        alpha = float(self.distill.alpha)
        if alpha >= 1.0:
            return kd
        return (1.0 - alpha) * F.cross_entropy(logits, target) + alpha * kd

    def steps(self, n: int, after_step: Callable[[int], None] | None = None) -> list[float]:
        """Take ``n`` optimizer steps (train mode); ``after_step(k)`` runs after the k-th (1-based)."""
        if n <= 0 or not self.batches:
            return []
        self.model.train()
        out: list[float] = []
        try:
            with torch.enable_grad():
                for k in range(1, n + 1):
                    if not self.order:
                        self.order.extend(torch.randperm(len(self.batches), generator=self.gen).tolist())
                    batch, labels = self.batches[self.order.pop()]
                    loss = self.loss(batch, labels)
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    out.append(float(loss.detach()))
                    if after_step is not None:
                        after_step(k)
        finally:
            self.opt.zero_grad(set_to_none=True)
            self.model.eval()
        self.losses.extend(out)
        self.cycle_losses.append(out)
        return out

    def close(self) -> None:
        """Drop the optimizer state and the teacher (memory)."""
        self.opt.zero_grad(set_to_none=True)
        self.opt = self.new_optimizer()
        self.teacher = None

    def record(self, procedure: str, schedule: Iterable[float], *, rewind_step: int | None = None) -> TrainingRecord:
        """What the fine-tuning did, for the pruning record."""
        cycles = [c for c in self.cycle_losses if c]
        d = self.distill
        if d is None:
            objective = "cross-entropy on the labels"
        elif d.alpha >= 1.0:
            objective = f"distillation only: T²·KL to the dense model's logits (T {d.temperature:g})"
        else:
            objective = (
                f"{1 - d.alpha:g} × cross-entropy on the labels + {d.alpha:g} × T²·KL to the dense model's logits "
                f"(T {d.temperature:g})"
            )
        return TrainingRecord(
            procedure=procedure,
            schedule=[round(float(s), 6) for s in schedule],
            optimizer_steps=len(self.losses),
            examples=int(self.examples),
            learning_rate=float(self.learning_rate),
            weight_decay=float(self.weight_decay),
            objective=objective,
            teacher=None if d is None else "the dense model (unpruned input), frozen, eval mode",
            alpha=None if d is None else float(d.alpha),
            temperature=None if d is None else float(d.temperature),
            rewind_step=rewind_step,
            loss_first=sum(cycles[0]) / len(cycles[0]) if cycles else None,
            loss_last=sum(cycles[-1]) / len(cycles[-1]) if cycles else None,
        )


@contextmanager
def seeded_tuner(model: nn.Module, calibration: CalibrationData, seed: int, params: Any) -> Iterator[FineTuner]:
    """A :class:`FineTuner` under the point's seed (dropout and batch order), with the global RNG
    state restored afterwards; on exit the tuner is closed and the model left in eval mode.
    ``params`` carries ``learning_rate``, ``weight_decay`` and ``distill``.
    """
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        tuner = FineTuner(
            model, calibration, seed=seed, learning_rate=params.learning_rate, weight_decay=params.weight_decay,
            distill=params.distill,
        )  # fmt: skip
        try:
            yield tuner
        finally:
            tuner.close()
            model.eval()


def training_note(record: TrainingRecord) -> str:
    """One line for the pruning record's notes."""
    parts = [
        f"{record.optimizer_steps} fine-tuning steps on {record.examples} labelled calibration examples "
        f"(lr {record.learning_rate:g}); objective: {record.objective}"
    ]
    if record.loss_first is not None and record.loss_last is not None:
        parts.append(f"loss: first cycle {record.loss_first:.4f}, last cycle {record.loss_last:.4f}")
    return "; ".join(parts)
