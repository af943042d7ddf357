"""The allocation search itself, apart from any model (``sweep.allocate``; see :mod:`audit.allocation`).

The moves, the violation of a policy's results, the sensitivities and the loop (start, one
probe per block, trials) take an ``evaluate`` callable, so they are tested with evaluators
built by hand; :mod:`audit.allocation` gives them one that prunes and judges a real model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.results import AllocationRuleValue, AllocationStep, RuleResult

if TYPE_CHECKING:
    from audit.policy import Policy

log = logging.getLogger("audit.allocation")

EPS = 1e-9

# -- pure parts: moves, violation, sensitivity ------------------------------------------------------


def weighted_mean(sparsities: list[float], weights: list[int]) -> float:
    """Mean of ``sparsities`` weighted by ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    return float(np.dot(np.asarray(sparsities, dtype=np.float64), w) / w.sum())


def move(
    sparsities: list[float], weights: list[int], donor: int, receiver: int, step: float, lo: float, hi: float
) -> list[float] | None:
    """``step`` of sparsity off block ``donor`` onto ``receiver``, weight-preserving; None when nothing moves.

    The donor loses ``d`` (at most ``step``, never below ``lo``) and the receiver gains
    ``d * w_donor / w_receiver`` (never above ``hi``; ``d`` shrinks to fit), so the weighted mean
    is unchanged.
    """
    s = list(sparsities)
    d = min(step, s[donor] - lo)
    gain = d * weights[donor] / weights[receiver]
    room = hi - s[receiver]
    if gain > room:
        gain = room
        d = gain * weights[receiver] / weights[donor]
    if d <= EPS:
        return None
    s[donor] -= d
    s[receiver] += gain
    return s


def next_move(
    sparsities: list[float], weights: list[int], sensitivity: list[float], step: float, lo: float, hi: float
) -> tuple[list[float], int, int] | None:
    """The next trial: the most sensitive block that can give onto the least sensitive one that can take.

    Only a donor more sensitive than the receiver is used; ties break on the block index. None
    when no such pair can move anything.
    """
    order = sorted(range(len(sparsities)), key=lambda i: (-sensitivity[i], i))
    for donor in order:
        if sparsities[donor] - lo <= EPS:
            continue
        for receiver in reversed(order):
            if receiver == donor or sensitivity[receiver] >= sensitivity[donor]:
                continue
            if hi - sparsities[receiver] <= EPS:
                continue
            moved = move(sparsities, weights, donor, receiver, step, lo, hi)
            if moved is not None:
                return moved, donor, receiver
    return None


def margin(rule: Any, value: float) -> float:
    """How far ``value`` is inside the rule's bound (negative: past it)."""
    out = np.inf
    if rule.min is not None:
        out = min(out, value - rule.min)
    if rule.max is not None:
        out = min(out, rule.max - value)
    return float(out)


def violation(policy: Policy, results: list[RuleResult]) -> float | None:
    """Sum over FAIL results of how far their value is past the bound; None when a result is ERROR."""
    rules = {r.id: r for r in policy.rules}
    total = 0.0
    for r in results:
        if r.status == "ERROR":
            return None
        if r.status != "FAIL":
            continue
        if r.compared is None:
            return None
        total += max(0.0, -margin(rules[r.rule], r.compared))
    return total


def passes(results: list[RuleResult]) -> bool:
    """No FAIL or ERROR among the results, and at least one rule judged the candidate."""
    judged = [r for r in results if r.status in ("PASS", "WARN", "FAIL", "ERROR")]
    return bool(judged) and not any(r.status in ("FAIL", "ERROR") for r in judged)


def sensitivities(start: float, probes: list[float | None], weights: list[int]) -> list[float]:
    """Per block, the decrease in violation when it is restored to dense, per million weights.

    A probe that could not be measured (None) counts as no improvement.
    """
    out = []
    for v, w in zip(probes, weights, strict=True):
        gain = 0.0 if v is None else start - v
        out.append(gain / (w / 1e6))
    return out


@dataclass
class Evaluation:
    """One candidate judged on the selection split (``violation``: see :func:`violation`; 0 when it passes)."""

    results: list[RuleResult]
    status: str
    violation: float | None
    passed: bool
    datasets: set[str] = field(default_factory=set)


def _step(index: int, kind: str, s: list[float], weights: list[int], ev: Evaluation, note: str = "") -> AllocationStep:
    return AllocationStep(
        index=index,
        kind=kind,  # type: ignore[arg-type]
        sparsities=[round(x, 6) for x in s],
        weighted_sparsity=round(weighted_mean(s, weights), 6),
        status=ev.status,
        violation=ev.violation,
        rules=[
            AllocationRuleValue(rule=r.rule, metric=r.metric, status=r.status, compared=r.compared, bound=r.bound)
            for r in ev.results
        ],
        note=note,
    )


@dataclass
class SearchOutcome:
    """What :func:`search_loop` found: every step, the chosen candidate and why the search stopped."""

    steps: list[AllocationStep]
    chosen: list[float]
    chosen_step: int
    passed: bool
    outcome: str
    sensitivity: list[float | None]
    datasets: set[str]


def search_loop(
    evaluate: Callable[[list[float]], Evaluation],
    names: list[str],
    weights: list[int],
    start: list[float],
    *,
    budget: int,
    step: float,
    lo: float,
    hi: float,
    start_note: str = "",
) -> SearchOutcome:
    """The search (start, one probe per block, trials), with ``evaluate`` judging each candidate."""
    start = [min(hi, max(lo, x)) for x in start]
    steps: list[AllocationStep] = []
    candidates: list[tuple[int, list[float], Evaluation]] = []
    datasets: set[str] = set()
    sens: list[float | None] = [None] * len(names)

    def run(kind: str, alloc: list[float], note: str = "") -> Evaluation:
        ev = evaluate(alloc)
        datasets.update(ev.datasets)
        steps.append(_step(len(steps), kind, alloc, weights, ev, note))
        log.info("allocation %s %d: %s (violation %s)", kind, len(steps) - 1, ev.status, ev.violation)
        if kind != "probe":
            candidates.append((len(steps) - 1, alloc, ev))
        return ev

    ev = run("start", start, start_note)
    current = start
    if ev.passed:
        outcome = "the start allocation passes on the selection split"
    elif ev.violation is None:
        outcome = "a rule gave ERROR on the start allocation: the search cannot measure how far it is from passing"
    elif len(steps) + len(names) > budget:
        outcome = f"budget {budget} does not cover the start and the {len(names)} sensitivity probes"
    else:
        probes = []
        for i in range(len(names)):
            alloc = list(start)
            alloc[i] = 0.0
            probes.append(run("probe", alloc, f"{names[i]} restored to dense").violation)
        values = sensitivities(ev.violation, probes, weights)
        sens = [round(v, 9) for v in values]
        while True:
            if len(steps) >= budget:
                outcome = f"budget of {budget} evaluations spent without a passing allocation"
                break
            nxt = next_move(current, weights, values, step, lo, hi)
            if nxt is None:
                outcome = "no block more sensitive than another can give more sparsity: no move is left"
                break
            current, donor, receiver = nxt
            ev = run("trial", current, f"{names[donor]} -> {names[receiver]}")
            if ev.passed:
                outcome = "a trial passes on the selection split"
                break
    passing = [c for c in candidates if c[2].passed]
    if passing:
        index, chosen, _ = passing[0]
    else:  # the smallest measured violation, earliest on ties; unmeasurable ones last
        index, chosen, _ = min(candidates, key=lambda c: (c[2].violation is None, c[2].violation or 0.0, c[0]))
        outcome = f"{outcome}; auditing the candidate with the smallest violation (step {index})"
    steps[index].accepted = True
    return SearchOutcome(
        steps=steps,
        chosen=chosen,
        chosen_step=index,
        passed=bool(passing),
        outcome=outcome,
        sensitivity=sens,
        datasets=datasets,
    )
