"""The verdict section: policy outcome, max compliant sparsity per method, rules × variants matrix."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from audit.results import RuleResult, RunResult, VariantResult
from reports.views.allocation import what_would_pass
from reports.views.common import STATUS_ICON, method_display, method_label, sorted_rules, worst_status

EXIT_MEANING = {
    0: "pass (warnings allowed)",
    1: "a rule failed or errored",
    2: "interrupted",
    3: "internal error",
    4: "usage or config error",
    5: "nothing was evaluated",
}


def recommendations(result: RunResult) -> list[dict[str, Any]]:
    """Per method: max compliant sparsity, the levels tested and why the next level fails."""
    verdict = result.verdict
    if verdict is None:
        return []
    levels: dict[str, dict[float, list[VariantResult]]] = defaultdict(lambda: defaultdict(list))
    for v in result.variants:
        levels[method_label(v)][v.point.sparsity].append(v)
    by_variant: dict[str, list[RuleResult]] = defaultdict(list)
    for r in verdict.rules:
        by_variant[r.variant].append(r)
    out = []
    for method in sorted(set(levels) | set(verdict.max_compliant_sparsity)):
        best = verdict.max_compliant_sparsity.get(method)
        tested = sorted(levels.get(method, {}))
        blocker = ""
        nxt = [s for s in tested if best is None or s > best + 1e-9]
        if nxt:
            s = nxt[0]
            for v in levels[method][s]:
                bad = [r for r in sorted_rules(by_variant.get(v.id, [])) if r.status in ("FAIL", "ERROR")]
                if bad:
                    blocker = f"at {s:.2f}: {bad[0].status} {bad[0].rule} on {v.id} ({bad[0].message})"
                    break
                if v.errors:
                    e = v.errors[0]
                    blocker = f"at {s:.2f}: {v.id} has an error in {e.suite}: {e.error_type}"
                    break
                judged = [r for r in by_variant.get(v.id, []) if r.status != "SKIP"]
                if not judged:
                    blocker = f"at {s:.2f}: no rule judged {v.id}"
                    break
        out.append(
            {
                "method": method_display(method),
                "sparsity": "none" if best is None else f"{best:.2f}",
                "passes": best is not None,
                "tested": ", ".join(f"{s:.2f}" for s in tested),
                "blocker": blocker,
            }
        )
    return out


def matrix(result: RunResult) -> dict[str, Any] | None:
    """Rules × variants: the worst status of each rule on each variant."""
    verdict = result.verdict
    if verdict is None or not verdict.rules:
        return None
    variants = [v.id for v in result.all_variants()]
    rule_ids: dict[str, None] = {}
    cells: dict[tuple[str, str], list[RuleResult]] = defaultdict(list)
    for r in verdict.rules:
        rule_ids.setdefault(r.rule, None)
        cells[(r.rule, r.variant)].append(r)
    rows = []
    for rid in rule_ids:
        skipped_all = cells.get((rid, "*"))
        row = []
        for vid in variants:
            rs = skipped_all or cells.get((rid, vid), [])
            st = worst_status([r.status for r in rs])
            row.append(
                {
                    "status": st,
                    "icon": STATUS_ICON.get(st, ""),
                    "title": "; ".join(f"{r.metric}: {r.message}" for r in rs) or "not applicable",
                }
            )
        severity = next((r.severity for (k, _), rs in cells.items() if k == rid for r in rs), "fail")
        rows.append({"rule": rid, "severity": severity, "cells": row})
    return {"variants": variants, "rows": rows}


def verdict_view(result: RunResult) -> dict[str, Any] | None:
    verdict = result.verdict
    if verdict is None:
        return None
    c = verdict.counts
    judged_variants = {r.variant for r in verdict.rules if r.status != "SKIP"}
    failing_variants = {r.variant for r in verdict.rules if r.status in ("FAIL", "ERROR")}
    headline = (
        f"{c.get('FAIL', 0)} failing, {c.get('ERROR', 0)} erroring, {c.get('WARN', 0)} warning and "
        f"{c.get('PASS', 0)} passing checks on {len(judged_variants)} variant(s); "
        f"{len(failing_variants)} variant(s) fail or error"
    )
    if c.get("SKIP"):
        headline += f"; {c['SKIP']} check(s) skipped"
    return {
        "status": verdict.status,
        "icon": STATUS_ICON.get(verdict.status, ""),
        "policy": verdict.policy,
        "policy_name": verdict.policy_name or verdict.policy,
        "description": verdict.policy_description,
        "policy_fingerprint": verdict.policy_fingerprint[:12],
        "exit_code": verdict.exit_code,
        "exit_meaning": EXIT_MEANING.get(verdict.exit_code, ""),
        "evaluated_at": verdict.evaluated_at,
        "fail_on_error": verdict.fail_on_error,
        "counts": [{"status": k, "n": n} for k, n in verdict.counts.items()],
        "headline": headline,
        "max_compliant": recommendations(result),
        "what_would_pass": what_would_pass(result),
        "notes": list(verdict.notes),
        "waivers": [
            {
                "rule": w.rule,
                "variants": ", ".join(w.variants),
                "metric": w.metric,
                "approver": w.approver,
                "reason": w.reason,
                "expires": w.expires,
                "state": ("used" if w.used else "active, unused") if w.active else "expired",
            }
            for w in verdict.waivers
        ],
    }
