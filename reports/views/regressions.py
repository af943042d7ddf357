"""Regressions: the rules that failed, errored or warned, and gains too good to trust."""

from __future__ import annotations

from typing import Any

from audit.results import RuleResult, RunResult
from reports.views.common import fmt, fmt_signed, rule_row


def regression_rows(rules: list[RuleResult]) -> list[dict[str, Any]]:
    """Rows of the rules in ``rules`` (already sorted) that failed, errored or warned."""
    return [rule_row(r) for r in rules if r.status in ("FAIL", "ERROR", "WARN")]


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
