"""The audit's own time split: inference, attacks and statistics per suite, for any model family.

Every suite reaches the model through a call of its root ``torch.nn.Module`` (a
classifier's ``model(**batch)``, a causal LM's scoring forwards, each step of
``generate()``, TextAttack's queries through the adversarial suite's wrapper), so a
forward pre-hook and a forward hook on the root module (:class:`ForwardClock`) time
inference without knowing the family. Nested root calls are timed once (the outermost).

An attack loop marks itself with :func:`attack_section`: the wall time inside it is the
suite's ``attack_s``, and the forward time spent inside it its ``attack_inference_s``.

Scores computed once and handed to a later suite of the same variant (the eval set that
performance, ood and bias all score) carry the forward time they cost: a predictor reads
it with :func:`forward_seconds` when it computes them and hands it on with
:func:`credit_reused` when it serves them again, so each suite's ``forward_ratio`` is its
time over the pure forward time of the texts it evaluates, whether it ran those forwards
or took them from an earlier suite.
:func:`measure_suite` installs both around one suite's ``run`` and returns its
:class:`audit.results.SuiteTiming`; the hooks are removed when it ends, even on error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from audit.results import SuiteTiming, VariantTiming


class ForwardClock:
    """Accumulates the wall time spent inside a module's (outermost) forward calls."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        self._started = 0.0

    def _enter(self, module: Any, args: Any) -> None:
        if self._depth == 0:
            self._started = time.perf_counter()
        self._depth += 1

    def _exit(self, module: Any, args: Any, output: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._started
            self.calls += 1

    @contextlib.contextmanager
    def attached(self, model: Any) -> Iterator[bool]:
        """Time ``model``'s forward calls while inside; yields False (nothing timed) for a non-module."""
        import torch

        if not isinstance(model, torch.nn.Module):
            yield False
            return
        handles = [
            model.register_forward_pre_hook(self._enter),
            model.register_forward_hook(self._exit, always_call=True),
        ]
        try:
            yield True
        finally:
            for h in handles:
                h.remove()


@dataclass
class SuiteClock:
    """One running suite's clocks: forwards, and the attack sections inside it."""

    forwards: ForwardClock = field(default_factory=ForwardClock)
    attack_s: float | None = None
    attack_inference_s: float = 0.0
    reused_inference_s: float = 0.0


_ACTIVE: ContextVar[SuiteClock | None] = ContextVar("prune_audit_suite_clock", default=None)


def forward_seconds() -> float | None:
    """The running suite's forward seconds so far (None outside :func:`measure_suite`)."""
    clock = _ACTIVE.get()
    return None if clock is None else clock.forwards.seconds


def credit_reused(seconds: float) -> None:
    """Count ``seconds`` of forwards the running suite took from an earlier one instead of running them."""
    clock = _ACTIVE.get()
    if clock is not None and seconds > 0:
        clock.reused_inference_s += seconds


@contextlib.contextmanager
def attack_section() -> Iterator[None]:
    """Mark an attack's work (search, transformations, constraints and its model queries).

    Outside :func:`measure_suite` it times nothing.
    """
    clock = _ACTIVE.get()
    if clock is None:
        yield
        return
    t0, f0 = time.perf_counter(), clock.forwards.seconds
    try:
        yield
    finally:
        clock.attack_s = (clock.attack_s or 0.0) + time.perf_counter() - t0
        clock.attack_inference_s += clock.forwards.seconds - f0


@contextlib.contextmanager
def measure_suite(model: Any) -> Iterator[list[SuiteTiming]]:
    """Time one suite's run on ``model``; the yielded list holds its :class:`SuiteTiming` on exit."""
    clock = SuiteClock()
    out: list[SuiteTiming] = []
    token = _ACTIVE.set(clock)
    hooked = False
    t0 = time.perf_counter()
    try:
        with clock.forwards.attached(model) as hooked:
            yield out
    finally:
        total = time.perf_counter() - t0
        _ACTIVE.reset(token)
        out.append(suite_timing(total, clock, hooked=hooked))


def suite_timing(total: float, clock: SuiteClock, *, hooked: bool = True) -> SuiteTiming:
    """The split of ``total`` seconds: inference, attack search and the rest (statistics)."""
    inference = clock.forwards.seconds if hooked else None
    search = 0.0 if clock.attack_s is None else max(0.0, clock.attack_s - clock.attack_inference_s)
    statistics = max(0.0, total - (inference or 0.0) - search)
    pure = (inference or 0.0) + clock.reused_inference_s
    ratio = total / pure if clock.attack_s is None and inference is not None and pure > 0 else None
    return SuiteTiming(
        total_s=total,
        inference_s=inference,
        attack_s=clock.attack_s,
        attack_inference_s=clock.attack_inference_s if clock.attack_s is not None else None,
        statistics_s=statistics,
        forward_calls=clock.forwards.calls,
        reused_inference_s=clock.reused_inference_s,
        forward_ratio=ratio,
    )


def variant_timing(
    total: float,
    *,
    prune_s: float,
    deploy_s: float,
    suites: dict[str, SuiteTiming],
    reused: list[str],
) -> VariantTiming:
    """A variant's split; ``overhead_s`` is ``total`` less every part measured in this run (not ``reused``)."""
    plain = [s for s in suites.values() if s.attack_s is None and s.inference_s is not None]
    inference = sum(s.inference_s or 0.0 for s in plain)
    accounted = sum(s.total_s for name, s in suites.items() if name not in reused)
    accounted += (0.0 if "prune" in reused else prune_s) + (0.0 if "deploy" in reused else deploy_s)
    return VariantTiming(
        total_s=total,
        prune_s=prune_s,
        deploy_s=deploy_s,
        suites=suites,
        overhead_s=max(0.0, total - accounted),
        suites_forward_ratio=sum(s.total_s for s in plain) / inference if inference > 0 else None,
        reused=reused,
    )
