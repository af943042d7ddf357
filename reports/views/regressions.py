"""Regressions: the rules that failed, errored or warned, with their evidence, and gains too good to trust."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from audit.results import MetricInfo, RuleResult, RunResult
from reports.views.common import STATUS_ORDER, fmt, fmt_signed, rule_row
from reports.views.evidence import measurement_index, rule_evidence

TOP_FINDINGS = 5
"""Regressions shown on the report's first screen."""


def regression_rows(
    rules: list[RuleResult], result: RunResult | None = None, cat: dict[str, MetricInfo] | None = None
) -> list[dict[str, Any]]:
    """Rows of the rules in ``rules`` (already sorted) that failed, errored or warned.

    With ``result``, each row carries the evidence of the measurement it judged
    (:func:`reports.views.evidence.rule_evidence`): delta, CI, q-value, n, and whether
    the change is significant.
    """
    index = measurement_index(result) if result is not None else {}
    rows = []
    for r in rules:
        if r.status not in ("FAIL", "ERROR", "WARN"):
            continue
        row = rule_row(r)
        parts = r.metric.split("/")
        row["set"] = parts[1] if len(parts) == 3 else ""
        row["metric_name"] = parts[-1]
        row["evidence"] = rule_evidence(index, r, cat or {}) if result is not None else None
        rows.append(row)
    return rows


def _weight(row: dict[str, Any]) -> tuple[int, int, float]:
    """Worst first: status, then significant before not, then smaller q."""
    ev = row.get("evidence") or {}
    sig = {True: 0, None: 1, False: 2}[ev.get("significant")]
    q = ev.get("q_value")
    return STATUS_ORDER.get(row["status"], 9), sig, q if q is not None else 2.0


def top_findings(rows: list[dict[str, Any]], k: int = TOP_FINDINGS) -> list[dict[str, Any]]:
    """The ``k`` worst regressions (FAIL and ERROR before WARN, significant first, then by q)."""
    return sorted(rows, key=_weight)[:k]


def grouped_by_variant(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Regressions per variant, the variant with the worst findings first; rows worst first."""
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_variant[r["variant"]].append(r)
    groups = []
    for vid, rs in by_variant.items():
        rs = sorted(rs, key=_weight)
        counts = {s: sum(r["status"] == s for r in rs) for s in ("FAIL", "ERROR", "WARN")}
        weak = sum(
            1 for r in rs if r["status"] in ("FAIL", "WARN") and (r.get("evidence") or {}).get("significant") is False
        )
        groups.append(
            {
                "variant": vid,
                "rows": rs,
                "counts": [{"status": s, "n": n} for s, n in counts.items() if n],
                "not_significant": weak,
                "_key": (-counts["FAIL"] - counts["ERROR"], -counts["WARN"], vid),
            }
        )
    groups.sort(key=lambda g: g["_key"])
    for g in groups:
        g.pop("_key")
    return groups


def suspicious_rows(result: RunResult) -> list[dict[str, Any]]:
    return [
        {
            "variant": r["variant"],
            "metric": r["metric"],
            "delta": fmt_signed(r.get("delta")),
            "q": fmt(r.get("q_value")),
            "reason": r["reason"],
        }
        for r in result.statistics.get("suspicious_gains") or []
    ]
