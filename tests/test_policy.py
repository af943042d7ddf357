from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from results_factory import m, run, variant

from audit.errors import ConfigError, ExitCode
from audit.policy import builtin_policies, evaluate_policy, load_policy, policy_from_text, policy_schema
from audit.results import SuiteError

RULES = """\
name: t
rules:
  - id: acc-drop
    metric: performance/*/accuracy
    comparison: delta_vs_baseline
    min: -0.02
  - id: worst-group
    metric: performance/*/accuracy
    aggregate: worst_group
    min: 0.7
    min_group_n: 30
    severity: warn
"""


def groups(a: float, b: float, tiny: float = 0.0) -> dict:
    return {"gender": {"f": (a, 100), "m": (b, 100), "x": (tiny, 5)}}


def test_pass_fail_warn_and_max_compliant_sparsity() -> None:
    pol = policy_from_text(RULES)
    res = run(
        [m("accuracy", 0.90, groups=groups(0.9, 0.9))],
        [
            variant("v30", "magnitude", 0.3, [m("accuracy", 0.89, groups=groups(0.88, 0.9))]),
            variant("v50", "magnitude", 0.5, [m("accuracy", 0.885, groups=groups(0.65, 0.9))]),
            variant("v70", "magnitude", 0.7, [m("accuracy", 0.80, groups=groups(0.75, 0.85))]),
            variant("v90", "magnitude", 0.9, [m("accuracy", 0.89, groups=groups(0.9, 0.9))]),
        ],
    )
    v = evaluate_policy(pol, res)
    by = {(r.rule, r.variant): r for r in v.rules}
    assert by[("acc-drop", "v30")].status == "PASS"
    assert by[("acc-drop", "v30")].compared == pytest.approx(-0.01)
    assert by[("acc-drop", "v70")].status == "FAIL"
    assert "violates >= -0.02" in by[("acc-drop", "v70")].message
    # group of n=5 ignored thanks to min_group_n, so v30's worst group is f=0.88
    assert by[("worst-group", "v30")].observed == pytest.approx(0.88)
    assert by[("worst-group", "v50")].status == "WARN" and "gender=f" in by[("worst-group", "v50")].message
    assert ("acc-drop", "dense") not in by  # delta rules never judge the baseline
    assert v.status == "FAIL" and v.exit_code == ExitCode.FAILED
    # v90 passes but v70 fails: the compliant envelope stops at 0.5
    assert v.max_compliant_sparsity == {"magnitude": 0.5}


def test_missing_metric_and_crashed_suite_are_errors_that_fail_the_gate() -> None:
    pol = policy_from_text(RULES)
    res = run(
        [m("accuracy", 0.9)],
        [
            variant("v1", "magnitude", 0.5, []),
            variant(
                "v2",
                "magnitude",
                0.6,
                [],
                errors=[SuiteError(suite="performance", error_type="RuntimeError", message="boom")],
            ),
        ],
    )
    v = evaluate_policy(pol, res)
    st = {(r.rule, r.variant): r for r in v.rules}
    assert st[("acc-drop", "v1")].status == "ERROR" and "missing" in st[("acc-drop", "v1")].message
    assert st[("acc-drop", "v2")].status == "ERROR" and "crashed" in st[("acc-drop", "v2")].message
    assert v.status == "ERROR" and v.exit_code == ExitCode.FAILED
    lenient = policy_from_text(RULES.replace("name: t", "name: t\nfail_on_error: false"))
    assert evaluate_policy(lenient, res).exit_code == ExitCode.OK


def test_rules_for_suites_not_run_are_skipped_and_nothing_evaluated_is_exit_5() -> None:
    pol = policy_from_text("name: p\nrules:\n  - {id: r, metric: bias/*/accuracy, min: 0.5}\n")
    v = evaluate_policy(pol, run([m("accuracy", 0.9)], [variant("v", "magnitude", 0.5, [m("accuracy", 0.9)])]))
    assert [r.status for r in v.rules] == ["SKIP"]
    assert v.status == "NO_RESULTS" and v.exit_code == ExitCode.NO_RESULTS


def test_difference_ratio_and_ci_use() -> None:
    pol = policy_from_text(
        "name: p\nrules:\n"
        "  - {id: diff, metric: performance/*/accuracy, aggregate: difference, max: 0.1}\n"
        "  - {id: ratio, metric: performance/*/accuracy, aggregate: ratio, min: 0.9}\n"
        "  - {id: lo, metric: performance/*/accuracy, use: ci_lower, min: 0.85}\n"
    )
    res = run(
        [m("accuracy", 0.9)],
        [
            variant(
                "v",
                "magnitude",
                0.5,
                [m("accuracy", 0.88, ci=(0.84, 0.92), groups={"g": {"a": (0.9, 50), "b": (0.75, 50)}})],
            )
        ],
    )
    r = {x.rule: x for x in evaluate_policy(pol, res).rules}
    assert r["diff"].compared == pytest.approx(0.15) and r["diff"].status == "FAIL"
    assert r["ratio"].compared == pytest.approx(0.75 / 0.9) and r["ratio"].status == "FAIL"
    assert r["lo"].compared == pytest.approx(0.84) and r["lo"].status == "FAIL"


def test_bound_against_metric_direction_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        policy_from_text("name: p\nrules:\n  - id: r\n    metric: performance/*/accuracy\n    max: 0.9\n")
    assert "higher-is-better, so a max bound points the wrong way" in exc.value.message
    assert exc.value.line == 3 and exc.value.hint == "use min: (the lowest acceptable value)"
    with pytest.raises(ConfigError, match="lower-is-better"):
        policy_from_text(
            "name: p\nrules:\n  - {id: r, metric: performance/*/accuracy, aggregate: difference, min: 0.1}\n"
        )


def test_waivers_turn_failures_into_warnings_until_they_expire() -> None:
    text = RULES + (
        "waivers:\n  - {rule: acc-drop, variants: ['v7*'], approver: jane, reason: known, expires: 2030-01-01}\n"
    )
    res = run([m("accuracy", 0.9)], [variant("v70", "magnitude", 0.7, [m("accuracy", 0.8)])])
    v = evaluate_policy(policy_from_text(text), res, today=dt.date(2029, 1, 1))
    r = next(x for x in v.rules if x.rule == "acc-drop")
    assert r.status == "WARN" and r.waived_by == "jane" and v.exit_code == ExitCode.OK
    expired = evaluate_policy(policy_from_text(text), res, today=dt.date(2030, 1, 2))
    assert expired.status == "FAIL" and any("expired" in n for n in expired.notes)
    with pytest.raises(ConfigError, match="waiver names unknown rule"):
        policy_from_text(text.replace("rule: acc-drop, variants", "rule: nope, variants"))


def test_shipped_policies_load_and_schema_is_published() -> None:
    for name in builtin_policies():
        pol, label = load_policy(name)
        assert label == name and pol.rules
        assert all(r.rationale.strip() for r in pol.rules)
    schema = policy_schema()
    json.dumps(schema)
    assert schema["title"] == "prune-audit policy" and "rules" in schema["required"]


def test_policy_errors_carry_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("name: p\nrules:\n  - id: r\n    metric: performance/*/accuracy\n    min: 0.5\n    severty: warn\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(str(p))
    assert exc.value.line == 6 and exc.value.hint == "did you mean 'severity'?"
    with pytest.raises(ConfigError, match="unknown policy 'nonesuch'"):
        load_policy("nonesuch")
