"""The limitations section: what this run does not cover."""

from __future__ import annotations

import re

from audit.policy import skipped_rules
from audit.registry import STAGES
from audit.results import RunResult
from reports.views.common import clip
from reports.views.suite_text import model_kind, registered_suites

_STALE_SKIP = re.compile(r"^rule \S+ \(.*\) skipped: ")


def limitations(result: RunResult) -> list[str]:
    """What this run does not cover: stored limitations, skipped rules, suites not run, errors."""
    out: dict[str, None] = {}
    for line in result.limitations:
        if _STALE_SKIP.match(line):  # written by older runners; skipped rules now come from the verdict
            continue
        out.setdefault(line, None)
    for d in result.datasets:
        if d.truncation_note:
            out.setdefault(d.truncation_note, None)
    suites = {m.suite for v in result.all_variants() for m in v.measurements}
    suites |= {s.get("name") for s in result.config.get("suites", []) if isinstance(s, dict)}  # type: ignore[misc]
    for t in registered_suites(model_kind(result)):
        if t.not_run and t.name not in suites:
            out.setdefault(t.not_run, None)
    for stage in STAGES:  # a stage runs on the pruned variants: not run when none went through it
        if stage.not_run and result.variants and not any(stage.ran_on(v) for v in result.variants):
            out.setdefault(stage.not_run, None)
    if not any(m.groups for v in result.all_variants() for m in v.measurements):
        out.setdefault("No per-group values were measured: group disparities are not covered.", None)
    for v in result.all_variants():
        for e in v.errors:
            out.setdefault(f"{v.id}: {e.suite} failed ({e.error_type}: {clip(e.message, 160)})", None)
    if result.verdict is not None:
        for line in skipped_rules(result.verdict):
            out.setdefault(line, None)
    return list(out)
