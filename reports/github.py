"""GitHub Actions integration: workflow-command annotations and the job step summary.

Under GitHub Actions (``GITHUB_ACTIONS=true``) ``run`` and ``check`` print one
``::error`` annotation per FAIL or ERROR and one ``::warning`` per WARN, and append the
Markdown summary to the file named by ``$GITHUB_STEP_SUMMARY`` when it is set.
Values are escaped as the runner expects (``%``, CR, LF; and ``:`` ``,`` in properties)
so that a hostile string cannot inject a second workflow command, and control
characters (ANSI escape sequences in group values, say) are shown as visible stand-ins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from audit.results import RunResult
from audit.textsafe import visible
from reports.views import sorted_rules

MAX_ANNOTATIONS = 50
"""GitHub shows at most 50 annotations per job; the rest are summarised in one notice."""


def escape_data(text: str) -> str:
    # escaped first (CR and LF survive as %0D/%0A), then the remaining controls made visible
    return visible(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(result: RunResult, *, limit: int = MAX_ANNOTATIONS) -> list[str]:
    """Workflow commands for the verdict's FAIL, ERROR and WARN results (worst first)."""
    verdict = result.verdict
    if verdict is None:
        return []
    findings = [r for r in sorted_rules(verdict.rules) if r.status in ("FAIL", "ERROR", "WARN")]
    lines = []
    for r in findings[:limit]:
        level = "warning" if r.status == "WARN" else "error"
        title = escape_property(f"prune-audit {r.status} {r.rule} [{r.variant}]")
        body = f"{r.metric}: {r.message}"
        if r.rationale:
            body += f"\nRationale: {' '.join(r.rationale.split())}"
        lines.append(f"::{level} title={title}::{escape_data(body)}")
    if len(findings) > limit:
        lines.append(f"::notice title=prune-audit::{len(findings) - limit} more findings in the report")
    return lines


def is_github_actions(env: Mapping[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get("GITHUB_ACTIONS") == "true"


def append_step_summary(result: RunResult, env: Mapping[str, str] | None = None) -> Path | None:
    """Append the Markdown summary to ``$GITHUB_STEP_SUMMARY`` (the runner's protocol is append)."""
    path = (env if env is not None else os.environ).get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    from reports.markdown import render

    with open(path, "a", encoding="utf-8") as fh:
        fh.write(render(result) + "\n")
    return Path(path)
