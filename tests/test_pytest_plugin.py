"""The pytest plugin (audit/pytest_plugin.py), driven through pytester.

Inner runs load the plugin with ``-p audit.pytest_plugin`` and entry-point autoloading off, so they
do the same whether or not the installed prune-audit already registers the ``pytest11`` entry point;
one subprocess test installs a stand-in distribution with that entry point to check the name users
disable it by (``-p no:prune_audit``).
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from results_factory import m, run, variant

from audit.policy import evaluate_policy, policy_from_text

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ["-p", "audit.pytest_plugin"]

POLICY = """\
name: plug
rules:
  - id: accuracy-floor
    metric: performance/*/accuracy
    min: 0.8
  - id: accuracy-drop
    metric: performance/*/accuracy_delta
    min: -0.03
  - id: accuracy-drop-warn
    metric: performance/*/accuracy_delta
    min: -0.005
    severity: warn
  - id: f1-floor
    metric: performance/*/macro_f1
    min: 0.5
  - id: ood-drop
    metric: ood/*/accuracy_delta
    min: -0.08
"""
# judged: s0.30 PASS floor/drop/f1, WARN drop-warn; s0.50 PASS floor, FAIL drop, WARN drop-warn,
# ERROR f1-floor (metric missing); ood-drop SKIP (the ood suite did not run)


def _results() -> str:
    res = run(
        [m("accuracy", 0.9)],
        [
            variant(
                "magnitude-s0.30-seed0",
                "magnitude",
                0.3,
                [m("accuracy", 0.89), m("accuracy_delta", -0.01), m("macro_f1", 0.88)],
            ),
            variant("magnitude-s0.50-seed0", "magnitude", 0.5, [m("accuracy", 0.85), m("accuracy_delta", -0.05)]),
        ],
    )
    res.verdict = evaluate_policy(policy_from_text(POLICY), res, policy_label="plug.yaml")
    return res.to_json()


RESULTS = _results()


@pytest.fixture
def audit_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    (pytester.path / "results.json").write_text(RESULTS, encoding="utf-8")
    return pytester


def _audit(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_inprocess(*PLUGIN, "--prune-audit", "results.json", *args)


def test_each_status_gives_its_pytest_outcome(audit_dir: pytest.Pytester) -> None:
    _audit(audit_dir).assert_outcomes(passed=6, failed=1, errors=1, skipped=1, warnings=2)


def test_failure_shows_the_finding_without_a_traceback(audit_dir: pytest.Pytester) -> None:
    out = _audit(audit_dir, "-k", "accuracy-drop and not warn").stdout.str()
    assert "FAIL: value -0.05 violates >= -0.03" in out
    assert "bound: >= -0.03" in out and "observed: -0.05" in out
    assert "PruneAuditFailure" not in out and "pytest_plugin.py" not in out


def test_node_ids_are_variant_then_rule(audit_dir: pytest.Pytester) -> None:
    out = _audit(audit_dir, "--collect-only", "-q").stdout.lines
    ids = [line for line in out if line.startswith("results.json::")]
    assert "results.json::magnitude-s0.50-seed0::accuracy-drop" in ids
    assert "results.json::not-run::ood-drop" in ids
    assert len(ids) == 9


def test_k_selects_by_variant_and_rule(audit_dir: pytest.Pytester) -> None:
    res = _audit(audit_dir, "-k", "magnitude-s0.50-seed0 and accuracy-drop and not warn")
    res.assert_outcomes(failed=1, deselected=8)


def test_x_stops_at_the_first_failure(audit_dir: pytest.Pytester) -> None:
    # s0.30's four rules, then s0.50's accuracy-floor pass; its accuracy-drop fails and stops the run
    _audit(audit_dir, "-x").assert_outcomes(passed=5, failed=1, warnings=1)


def test_junitxml_has_a_case_per_rule_and_variant(audit_dir: pytest.Pytester) -> None:
    _audit(audit_dir, "--junitxml=junit.xml")
    cases = {(c.get("classname"), c.get("name")): c for c in ET.parse(audit_dir.path / "junit.xml").iter("testcase")}
    assert len(cases) == 9
    assert cases["results.json.magnitude-s0.50-seed0", "accuracy-drop"].find("failure") is not None
    assert cases["results.json.magnitude-s0.50-seed0", "f1-floor"].find("error") is not None
    assert cases["results.json.not-run", "ood-drop"].find("skipped") is not None


def test_policy_option_rejudges_the_measurements(audit_dir: pytest.Pytester) -> None:
    audit_dir.makefile(".yaml", loose=POLICY.replace("min: -0.03", "min: -0.1"))
    _audit(audit_dir, "--prune-audit-policy", "loose.yaml").assert_outcomes(
        passed=7, failed=0, errors=1, skipped=1, warnings=2
    )


def test_error_passes_with_a_warning_when_the_policy_does_not_fail_on_error(audit_dir: pytest.Pytester) -> None:
    audit_dir.makefile(".yaml", lenient=POLICY.replace("rules:", "fail_on_error: false\nrules:"))
    res = _audit(audit_dir, "--prune-audit-policy", "lenient.yaml", "-k", "f1-floor")
    res.assert_outcomes(passed=2, errors=0, warnings=1, deselected=7)


def test_warn_can_be_escalated_with_a_warning_filter(audit_dir: pytest.Pytester) -> None:
    res = _audit(audit_dir, "-k", "warn", "-W", "error::audit.pytest_plugin.PruneAuditWarning")
    res.assert_outcomes(failed=2, deselected=7)


USER_TEST = """
import pytest

def test_accuracy(prune_audit_results):
    assert prune_audit_results.measurement("magnitude-s0.50-seed0", "performance/test/accuracy").value == 0.85

def test_unknown_metric(prune_audit_results):
    with pytest.raises(KeyError, match="measured: performance/test/accuracy"):
        prune_audit_results.measurement("magnitude-s0.50-seed0", "performance/test/nope")
"""


def test_fixture_gives_the_measurements(audit_dir: pytest.Pytester) -> None:
    audit_dir.makepyfile(test_user=USER_TEST)
    _audit(audit_dir, "-m", "not prune_audit").assert_outcomes(passed=2, deselected=9)


def test_fixture_without_the_option_errors_and_says_why(audit_dir: pytest.Pytester) -> None:
    audit_dir.makepyfile(test_user=USER_TEST)
    res = audit_dir.runpytest_inprocess(*PLUGIN)
    res.assert_outcomes(errors=2)
    assert "the prune_audit_results fixture needs --prune-audit RESULTS.json" in res.stdout.str()


def test_without_the_option_the_plugin_adds_nothing(audit_dir: pytest.Pytester) -> None:
    audit_dir.makepyfile(test_plain="def test_ok():\n    pass\n")
    res = audit_dir.runpytest_inprocess(*PLUGIN)
    res.assert_outcomes(passed=1)
    assert "prune-audit" not in res.stdout.str()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (RESULTS.replace('"schema_version": "1.0"', '"schema_version": "2.0"'), "results schema_version 2.0"),
        ('{"run_id": "x"}', "not a prune-audit results file"),
        (None, "results file not found"),
    ],
    ids=["other-schema-version", "not-results", "missing"],
)
def test_bad_results_file_is_a_usage_error(audit_dir: pytest.Pytester, content: str | None, message: str) -> None:
    bad = audit_dir.path / "bad.json"
    if content is not None:
        bad.write_text(content, encoding="utf-8")
    res = audit_dir.runpytest_inprocess(*PLUGIN, "--prune-audit", "bad.json", "--junitxml=junit.xml")
    assert res.ret == pytest.ExitCode.USAGE_ERROR == 4
    errors = [line for line in res.errlines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: bad.json: ") and message in errors[0]
    assert not (audit_dir.path / "junit.xml").exists()


def test_bad_policy_or_missing_verdict_is_a_usage_error(audit_dir: pytest.Pytester) -> None:
    bad_policy = _audit(audit_dir, "--prune-audit-policy", "nosuch.yaml")
    assert bad_policy.ret == pytest.ExitCode.USAGE_ERROR
    assert "nosuch.yaml" in bad_policy.stderr.str()
    no_verdict = json.loads(RESULTS)
    no_verdict["verdict"] = None
    (audit_dir.path / "unjudged.json").write_text(json.dumps(no_verdict), encoding="utf-8")
    res = audit_dir.runpytest_inprocess(*PLUGIN, "--prune-audit", "unjudged.json")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: unjudged.json: results file has no verdict (hint: pass --prune-audit-policy" in res.stderr.str()


def test_policy_option_alone_is_a_usage_error(audit_dir: pytest.Pytester) -> None:
    res = audit_dir.runpytest_inprocess(*PLUGIN, "--prune-audit-policy", "default")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --prune-audit-policy needs --prune-audit RESULTS.json" in res.stderr.str()


def test_plugin_import_is_light(pytester: pytest.Pytester) -> None:
    code = "import sys, audit.pytest_plugin; print(sorted({'pydantic', 'torch', 'transformers'} & set(sys.modules)))"
    res = pytester.run(sys.executable, "-c", code)
    assert res.outlines[-1] == "[]"


def test_entry_point_name_is_prune_audit(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib  # Python 3.11+, as in test_store

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["pytest11"] == {"prune_audit": "audit.pytest_plugin"}
    # a stand-in distribution declaring the same entry point, so pytest autoloads the plugin by that name
    dist = pytester.mkdir("site") / "prune_audit_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: prune-audit-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nprune_audit = audit.pytest_plugin\n")
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(dist.parent), str(ROOT)]))
    (pytester.path / "results.json").write_text(RESULTS, encoding="utf-8")
    loaded = pytester.runpytest_subprocess("--prune-audit", "results.json", "--collect-only", "-q")
    assert "results.json::magnitude-s0.50-seed0::accuracy-drop" in loaded.outlines
    blocked = pytester.runpytest_subprocess("-p", "no:prune_audit", "--prune-audit", "results.json")
    assert blocked.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --prune-audit" in blocked.stderr.str()
