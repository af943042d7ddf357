"""Waivers and the verdict status, as functions of the judged rule results (audit/policy_waivers.py)."""

from __future__ import annotations

import datetime as dt

from audit.errors import ExitCode
from audit.policy import Waiver
from audit.policy_waivers import apply_waivers, status_counts, verdict_status
from audit.results import RuleResult

TODAY = dt.date(2026, 1, 2)


def _rr(status: str, variant: str = "magnitude-s0.5", rule: str = "acc", metric: str = "performance/x/accuracy"):
    return RuleResult(rule=rule, variant=variant, metric=metric, status=status, severity="fail", message="m")


def _w(approver: str, expires: dt.date = dt.date(2030, 1, 1), **kw: object) -> Waiver:
    return Waiver(rule=kw.pop("rule", "acc"), approver=approver, reason="known", expires=expires, **kw)  # type: ignore[arg-type]


def test_the_first_matching_active_waiver_waives_a_failure_and_the_rest_are_noted() -> None:
    expired = _w("old", expires=dt.date(2026, 1, 1))
    other_variant = _w("ann", variants=["wanda-*"])
    first, second = _w("jane"), _w("joe")
    results = [_rr("FAIL"), _rr("PASS"), _rr("ERROR", variant="wanda-s0.5")]
    waived = apply_waivers(results, [expired, other_variant, first, second], TODAY)
    assert [r.status for r in waived.results] == ["WARN", "PASS", "WARN"]
    assert waived.results[0].waived_by == "jane"
    assert waived.results[0].message == "m [waived by jane until 2030-01-01: known]"
    assert waived.results[2].waived_by == "ann"
    assert results[0].status == "FAIL"  # the judged results are not modified in place
    assert waived.used == {id(first), id(other_variant)}
    assert waived.notes == [
        "waiver for rule 'acc' by old expired on 2026-01-01",
        "waiver for rule 'acc' by joe matched no failure",
    ]


def test_a_waiver_covers_only_its_rule_and_metric() -> None:
    waived = apply_waivers(
        [_rr("FAIL", rule="other"), _rr("FAIL", metric="bias/x/fpr")],
        [_w("jane", metric="performance/*")],
        TODAY,
    )
    assert [r.status for r in waived.results] == ["FAIL", "FAIL"]
    assert waived.used == set()


def test_verdict_status_takes_the_worst_result() -> None:
    def status(*statuses: str, fail_on_error: bool = True) -> tuple[str, ExitCode]:
        return verdict_status(status_counts([_rr(s) for s in statuses]), fail_on_error=fail_on_error)

    assert status() == ("NO_RESULTS", ExitCode.NO_RESULTS)
    assert status("SKIP") == ("NO_RESULTS", ExitCode.NO_RESULTS)
    assert status("PASS", "WARN", "ERROR", "FAIL") == ("FAIL", ExitCode.FAILED)
    assert status("PASS", "ERROR") == ("ERROR", ExitCode.FAILED)
    assert status("PASS", "ERROR", fail_on_error=False) == ("ERROR", ExitCode.OK)
    assert status("PASS", "WARN", "SKIP") == ("WARN", ExitCode.OK)
    assert status("PASS") == ("PASS", ExitCode.OK)
    assert status_counts([_rr("PASS"), _rr("SKIP"), _rr("SKIP")]) == {
        "PASS": 1,
        "WARN": 0,
        "FAIL": 0,
        "ERROR": 0,
        "SKIP": 2,
    }
