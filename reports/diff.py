"""Markdown (PR comment) rendering of a :class:`audit.diff.DiffResult`; renders only, computes nothing."""

from __future__ import annotations

from audit.diff import DiffResult, RuleChange
from reports.markdown import md_escape

MAX_CHARS = 60_000
NOTE = (
    "_The two audits are independent runs: changes are descriptive, not a paired test; "
    '"CIs do not overlap" is a descriptive mark only._'
)


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _ci(ci: list) -> str:
    return "—" if None in ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _rules(title: str, rows: list[RuleChange]) -> list[str]:
    if not rows:
        return []
    out = [f"### {title}", "", "| rule | variant | metric | old | new | message |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            "| "
            + " | ".join(md_escape(x) for x in (r.rule, r.variant, r.metric, r.old or "—", r.new or "—", r.message))
            + " |"
        )
    return [*out, ""]


def _metric_rows(d: DiffResult, limit: int | None) -> list[str]:
    out = ["| variant | metric | old | new | change | old CI | new CI | |", "|---|---|---|---|---|---|---|---|"]
    rows = d.metric_changes if limit is None else [c for c in d.metric_changes if c.delta][:limit]
    for c in rows:
        mark = "CIs do not overlap" if c.cis_disjoint else ""
        out.append(
            "| "
            + " | ".join(
                md_escape(x)
                for x in (c.variant, c.metric, _f(c.old), _f(c.new), _f(c.delta), _ci(c.old_ci), _ci(c.new_ci), mark)
            )
            + " |"
        )
    return out


def render_markdown(d: DiffResult, *, top: int = 10) -> str:
    lines = [f"## prune-audit diff: {d.old_verdict} → {d.new_verdict}", ""]
    if not d.same_data:
        lines += ["**Warning: the two runs used different data; comparisons are across different datasets.**", ""]
    lines += [f"- {md_escape(x)}" for x in (*d.policy_change, *d.model_change)]
    if d.added_variants:
        lines.append("- added variants: " + ", ".join(md_escape(v) for v in d.added_variants))
    if d.removed_variants:
        lines.append("- removed variants: " + ", ".join(md_escape(v) for v in d.removed_variants))
    lines.append(f"- newly failing: {len(d.newly_failing)}, recovered: {len(d.recovered)}")
    lines.append("")
    lines += _rules("Newly failing", d.newly_failing) + _rules("Recovered", d.recovered)
    lines += _rules("Other rule changes", d.other_rule_changes)
    if d.sparsity_changes:
        lines += ["### Max compliant sparsity", "", "| method | old | new |", "|---|---|---|"]
        lines += [f"| {md_escape(s.method)} | {_f(s.old)} | {_f(s.new)} |" for s in d.sparsity_changes] + [""]
    if d.metric_changes:
        changed = any(c.delta for c in d.metric_changes)
        top_rows = _metric_rows(d, top) if changed else ["_No metric value changed._"]
        lines += ["### Largest metric changes", "", *top_rows, ""]
        lines += ["<details><summary>All metric changes</summary>", "", *_metric_rows(d, None), "", "</details>", ""]
    lines += [NOTE, ""]
    text = "\n".join(lines)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit("\n", 1)[0] + "\n\n_(truncated to fit a GitHub comment)_\n"
    return text
