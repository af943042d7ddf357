"""The SARIF reporter: schema-valid against the OASIS SARIF 2.1.0 schema, one result per finding,
levels, locations at the rule's line in the policy file, and fingerprints stable across runs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest
from results_factory import m, run, variant

from audit.config import ReportConfig
from audit.policy import evaluate_policy, load_policy
from audit.results import RunResult
from reports.sarif import FINGERPRINT_KEY, render
from reports.writer import write_reports

SCHEMA = Path(__file__).resolve().parents[1] / "reports" / "schemas" / "sarif-schema-2.1.0.json"

POLICY = """\
name: sarif-fixture
description: One rule of each outcome.
fail_on_error: {fail_on_error}
rules:
  - id: accuracy-floor
    metric: performance/*/accuracy
    min: 0.85
    rationale: Accuracy stays above 0.85.

  # a warning rule
  - id: accuracy-target
    metric: performance/*/accuracy
    min: 0.89
    severity: warn
    rationale: We would like 0.89.
  - id: f1-floor
    metric: performance/*/macro_f1
    min: 0.5
    rationale: Macro F1 must be measured.
  - id: toxicity
    metric: toxicity/*/toxic_rate
    max: 0.1
    rationale: The toxicity suite does not run here, so this is SKIP.
"""


def _judged(tmp_path: Path, acc: tuple[float, float] = (0.88, 0.80), *, fail_on_error: bool = True) -> RunResult:
    """v1 passes the floor and warns, v2 fails the floor and warns; macro_f1 is missing (ERROR) on both."""
    path = tmp_path / "policies" / "audit-policy.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(POLICY.format(fail_on_error=str(fail_on_error).lower()), encoding="utf-8")
    res = run(
        [m("accuracy", 0.91)],
        [
            variant("magnitude-s0.50-seed0", "magnitude", 0.5, [m("accuracy", acc[0])]),
            variant("magnitude-s0.70-seed0", "magnitude", 0.7, [m("accuracy", acc[1])]),
        ],
    )
    policy, label = load_policy(str(path))
    res.verdict = evaluate_policy(
        policy, res, policy_label=label, today=dt.date(2026, 1, 1), now=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    )
    return res


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the working directory of the run is the "repository root"
    return tmp_path


def _results(res: RunResult) -> list[dict]:
    return json.loads(render(res))["runs"][0]["results"]


def test_output_is_valid_against_the_oasis_sarif_schema_offline(in_tmp: Path) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema.Draft4Validator.check_schema(schema)
    assert "http" not in json.dumps([v for k, v in _refs(schema)])  # every $ref is local: nothing to fetch
    validator = jsonschema.Draft4Validator(schema)
    res = _judged(in_tmp)
    assert {r.status for r in res.verdict.rules} == {"PASS", "WARN", "FAIL", "ERROR", "SKIP"}
    log = json.loads(render(res))
    validator.validate(log)
    log["runs"][0]["results"][0]["level"] = "fatal"  # the validator does reject a bad log
    assert not validator.is_valid(log)


def _refs(node: object) -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [(k, v) for k, v in node.items() if k == "$ref"] + [x for v in node.values() for x in _refs(v)]
    if isinstance(node, list):
        return [x for v in node for x in _refs(v)]
    return []


def test_one_result_per_failing_warning_or_erroring_rule_and_variant_with_its_level(in_tmp: Path) -> None:
    got = {(r["ruleId"], r["properties"]["variant"], r["level"]) for r in _results(_judged(in_tmp))}
    assert got == {
        ("accuracy-floor", "magnitude-s0.70-seed0", "error"),
        ("accuracy-target", "magnitude-s0.50-seed0", "warning"),
        ("accuracy-target", "magnitude-s0.70-seed0", "warning"),
        ("f1-floor", "magnitude-s0.50-seed0", "error"),
        ("f1-floor", "magnitude-s0.70-seed0", "error"),
    }
    assert len(_results(_judged(in_tmp))) == 5


def test_an_error_is_distinct_and_only_warns_when_errors_do_not_fail_the_gate(in_tmp: Path) -> None:
    errors = [r for r in _results(_judged(in_tmp, fail_on_error=False)) if r["ruleId"] == "f1-floor"]
    assert [r["level"] for r in errors] == ["warning", "warning"]
    assert all(r["message"]["text"].startswith("f1-floor could not be evaluated") for r in errors)
    assert all(r["properties"]["status"] == "ERROR" for r in errors)


def test_rules_carry_rationale_as_help_and_severity_as_default_level(in_tmp: Path) -> None:
    log = json.loads(render(_judged(in_tmp)))
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["accuracy-floor", "accuracy-target", "f1-floor", "toxicity"]
    assert rules[1]["help"]["text"] == "We would like 0.89."
    assert [r["defaultConfiguration"]["level"] for r in rules] == ["error", "warning", "error", "error"]
    for r in log["runs"][0]["results"]:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]


def test_location_is_the_policy_file_and_the_rules_line(in_tmp: Path) -> None:
    results = _results(_judged(in_tmp))
    lines = (in_tmp / "policies" / "audit-policy.yaml").read_text(encoding="utf-8").splitlines()
    expected = {line.split("id:")[1].strip(): n for n, line in enumerate(lines, 1) if line.startswith("  - id:")}
    for r in results:
        physical = r["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"] == {"uri": "policies/audit-policy.yaml", "uriBaseId": "%SRCROOT%"}
        assert physical["region"]["startLine"] == expected[r["ruleId"]]
    assert {r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in results} == {5, 11, 16}


def test_a_policy_outside_the_working_directory_is_an_absolute_file_uri(tmp_path, monkeypatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loc = _results(_judged(tmp_path))[0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "file://" + (tmp_path / "policies" / "audit-policy.yaml").as_posix()}


def test_fingerprints_are_stable_across_runs_and_distinct_per_variant(in_tmp: Path) -> None:
    def prints(res: RunResult) -> dict[tuple[str, str], str]:
        return {
            (r["ruleId"], r["properties"]["variant"]): r["partialFingerprints"][FINGERPRINT_KEY] for r in _results(res)
        }

    first = prints(_judged(in_tmp, (0.88, 0.80)))
    second = prints(_judged(in_tmp, (0.87, 0.70)))  # other measured values, the same findings
    assert second == first
    assert first[("accuracy-target", "magnitude-s0.50-seed0")] != first[("accuracy-target", "magnitude-s0.70-seed0")]
    assert len(set(first.values())) == len(first)


def test_the_sarif_reporter_is_registered_writes_results_sarif_and_is_a_valid_format(in_tmp: Path) -> None:
    files = write_reports(_judged(in_tmp), in_tmp / "out", ["sarif"])
    assert files["sarif"] == in_tmp / "out" / "results.sarif"
    assert json.loads(files["sarif"].read_text(encoding="utf-8"))["version"] == "2.1.0"
    assert ReportConfig(formats=["sarif", "junit", "markdown"]).formats[0] == "sarif"


def test_output_is_deterministic(in_tmp: Path) -> None:
    assert render(_judged(in_tmp)) == render(_judged(in_tmp))


def test_a_builtin_policy_is_located_inside_the_package(in_tmp: Path) -> None:
    res = _judged(in_tmp)
    policy, label = load_policy("default")
    res.verdict = evaluate_policy(policy, res, policy_label=label, today=dt.date(2026, 1, 1))
    log = json.loads(render(res))
    run_ = log["runs"][0]
    assert run_["results"], "the default policy's accuracy-drop rule fails this run"
    for r in run_["results"]:
        loc = r["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"] == {"uri": "policies/default.yaml", "uriBaseId": "PRUNE_AUDIT"}
        assert loc["region"]["startLine"] == policy.source.lines[r["ruleId"]]
    assert "PRUNE_AUDIT" in run_["originalUriBaseIds"]


def test_control_and_bidi_characters_from_data_are_shown_as_visible_stand_ins(in_tmp: Path) -> None:
    from audit.results import SuiteError

    res = _judged(in_tmp)
    res.variants[0].measurements = []
    res.variants[0].errors = [SuiteError(suite="performance", error_type="RuntimeError", message="\x1b[31mred\u202e")]
    policy, label = load_policy(str(in_tmp / "policies" / "audit-policy.yaml"))
    res.verdict = evaluate_policy(policy, res, policy_label=label, today=dt.date(2026, 1, 1))
    text = render(res)
    assert "\\u001b" not in text and "\u202e" not in text
    crashed = [
        r for r in json.loads(text)["runs"][0]["results"] if "\u241b[31mred\u27e8U+202E\u27e9" in r["message"]["text"]
    ]
    assert crashed and all(r["properties"]["status"] == "ERROR" for r in crashed)
