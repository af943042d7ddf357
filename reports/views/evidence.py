"""The evidence beside a finding: the paired change with its CI, BH q-value and n.

Views only select and format: the numbers come from the measurement's paired record
(``details["paired"]``, one shape for every suite: ``delta``, ``ci_low``, ``ci_high``,
``p_value``, ``q_value``, ``significant``, ``n``; :mod:`audit.analysis` writes the q-value),
or, for a rule on one group, that group's record (``details["paired_groups"][feature][group]``
or ``details["by_feature"][feature]["paired"]``). A measurement without a paired record
falls back to its own value, CI and n (no q-value): a delta metric is its own change.
"""

from __future__ import annotations

import re
from typing import Any

from audit.results import Measurement, MetricInfo, RuleResult, RunResult
from reports.views.common import fmt, fmt_value, metric_info

_WORST = re.compile(r"worst: ([^;()]+?)(?:;|\)|$)")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def fmt_q(q: float | None) -> str:
    """A q-value for display: ``q=0.003``, ``q=2.1e-05``, ``q —`` without one."""
    if q is None:
        return "q —"
    return f"q={q:.1e}" if 0 < q < 1e-3 else f"q={fmt(q, 3)}"


def _where(rule: RuleResult) -> tuple[str, str | None] | None:
    """``(feature, group)`` (or ``(feature, None)``) named by a group rule's ``worst: ...`` note."""
    hit = _WORST.search(rule.message)
    if hit is None:
        return None
    feat, _, group = hit.group(1).strip().partition("=")
    return feat, (group or None)


def _record(m: Measurement, where: tuple[str, str | None] | None) -> tuple[dict[str, Any] | None, str]:
    """The paired record that backs a finding on ``m`` (group record first when a group is named)."""
    d = m.details
    if where is not None:
        feat, group = where
        if group is not None:
            rec = ((d.get("paired_groups") or {}).get(feat) or {}).get(group)
            if isinstance(rec, dict):
                return rec, f"{feat}={group}"
        rec = ((d.get("by_feature") or {}).get(feat) or {}).get("paired")
        if isinstance(rec, dict):
            return rec, feat
    rec = d.get("paired")
    return (rec, "") if isinstance(rec, dict) else (None, "")


def evidence(
    m: Measurement | None,
    info: MetricInfo | None = None,
    *,
    where: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    """Delta, CI, q-value, n and significance of ``m`` (formatted), from its paired record or itself."""
    out: dict[str, Any] = {
        "kind": "none",
        "delta": "—",
        "ci": "",
        "q": fmt_q(None),
        "n": "",
        "significant": None,
        "scope": "",
        "text": "no measurement",
    }
    if m is None:
        return out
    rec, scope = _record(m, where)
    if rec is not None:
        delta, lo, hi, n = _num(rec.get("delta")), _num(rec.get("ci_low")), _num(rec.get("ci_high")), rec.get("n")
        q, sig, kind = _num(rec.get("q_value")), rec.get("significant"), "paired"
    else:
        gv = None
        if where is not None and where[1] is not None:
            gv = (m.groups.get(where[0]) or {}).get(where[1])
        src = gv if gv is not None else m
        delta, lo, hi, n = src.value, src.ci_low, src.ci_high, src.n
        scope = f"{where[0]}={where[1]}" if gv is not None and where is not None else ""
        q, sig, kind = None, None, "value"
    ci = f"[{fmt_value(lo, info, signed=kind == 'paired')}, {fmt_value(hi, info, signed=kind == 'paired')}]"
    ci = ci if lo is not None and hi is not None else ""
    n_text = f"n={n}" if isinstance(n, int) and n else ""
    # a paired record is a change; so is a measurement that is itself a change (``*_delta``)
    label = "Δ " if kind == "paired" or m.metric.endswith("_delta") and scope == "" else "value "
    parts = [f"{label}{fmt_value(delta, info, signed=kind == 'paired')}" + (f" {ci}" if ci else ""), fmt_q(q)]
    if n_text:
        parts.append(n_text)
    out.update(
        kind=kind,
        delta=fmt_value(delta, info, signed=kind == "paired"),
        ci=ci,
        q=fmt_q(q),
        q_value=q,
        n=n_text,
        significant=None if sig is None else bool(sig),
        scope=scope,
        text=" · ".join(parts) + (f" ({scope})" if scope else ""),
    )
    return out


def strength(status: str, ev: dict[str, Any]) -> str:
    """How strong the evidence behind a finding is, in words (the policy still decides)."""
    if status not in ("FAIL", "WARN") or ev["kind"] == "none":
        return ""
    if ev["significant"] is False:
        return "not significant"
    if ev["significant"] is None:
        return "no paired test"
    return "significant"


def measurement_index(result: RunResult) -> dict[tuple[str, str], Measurement]:
    """Every measurement of the run by (variant id, metric id)."""
    return {(v.id, m.id): m for v in result.all_variants() for m in v.measurements}


def rule_evidence(
    index: dict[tuple[str, str], Measurement], rule: RuleResult, cat: dict[str, MetricInfo]
) -> dict[str, Any]:
    """The evidence of the measurement a rule result judged (its group's, for a group rule)."""
    m = index.get((rule.variant, rule.metric))
    where = _where(rule)
    named = m.details.get("worst_group") if m is not None else None
    if where is None and isinstance(named, str) and "=" in named:  # a measurement of one group (its worst)
        feat, _, group = named.partition("=")
        where = (feat, group)
    ev = evidence(m, metric_info(cat, rule.metric), where=where)
    ev["strength"] = strength(rule.status, ev)
    return ev
