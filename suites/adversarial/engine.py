"""The attack loop: one :class:`textattack.Attack` driven over many examples, with budgets.

:func:`attack_examples` calls ``Attack.attack(example, label)`` directly, which is what
TextAttack's ``Attacker`` does per example, without its logging, progress bar and
checkpointing. Query budgets are TextAttack's own (``goal_function.query_budget``); the
time budget is checked before each example; random transformations are seeded per
example from ``(seed, recipe, example index)``, so a result does not depend on which
other examples ran before it.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

SUCCESS, FAILED, SKIPPED, NOT_ATTACKED = "success", "failed", "skipped", "not_attacked"


@dataclass
class AttackRecord:
    """What happened to one example under one recipe (plain data, JSON-able)."""

    index: int
    """Row of the example in the eval set."""
    status: str
    """``success``, ``failed``, ``skipped`` (misclassified before the attack) or ``not_attacked``."""
    label: int
    original: list[str]
    """The example's input columns (text, and text pair when there is one)."""
    perturbed: list[str] | None = None
    orig_pred: int | None = None
    orig_proba: list[float] = field(default_factory=list)
    pert_pred: int | None = None
    pert_proba: list[float] = field(default_factory=list)
    num_queries: int = 0
    words_changed: int = 0
    num_words: int = 0
    seconds: float = 0.0

    @property
    def attacked(self) -> bool:
        return self.status != NOT_ATTACKED

    @property
    def robust(self) -> bool:
        """Still classified correctly after the attack."""
        return self.status == FAILED

    @property
    def perturbed_pct(self) -> float:
        return 100.0 * self.words_changed / self.num_words if self.num_words else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackRecord:
        return cls(**data)


def example_seed(seed: int, recipe: str, index: int) -> int:
    """A stable 32-bit seed per (run seed, recipe, example)."""
    return zlib.crc32(f"{seed}:{recipe}:{index}".encode())


def _set_seed(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _columns(text: str, pair: str | None) -> Any:
    if pair is None:
        return text
    return OrderedDict([("text", text), ("text_pair", pair)])


def _record(result: Any, index: int, label: int, columns: list[str], seconds: float) -> AttackRecord:
    from textattack.attack_results import FailedAttackResult, SkippedAttackResult, SuccessfulAttackResult

    orig = result.original_result
    pert = result.perturbed_result
    if isinstance(result, SkippedAttackResult):
        status = SKIPPED
    elif isinstance(result, SuccessfulAttackResult):
        status = SUCCESS
    elif isinstance(result, FailedAttackResult):
        status = FAILED
    else:  # MaximizedAttackResult: not produced by untargeted classification
        status = FAILED
    rec = AttackRecord(
        index=index,
        status=status,
        label=label,
        original=columns,
        orig_pred=int(orig.output),
        orig_proba=[float(x) for x in orig.raw_output],
        num_queries=int(result.num_queries),
        num_words=len(orig.attacked_text.words),
        seconds=seconds,
    )
    if status != SKIPPED:
        rec.pert_pred = int(pert.output)
        rec.pert_proba = [float(x) for x in pert.raw_output]
    if status == SUCCESS:
        rec.perturbed = [str(v) for v in pert.attacked_text._text_input.values()]
        rec.words_changed = len(orig.attacked_text.all_words_diff(pert.attacked_text))
    return rec


def attack_examples(
    attack: Any,
    *,
    recipe: str,
    indices: list[int],
    texts: list[str],
    labels: list[int],
    pairs: list[str] | None = None,
    seed: int = 0,
    deadline: float | None = None,
) -> list[AttackRecord]:
    """Attack ``texts[i]`` for each position, in order, until ``deadline`` (``time.monotonic``).

    Returns one record per example; those not reached before the deadline are
    ``not_attacked``. The global RNG states are restored afterwards.
    """
    from textattack.shared import AttackedText

    from audit.timing import attack_section

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    records: list[AttackRecord] = []
    try:
        for pos, index in enumerate(indices):
            text = texts[pos]
            pair = pairs[pos] if pairs is not None else None
            columns = [text] if pair is None else [text, pair]
            label = int(labels[pos])
            if deadline is not None and time.monotonic() >= deadline:
                records.append(AttackRecord(index=index, status=NOT_ATTACKED, label=label, original=columns))
                continue
            _set_seed(example_seed(seed, recipe, index))
            t0 = time.perf_counter()
            with attack_section():
                result = attack.attack(AttackedText(_columns(text, pair)), label)
            records.append(_record(result, index, label, columns, time.perf_counter() - t0))
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    return records
