"""Policy-guided allocation (``sweep.allocate``): the search on the selection split, step by step.

Formats what ``results.json`` holds (:class:`audit.results.AllocationRecord`) and the eval verdict of
the chosen variant; nothing is computed here but formatting and looking up that verdict.
"""

from __future__ import annotations

from typing import Any

from audit.results import RunResult
from reports.views.common import fmt


def _eval_status(result: RunResult, variant: str) -> str:
    """The chosen variant's status under the run's policy on the eval split (worst of its rules)."""
    if result.verdict is None:
        return "not judged (the run has no policy)"
    statuses = {r.status for r in result.verdict.rules if r.variant == variant}
    for s in ("ERROR", "FAIL", "WARN", "PASS"):
        if s in statuses:
            return s
    return "not judged"


def allocation_view(result: RunResult) -> dict[str, Any] | None:
    """The allocation section's view model; None when ``sweep.allocate`` did not run."""
    a = result.allocation
    if a is None:
        return None
    steps = []
    for s in a.steps:
        failing = [r for r in s.rules if r.status in ("FAIL", "ERROR")]
        steps.append(
            {
                "index": s.index,
                "kind": s.kind,
                "sparsities": ", ".join(fmt(x, 3) for x in s.sparsities),
                "weighted": fmt(s.weighted_sparsity, 4),
                "status": s.status,
                "violation": fmt(s.violation, 4),
                "rules": "; ".join(f"{r.rule} {r.status} {fmt(r.compared, 4)} ({r.bound})" for r in s.rules) or "—",
                "failing": len(failing),
                "accepted": s.accepted,
                "note": s.note,
            }
        )
    chosen = next(s for s in a.steps if s.index == a.chosen)
    return {
        "variant": a.variant,
        "method": a.method,
        "policy": a.policy,
        "target": fmt(a.target_sparsity, 2),
        "summary": (
            f"{a.method} at {a.target_sparsity:g} overall: per-block sparsities "
            f"{', '.join(f'{n} {x:.3f}' for n, x in zip(a.blocks, chosen.sparsities, strict=True))} "
            f"(step {a.chosen}, {chosen.kind})"
        ),
        "selection": f"{a.selection_split} ({a.selection_n} rows; {a.selection_dropped} dropped as also in eval)",
        "eval_split": a.eval_split,
        "passed_selection": a.passed,
        "eval_status": _eval_status(result, a.variant),
        "eval_policy": result.verdict.policy if result.verdict is not None else "none",
        "outcome": a.outcome,
        "budget": f"{a.evaluations} of {a.budget} evaluations",
        "start": a.start,
        "step": fmt(a.step, 3),
        "bounds": f"[{a.bounds[0]:g}, {a.bounds[1]:g}]",
        "suites": ", ".join(a.suites),
        "not_held_out": a.not_held_out,
        "sensitivity": [
            {"block": n, "weights": f"{w:,}", "value": fmt(v, 4)}
            for n, w, v in zip(a.blocks, a.block_weights, a.sensitivity or [None] * len(a.blocks), strict=True)
        ],
        "steps": steps,
    }


def allocation_summary(result: RunResult) -> dict[str, Any] | None:
    """The Markdown summary's lines; None when ``sweep.allocate`` did not run."""
    view = allocation_view(result)
    if view is None:
        return None
    return {
        k: view[k]
        for k in (
            "variant",
            "summary",
            "selection",
            "eval_split",
            "passed_selection",
            "eval_status",
            "eval_policy",
            "outcome",
            "budget",
            "policy",
        )
    }
