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


def _pct(x: float) -> str:
    return f"{x * 100:.0f} %"


def block_runs(sparsities: list[float]) -> str:
    """Per-block sparsities in words, consecutive blocks at the same (rounded) level joined:
    ``blocks 0–1 at 75 %, block 2 at 53 %``.
    """
    runs: list[tuple[int, int, str]] = []
    for i, x in enumerate(sparsities):
        p = _pct(x)
        if runs and runs[-1][2] == p and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i, p)
        else:
            runs.append((i, i, p))
    return ", ".join(f"block {a} at {p}" if a == b else f"blocks {a}–{b} at {p}" for a, b, p in runs)


def what_would_pass(result: RunResult) -> dict[str, str] | None:
    """The verdict's "what would pass" line from the allocation search and the chosen variant's eval
    verdict; None when ``sweep.allocate`` did not run. ``status``: PASS when the allocation passes on
    selection and eval, WARN when it passes on selection only, FAIL when it passed on neither or
    only on eval (chosen as the closest).
    """
    a = result.allocation
    if a is None:
        return None
    chosen = next(s for s in a.steps if s.index == a.chosen)
    alloc = f"{a.method} at {_pct(a.target_sparsity)} with {block_runs(chosen.sparsities)}"
    eval_status = _eval_status(result, a.variant)
    judged = eval_status in ("PASS", "WARN", "FAIL", "ERROR")
    same = result.verdict is not None and result.verdict.policy == a.policy
    on_eval = {
        "PASS": "passes on eval",
        "WARN": "passes on eval with warnings",
        "FAIL": "fails on eval",
        "ERROR": "errors on eval",
    }.get(eval_status, f"is {eval_status} on eval")
    if judged and not same and result.verdict is not None:
        on_eval += f" under the run's policy {result.verdict.policy}"
    eval_ok = eval_status in ("PASS", "WARN")
    if a.passed:
        text = f"{alloc}: passes on selection ({a.selection_split}) and {on_eval.removeprefix('passes on ')}"
        if not eval_ok:
            text = f"{alloc}: passes on selection ({a.selection_split}), but {on_eval}"
        status = "PASS" if eval_ok else "WARN"
    else:
        text = (
            f"no allocation at {_pct(a.target_sparsity)} passed on selection ({a.selection_split}) within "
            f"{a.evaluations} of {a.budget} evaluations; the closest, {alloc}, {on_eval}"
        )
        status = "FAIL"
    return {"text": text, "status": status, "variant": a.variant}


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
    } | {"what_would_pass": what_would_pass(result)}
