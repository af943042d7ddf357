"""Formatting and small helpers every section's view model shares."""

from __future__ import annotations

import json
from typing import Any

from audit.plan import method_display  # noqa: F401 - re-exported for the views
from audit.policy import stage_catalog
from audit.results import Measurement, MetricInfo, RuleResult, RunResult, VariantResult

STATUS_ORDER = {"FAIL": 0, "ERROR": 1, "WARN": 2, "PASS": 3, "SKIP": 4}
STATUS_ICON = {"PASS": "✅", "WARN": "⚠️", "FAIL": "❌", "ERROR": "💥", "SKIP": "⏭️", "NO_RESULTS": "∅"}
MAX_CELL_CHARS = 240


# -- formatting ----------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}"


def _digits(info: MetricInfo | None) -> int:
    if info is None:
        return 3
    hi = info.range[1] if len(info.range) > 1 else None
    if info.unit == "x":
        return 2
    if info.unit == "%" or (hi is not None and hi > 10):
        return 1
    if hi is None and info.unit:
        return 1
    return 3


def fmt_value(value: float | None, info: MetricInfo | None = None, *, signed: bool = False) -> str:
    """A metric value with precision suited to its range and unit."""
    if value is None:
        return "—"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:+.2e}" if signed else f"{value:.2e}"
    d = _digits(info)
    return f"{value:+.{d}f}" if signed else f"{value:.{d}f}"


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def clip(text: Any, limit: int = MAX_CELL_CHARS) -> str:
    """Any example value as display text, shortened to ``limit`` characters."""
    if text is None:
        s = ""
    elif isinstance(text, str):
        s = text
    elif isinstance(text, float):
        s = f"{text:.4g}"
    else:
        s = json.dumps(text, ensure_ascii=False, default=str, sort_keys=True)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def direction_text(info: MetricInfo | None) -> str:
    if info is None or info.higher_is_better is None:
        return ""
    return "higher is better" if info.higher_is_better else "lower is better"


def direction_arrow(info: MetricInfo | None) -> str:
    if info is None or info.higher_is_better is None:
        return ""
    return "↑" if info.higher_is_better else "↓"


# -- shared helpers ------------------------------------------------------------------


def catalog(result: RunResult) -> dict[str, MetricInfo]:
    """Metric declarations of the run plus every registered stage's metrics."""
    return {**stage_catalog(), **result.metrics}


def metric_info(cat: dict[str, MetricInfo], metric_id: str) -> MetricInfo | None:
    suite, _, rest = metric_id.partition("/")
    return cat.get(f"{suite}/{rest.rsplit('/', 1)[-1]}")


def method_label(v: VariantResult) -> str:
    """The method key of a variant (as the policy's max compliant sparsity names it)."""
    return v.point.label or v.point.method


def worse(delta: float | None, info: MetricInfo | None, eps: float = 1e-12) -> bool:
    if delta is None or info is None or info.higher_is_better is None:
        return False
    return delta < -eps if info.higher_is_better else delta > eps


def by_id(v: VariantResult) -> dict[str, Measurement]:
    return {m.id: m for m in v.measurements}


def ordered_ids(result: RunResult) -> list[str]:
    ids: dict[str, None] = {}
    for v in result.all_variants():
        for m in v.measurements:
            ids.setdefault(m.id, None)
    return list(ids)


def worst_status(statuses: list[str]) -> str:
    return min(statuses, key=lambda s: STATUS_ORDER.get(s, 9)) if statuses else ""


def rule_row(r: RuleResult) -> dict[str, Any]:
    return {
        "status": r.status,
        "icon": STATUS_ICON.get(r.status, ""),
        "rule": r.rule,
        "variant": r.variant,
        "metric": r.metric,
        "severity": r.severity,
        "observed": fmt_value(r.observed),
        "baseline": fmt_value(r.baseline),
        "compared": fmt_value(r.compared, signed=True) if r.compared is not None else "—",
        "bound": r.bound,
        "message": r.message,
        "rationale": " ".join(r.rationale.split()),
        "waived_by": r.waived_by or "",
    }


def sorted_rules(rules: list[RuleResult]) -> list[RuleResult]:
    return sorted(rules, key=lambda r: (STATUS_ORDER.get(r.status, 9), r.rule, r.variant, r.metric))
