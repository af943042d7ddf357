"""The policy engine beyond the basics: group-to-group deltas, CI ends of aggregates,
deployment metrics, directions declared by results, the published schema and the
shipped policies judged on a realistic run."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from results_factory import m, rich_run, run, variant

from audit.deploy.spec import measurements_of
from audit.errors import ConfigError, ExitCode
from audit.policy import (
    builtin_policies,
    evaluate_policy,
    load_policy,
    policy_from_text,
    policy_schema,
    policy_schema_text,
    schema_path,
)
from audit.registry import SUITES, MetricSpec, SuiteSpec
from audit.results import DeploymentRecord, EquivalenceRecord, GroupValue, SpeedRecord, SuiteError

TODAY = dt.date(2026, 1, 2)


def by_key(verdict) -> dict:
    return {(r.rule, r.variant, r.metric): r for r in verdict.rules}


def test_worst_group_delta_compares_each_group_with_itself_on_dense() -> None:
    # dense: f=0.95, m=0.80 (worst m); pruned: f=0.82, m=0.80 (worst still m).
    # worst-vs-worst would be 0.80-0.80 = 0; but group f lost 13 points.
    pol = policy_from_text(
        "name: p\nrules:\n  - {id: wg, metric: performance/*/accuracy, aggregate: worst_group,"
        " comparison: delta_vs_baseline, min: -0.05}\n"
    )
    res = run(
        [m("accuracy", 0.875, groups={"gender": {"f": (0.95, 100), "m": (0.80, 100)}})],
        [
            variant(
                "v", "magnitude", 0.5, [m("accuracy", 0.81, groups={"gender": {"f": (0.82, 100), "m": (0.80, 100)}})]
            )
        ],
    )
    r = evaluate_policy(pol, res).rules[0]
    assert r.status == "FAIL"
    assert r.compared == pytest.approx(-0.13)
    assert (r.observed, r.baseline) == (pytest.approx(0.82), pytest.approx(0.95))
    assert "worst: gender=f" in r.message


def test_relative_worst_group_and_groups_missing_on_dense_are_noted() -> None:
    pol = policy_from_text(
        "name: p\nrules:\n  - {id: wg, metric: performance/*/accuracy, aggregate: worst_group,"
        " comparison: relative_to_baseline, min: -0.1}\n"
    )
    res = run(
        [m("accuracy", 0.9, groups={"g": {"a": (0.9, 50)}})],
        [variant("v", "magnitude", 0.5, [m("accuracy", 0.8, groups={"g": {"a": (0.72, 50), "new": (0.1, 50)}})])],
    )
    r = evaluate_policy(pol, res).rules[0]
    assert r.compared == pytest.approx(0.72 / 0.9 - 1) and r.status == "FAIL"
    assert "1 group(s) without a dense value ignored" in r.message


def test_ci_ends_of_group_spreads() -> None:
    groups = {
        "g": {
            "a": GroupValue(value=0.9, ci_low=0.85, ci_high=0.95, n=50),
            "b": GroupValue(value=0.8, ci_low=0.7, ci_high=0.88, n=50),
        }
    }
    meas = m("accuracy", 0.85)
    meas.groups = groups
    res = run([m("accuracy", 0.85)], [variant("v", "magnitude", 0.5, [meas])])

    def compared(agg: str, use: str) -> float:
        bound = "max: 1.0" if agg == "difference" else "min: 0.0"
        pol = policy_from_text(
            f"name: p\nrules:\n  - {{id: r, metric: performance/*/accuracy, aggregate: {agg}, use: {use}, {bound}}}\n"
        )
        return evaluate_policy(pol, res).rules[0].compared

    # difference: point 0.1; widest plausible 0.95-0.7; narrowest 0.85-0.88 -> 0
    assert compared("difference", "point") == pytest.approx(0.1)
    assert compared("difference", "ci_upper") == pytest.approx(0.25)
    assert compared("difference", "ci_lower") == pytest.approx(0.0)
    # ratio: the lower end is the smallest plausible ratio, the upper end the largest
    assert compared("ratio", "point") == pytest.approx(0.8 / 0.9)
    assert compared("ratio", "ci_lower") == pytest.approx(0.7 / 0.95)
    assert compared("ratio", "ci_upper") == pytest.approx(min(1.0, 0.88 / 0.85))


def test_rule_on_a_ci_end_without_a_ci_is_an_error_that_says_so() -> None:
    pol = policy_from_text("name: p\nrules:\n  - {id: r, metric: performance/*/accuracy, use: ci_lower, min: 0.5}\n")
    res = run([m("accuracy", 0.9)], [variant("v", "magnitude", 0.5, [m("accuracy", 0.9)])])
    r = evaluate_policy(pol, res).rules[0]
    assert r.status == "ERROR" and "lower end: the measurement has no confidence interval" in r.message


def test_deployment_record_is_gated_like_a_metric() -> None:
    dep = DeploymentRecord(
        formats={"csr": 4},
        weight_bytes_dense=1000,
        weight_bytes_deployed=400,
        equivalence=EquivalenceRecord(n=64, max_abs_logit_diff=3e-3, agreement=0.98, tolerance=1e-4, passed=False),
        speed=SpeedRecord(seq_len=64, threads=2, speedup_b1=0.9, speedup_b32=1.4),
    )
    v = variant("v", "magnitude", 0.5, [m("accuracy", 0.9), *measurements_of(dep)])
    v.deployment = dep
    got = {x.id: x.value for x in v.measurements if x.suite == "deployment"}
    assert got == {
        "deployment/seq64/speedup_b1": 0.9,
        "deployment/seq64/speedup_b32": 1.4,
        "deployment/weights/size_ratio": pytest.approx(0.4),
        "deployment/weights/weight_bytes": 400,
        "deployment/probe/max_abs_logit_diff": 3e-3,
        "deployment/probe/prediction_agreement": 0.98,
        "deployment/layers/sparse_layers": 4,
        "deployment/layers/dense_layers": 0,
    }
    pol = policy_from_text(
        "name: p\nrules:\n"
        "  - {id: eq, metric: deployment/*/prediction_agreement, min: 0.999}\n"
        "  - {id: fast, metric: deployment/*/speedup_b1, min: 1.0, severity: warn}\n"
        "  - {id: small, metric: deployment/*/size_ratio, max: 0.5}\n"
    )
    verdict = evaluate_policy(pol, run([m("accuracy", 0.9)], [v]))
    st = {r.rule: r.status for r in verdict.rules}
    assert st == {"eq": "FAIL", "fast": "WARN", "small": "PASS"}
    # without deployment (deploy.enabled: false), deployment rules are skipped as "not part of this run"
    plain = variant("v", "magnitude", 0.5, [m("accuracy", 0.9)])
    skipped = evaluate_policy(pol, run([m("accuracy", 0.9)], [plain]))
    assert {r.status for r in skipped.rules} == {"SKIP"} and "'deployment' was not part" in skipped.rules[0].message
    with pytest.raises(ConfigError, match="lower-is-better, so a min bound"):
        policy_from_text("name: p\nrules:\n  - {id: r, metric: deployment/*/size_ratio, min: 0.5}\n")


def test_bound_against_a_direction_declared_only_by_the_results_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # with `ood` not installed where the policy is loaded, loading cannot check it; the results can
    monkeypatch.delitem(SUITES._specs, "ood")
    pol = policy_from_text("name: p\nrules:\n  - {id: r, metric: ood/*/ece, min: 0.1}\n")
    with pytest.raises(ConfigError) as exc:
        evaluate_policy(pol, rich_run(), policy_label="mine.yaml")
    assert "lower-is-better, so a min bound points the wrong way" in exc.value.message
    assert exc.value.where == "mine.yaml" and exc.value.hint == "use max: (the highest acceptable value)"


@pytest.fixture
def throwaway_suite() -> Iterator[SuiteSpec]:
    spec = SuiteSpec(
        name="toxicity",
        impl="nowhere:Nothing",
        summary="throwaway",
        metrics=(
            MetricSpec("toxic_rate", "share of toxic outputs", higher_is_better=False),
            MetricSpec("selection", "share predicted positive", higher_is_better=None),
        ),
    )
    SUITES.register(spec)
    yield spec
    SUITES._specs.pop("toxicity", None)


def test_directions_of_registered_suites_are_checked_at_load_time(throwaway_suite: SuiteSpec) -> None:
    with pytest.raises(ConfigError, match="lower-is-better, so a min bound") as exc:
        policy_from_text("name: p\nrules:\n  - id: r\n    metric: toxicity/*/toxic_rate\n    min: 0.1\n")
    assert exc.value.line == 3
    policy_from_text("name: p\nrules:\n  - {id: r, metric: toxicity/*/toxic_rate, max: 0.1}\n")
    # a metric without a direction accepts two-sided bounds but has no worst group
    policy_from_text("name: p\nrules:\n  - {id: r, metric: toxicity/*/selection, min: 0.2, max: 0.8}\n")
    with pytest.raises(ConfigError, match="worst group is undefined"):
        policy_from_text("name: p\nrules:\n  - {id: r, metric: toxicity/*/selection, aggregate: worst_group, min: 0}\n")


def test_pruning_failure_is_an_error_naming_it() -> None:
    pol = policy_from_text("name: p\nrules:\n  - {id: r, metric: performance/*/accuracy, min: 0.5}\n")
    bad = variant(
        "v", "magnitude", 0.5, [], errors=[SuiteError(suite="pruning", error_type="ValueError", message="bad mask")]
    )
    verdict = evaluate_policy(pol, run([m("accuracy", 0.9)], [bad]))
    r = verdict.rules[0]
    assert r.status == "ERROR" and r.message.startswith("pruning failed on this variant: ValueError: bad mask")
    assert verdict.max_compliant_sparsity == {"magnitude": None}


def test_a_level_no_rule_judged_is_not_compliant() -> None:
    pol = policy_from_text(
        "name: p\nrules:\n  - {id: r, metric: performance/*/accuracy, min: 0.5, applies_to: {sparsity: {max: 0.5}}}\n"
    )
    res = run(
        [m("accuracy", 0.9)],
        [variant(f"v{s}", "magnitude", s, [m("accuracy", 0.9)]) for s in (0.3, 0.5, 0.7)],
    )
    verdict = evaluate_policy(pol, res)
    assert {r.variant for r in verdict.rules} == {"v0.3", "v0.5"}
    assert verdict.max_compliant_sparsity == {"magnitude": 0.5}


def test_verdict_records_rules_waivers_and_time() -> None:
    text = (
        "name: w\ndescription: |\n  two\n  lines\nrules:\n"
        "  - {id: r, metric: performance/*/accuracy, min: 0.95}\n"
        "waivers:\n"
        "  - {rule: r, variants: ['v5*'], approver: ann, reason: ok, expires: 2026-06-01}\n"
        "  - {rule: r, variants: ['zzz'], approver: bob, reason: unused, expires: 2026-06-01}\n"
        "  - {rule: r, approver: cy, reason: old, expires: 2025-01-01}\n"
    )
    res = run([m("accuracy", 0.9)], [variant("v50", "magnitude", 0.5, [m("accuracy", 0.9)])])
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    v = evaluate_policy(policy_from_text(text), res, today=TODAY, now=now)
    assert v.evaluated_at == "2026-01-02T03:04:05+00:00"
    assert v.policy_name == "w" and v.policy_description == "two lines"
    assert [r["id"] for r in v.policy_rules] == ["r"] and v.policy_rules[0]["min"] == 0.95
    assert [(w.approver, w.active, w.used) for w in v.waivers] == [
        ("ann", True, True),
        ("bob", True, False),
        ("cy", False, False),
    ]
    assert any("bob matched no failure" in n for n in v.notes)
    assert any("cy expired on 2025-01-01" in n for n in v.notes)
    assert v.rules[0].status == "WARN" and v.rules[0].waived_by == "ann"


# -- the published schema ------------------------------------------------------------


def test_published_schema_matches_the_models() -> None:
    published = schema_path().read_text(encoding="utf-8")
    assert published == policy_schema_text(), (
        "policies/policy.schema.json is out of date: run `make schemas` "
        "(or `prune-audit schema policy -o policies/policy.schema.json`)"
    )
    assert json.loads(published)["$id"].endswith("/policy.schema.json")


def test_shipped_policies_validate_against_the_published_schema() -> None:
    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    assert set(builtin_policies()) == {"default", "strict", "exploratory", "lm-default"}
    for path in builtin_policies().values():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc = json.loads(json.dumps(doc, default=str))  # dates as ISO strings, as JSON carries them
        validator.validate(doc)
    bad = {"name": "x", "rules": [{"id": "r", "metric": "a/b/c", "min": 0, "severity": "fatal"}]}
    assert list(validator.iter_errors(bad)), "the schema must reject an unknown severity"
    assert list(validator.iter_errors({"name": "x", "rules": [{"id": "r", "metric": "a/b/c", "mni": 0}]}))


# -- the shipped policies on a realistic run -----------------------------------------

KNOWN_SUITES = {"performance", "ood", "bias", "adversarial", "lm", "stereotype", "bbq", "deployment"}


def test_shipped_policies_explain_every_rule_and_name_real_suites() -> None:
    for name, path in builtin_policies().items():
        pol, _ = load_policy(name)
        text = path.read_text(encoding="utf-8")
        assert text.lstrip().startswith("#"), f"{name}.yaml must open with an explanatory comment"
        assert pol.description.strip()
        for rule in pol.rules:
            assert rule.rationale.strip(), f"{name}:{rule.id} has no rationale"
            assert rule.metric.split("/")[0] in KNOWN_SUITES, f"{name}:{rule.id} names an unknown suite"


def test_strict_is_stricter_than_default_which_is_stricter_than_exploratory() -> None:
    res = rich_run()
    verdicts = {
        name: evaluate_policy(load_policy(name)[0], res, policy_label=name, today=TODAY)
        for name in ("strict", "default", "exploratory")
    }
    for method in ("magnitude", "wanda", "heads"):
        mcs = [verdicts[n].max_compliant_sparsity[method] for n in ("strict", "default", "exploratory")]
        as_num = [-1.0 if s is None else s for s in mcs]
        assert as_num == sorted(as_num), f"{method}: {mcs}"
    assert verdicts["default"].status == "FAIL" and verdicts["default"].exit_code == ExitCode.FAILED
    assert verdicts["default"].max_compliant_sparsity == {"magnitude": 0.3, "wanda": 0.5, "heads": 0.3}
    # the crashed adversarial suite is an ERROR under default, not a silent pass
    crashed = [r for r in verdicts["default"].rules if r.status == "ERROR"]
    assert [(r.rule, r.variant) for r in crashed] == [("attack-robustness", "heads-s0.70-seed0")]
    # exploratory never fails on errors, but its catastrophic-drop rule still fails heads at 0.70
    ex = verdicts["exploratory"]
    assert ex.counts["FAIL"] == 1 and next(r for r in ex.rules if r.status == "FAIL").variant == "heads-s0.70-seed0"


def test_rules_for_suites_not_run_are_skipped_and_the_rest_still_judge() -> None:
    perf_only = rich_run()
    for v in perf_only.all_variants():
        v.measurements = [x for x in v.measurements if x.suite == "performance"]
        v.deployment = None
        v.errors = []
    perf_only.config["suites"] = [{"name": "performance", "params": {}}]
    verdict = evaluate_policy(load_policy("default")[0], perf_only, today=TODAY)
    skipped = {r.rule for r in verdict.rules if r.status == "SKIP"}
    assert skipped == {
        "ood-accuracy-drop",
        "ood-calibration",
        "pruning-disparate-impact",
        "parity-gap-growth",
        "equalized-odds-growth",
        "counterfactual-flips",
        "attack-robustness",
        "kernel-equivalence",
        "no-slowdown",
    }
    assert all(r.variant == "*" for r in verdict.rules if r.status == "SKIP")
    assert verdict.counts["PASS"] > 0


def test_schema_command_regenerates_the_published_file(tmp_path: Path) -> None:
    from audit.cli import main

    out = tmp_path / "policy.schema.json"
    assert main(["schema", "policy", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == schema_path().read_text(encoding="utf-8")
    assert json.loads(out.read_text())["title"] == policy_schema()["title"]
