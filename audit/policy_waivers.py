"""Waivers and the verdict's status: what a policy does with the rule results once they are judged.

A waiver turns a FAIL or ERROR of its rule, on a matching variant and metric, into a WARN
that names its approver, until it expires. The verdict's status is then the worst of the
(waived) results: FAIL, ERROR (a failure unless ``fail_on_error: false``), WARN, PASS, or
NO_RESULTS when no rule judged anything. Torch-free, like :mod:`audit.policy`.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from audit.errors import ExitCode
from audit.results import RuleResult, WaiverInfo

if TYPE_CHECKING:
    from audit.policy import Waiver

STATUSES = ("PASS", "WARN", "FAIL", "ERROR", "SKIP")


@dataclass
class Waived:
    """Rule results after the waivers, with what the waivers did."""

    results: list[RuleResult]
    notes: list[str] = field(default_factory=list)
    """Expired waivers, and active ones that matched no failure."""
    used: set[int] = field(default_factory=set)
    """``id()`` of each waiver that waived a result."""


def _matches(w: Waiver, rr: RuleResult) -> bool:
    return (
        w.rule == rr.rule
        and fnmatch.fnmatchcase(rr.metric, w.metric)
        and any(fnmatch.fnmatchcase(rr.variant, v) for v in w.variants)
    )


def apply_waivers(results: list[RuleResult], waivers: Sequence[Waiver], today: _dt.date) -> Waived:
    """Turn each FAIL/ERROR that an active waiver covers into a WARN (the first matching waiver wins)."""
    notes = [f"waiver for rule {w.rule!r} by {w.approver} expired on {w.expires}" for w in waivers if w.expires < today]
    active = [w for w in waivers if w.expires >= today]
    used: set[int] = set()
    out = list(results)
    for i, rr in enumerate(out):
        if rr.status not in ("FAIL", "ERROR"):
            continue
        w = next((w for w in active if _matches(w, rr)), None)
        if w is None:
            continue
        used.add(id(w))
        out[i] = rr.model_copy(
            update={
                "status": "WARN",
                "waived_by": w.approver,
                "message": f"{rr.message} [waived by {w.approver} until {w.expires}: {w.reason}]",
            }
        )
    notes += [f"waiver for rule {w.rule!r} by {w.approver} matched no failure" for w in active if id(w) not in used]
    return Waived(out, notes, used)


def waiver_info(w: Waiver, today: _dt.date, used: bool) -> WaiverInfo:
    """A waiver as the verdict records it."""
    return WaiverInfo(
        rule=w.rule,
        variants=list(w.variants),
        metric=w.metric,
        approver=w.approver,
        reason=w.reason,
        expires=w.expires.isoformat(),
        active=w.expires >= today,
        used=used,
    )


def status_counts(results: Sequence[RuleResult]) -> dict[str, int]:
    """Results per status (every status present, zeros included)."""
    counts = Counter(r.status for r in results)
    return {k: int(counts.get(k, 0)) for k in STATUSES}


def verdict_status(counts: dict[str, int], *, fail_on_error: bool) -> tuple[str, ExitCode]:
    """The overall status and exit code of results with these counts."""
    evaluated = sum(counts[s] for s in ("PASS", "WARN", "FAIL", "ERROR"))
    if evaluated == 0:
        return "NO_RESULTS", ExitCode.NO_RESULTS
    if counts["FAIL"]:
        return "FAIL", ExitCode.FAILED
    if counts["ERROR"]:
        return "ERROR", ExitCode.FAILED if fail_on_error else ExitCode.OK
    if counts["WARN"]:
        return "WARN", ExitCode.OK
    return "PASS", ExitCode.OK
