"""Markdown (PR comment) and HTML renderings of a :class:`audit.diff.DiffResult`; renders only, computes nothing.

The Markdown goes into a pull-request comment, which GitHub caps at 65,536 characters:
every list is cut at ``max_rows`` rows with a "… N more" line (the full lists are in
``--json`` and ``--html``), and the whole text is cut at :data:`MAX_CHARS` as a last
resort. Every value from the results files goes through :func:`reports.markdown.md_escape`
(Markdown) or Jinja's autoescape (HTML, :func:`reports.html.environment`).
"""

from __future__ import annotations

from typing import Any

from audit.diff import DiffResult, ModelChange, PolicyChange, PolicyRuleChange, RuleChange
from reports.html import environment
from reports.markdown import md_escape

MAX_CHARS = 60_000
MAX_ROWS = 50
NOTE = (
    "The two audits are independent runs: changes are descriptive, not a paired test; "
    '"CIs do not overlap" is a descriptive mark only.'
)
DATA_NOTE = "a dataset changed between the runs: a metric change on it may come from the data, not the model"


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def fmt_ci(ci: list) -> str:
    return "—" if None in ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def short(digest: str | None) -> str:
    return "—" if not digest else f"{digest[:8]}…"


def _value(v: Any) -> str:
    return "—" if v is None else str(v)


def rule_change_text(r: PolicyRuleChange) -> str:
    if r.change != "changed":
        return f"rule {r.rule} {r.change}"
    return f"rule {r.rule}: " + "; ".join(f"{k} {_value(a)} → {_value(b)}" for k, (a, b) in r.fields.items())


def policy_label(p: PolicyChange) -> str:
    """``policy default (sha256 ab12… → cd34…)``, or ``policy a → b (...)`` when its name changed."""
    name = p.new_name if p.old_name == p.new_name else f"{p.old_name} → {p.new_name}"
    digest = "same content" if p.old_digest == p.new_digest else f"sha256 {short(p.old_digest)} → {short(p.new_digest)}"
    label = f"policy {name} ({digest})"
    if p.old_digest != p.new_digest and not p.rules:
        label += ": rules as recorded are equal" if p.rules_recorded else ": rules not recorded in both files"
    return label


def model_label(c: ModelChange) -> str:
    parts = [f"model fingerprint sha256 {short(c.old_fingerprint)} → {short(c.new_fingerprint)}"]
    if c.old_fingerprint == c.new_fingerprint:
        parts = ["model fingerprint unchanged"]
    if c.old_source != c.new_source:
        parts.append(f"source {c.old_source} → {c.new_source}")
    if c.old_revision != c.new_revision:
        parts.append(f"revision {_value(c.old_revision)} → {_value(c.new_revision)}")
    return "; ".join(parts)


def _more(n: int, what: str) -> list[str]:
    return [f"_… {n} more {what} (the full list is in `--json` and `--html`)_"] if n > 0 else []


def _table(header: list[str], rows: list[list[str]], cap: int | None, what: str) -> list[str]:
    shown = rows if cap is None else rows[:cap]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(md_escape(x) for x in r) + " |" for r in shown]
    more = _more(len(rows) - len(shown), what)
    return [*out, *([""] + more if more else [])]  # a blank line ends a GFM table


def _rules(title: str, rows: list[RuleChange], cap: int) -> list[str]:
    if not rows:
        return []
    cells = [[r.rule, r.variant, r.metric, r.old or "—", r.new or "—", r.message] for r in rows]
    header = ["rule", "variant", "metric", "old", "new", "message"]
    return [f"### {title}", "", *_table(header, cells, cap, "rule changes"), ""]


def _bullets(items: list[str], cap: int, what: str) -> list[str]:
    return [f"- {md_escape(x)}" for x in items[:cap]] + _more(len(items) - cap, what)


def _metric_cells(d: DiffResult, only_changed: bool) -> list[list[str]]:
    rows = [c for c in d.metric_changes if c.changed] if only_changed else d.metric_changes
    return [
        [
            c.variant,
            c.metric,
            fmt(c.old),
            fmt(c.new),
            fmt(c.delta),
            fmt_ci(c.old_ci),
            fmt_ci(c.new_ci),
            " · ".join(m for m, on in (("CIs do not overlap", c.cis_disjoint), ("data changed", c.data_changed)) if on),
        ]
        for c in rows
    ]


def context_lines(d: DiffResult) -> list[str]:
    """The plain-text lines about what changed besides the rules (shared by Markdown and HTML)."""
    lines = []
    if d.policy_change is not None:
        lines.append(policy_label(d.policy_change))
        lines += [rule_change_text(r) for r in d.policy_change.rules]
    if d.model_change is not None:
        lines.append(model_label(d.model_change))
    return lines


def dataset_text(c: Any) -> str:
    if c.change != "changed":
        return f"dataset {c.id} {c.change}"
    parts = []
    if c.old_fingerprint != c.new_fingerprint:
        parts.append(f"fingerprint sha256 {short(c.old_fingerprint)} → {short(c.new_fingerprint)}")
    if c.old_n != c.new_n:
        parts.append(f"rows {c.old_n} → {c.new_n}")
    return f"dataset {c.id}: " + ", ".join(parts)


def render_markdown(d: DiffResult, *, top: int = 10, max_rows: int = MAX_ROWS) -> str:
    lines = [f"## prune-audit diff: {md_escape(d.old_verdict)} → {md_escape(d.new_verdict)}", ""]
    if not d.same_data:
        lines += [f"**Warning: {DATA_NOTE} (metrics on it are marked _data changed_).**", ""]
    lines += _bullets(context_lines(d), max_rows, "policy and model changes")
    lines += _bullets([dataset_text(c) for c in d.dataset_changes], max_rows, "dataset changes")
    for title, vs in (("added variants", d.added_variants), ("removed variants", d.removed_variants)):
        if vs:
            more = len(vs) - max_rows
            lines.append(
                f"- {title}: " + ", ".join(md_escape(v) for v in vs[:max_rows]) + (f" … {more} more" * (more > 0))
            )
    lines.append(f"- newly failing: {len(d.newly_failing)}, recovered: {len(d.recovered)}")
    lines.append("")
    lines += _rules("Newly failing", d.newly_failing, max_rows) + _rules("Recovered", d.recovered, max_rows)
    lines += _rules("Other rule changes", d.other_rule_changes, max_rows)
    if d.sparsity_changes:
        cells = [[s.method, fmt(s.old), fmt(s.new)] for s in d.sparsity_changes]
        lines += ["### Max compliant sparsity", "", *_table(["method", "old", "new"], cells, max_rows, "methods"), ""]
    if d.metric_changes:
        header = ["variant", "metric", "old", "new", "change", "old CI", "new CI", ""]
        changed = _metric_cells(d, True)
        same = len(d.metric_changes) - len(changed)
        lines += ["### Largest metric changes", ""]
        if not changed:
            lines += [f"_No metric value or CI changed ({same} compared)._", ""]
        else:
            lines += [*_table(header, changed[:top], None, ""), ""]
            if len(changed) > top:
                every = _table(header, changed, max_rows, "changed metrics")
                lines += [f"<details><summary>All {len(changed)} changed metrics</summary>", "", *every, ""]
                lines += ["</details>", ""]
            lines += [f"_{same} other metrics compared have the same value and CI._", ""]
    lines += [f"_{NOTE}_", ""]
    text = "\n".join(lines)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit("\n", 1)[0] + "\n\n_(truncated to fit a GitHub comment; see `--json`)_\n"
    return text


def render_html(d: DiffResult) -> str:
    """A standalone HTML page (inline CSS, no scripts, a CSP that forbids every request) with every list in full."""
    return (
        environment()
        .get_template("diff.html.j2")
        .render(
            d=d,
            context=context_lines(d),
            datasets=[dataset_text(c) for c in d.dataset_changes],
            changed_metrics=_metric_cells(d, True),
            all_metrics=_metric_cells(d, False),
            fmt=fmt,
            note=NOTE,
            data_note=DATA_NOTE,
        )
    )
