"""Rules that cannot judge: metrics a suite declared not applicable (issue 13 item 11) and
CI-end rules on a run without bootstrap resamples (item 6a)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_config
from results_factory import m, run, variant

from audit.config import load_config
from audit.policy import builtin_policies, evaluate_policy, load_policy, policy_from_text
from audit.results import load_results
from audit.runner import run_audit
from reports import views

NA_RULES = """\
name: t
rules:
  - {id: eo, metric: bias/*/equalized_odds_difference, comparison: delta_vs_baseline, max: 0.05}
  - {id: fpr, metric: bias/*/fpr, max: 0.5}
"""


def test_declared_not_applicable_metric_is_skip_with_its_reason_and_an_undeclared_one_stays_error() -> None:
    v = variant("v", "magnitude", 0.5, [m("pie_rate", 0.1, suite="bias")])
    v.not_applicable = {"bias/test/equalized_odds_difference": "the eval data has no sensitive-group columns"}
    res = run([m("pie_rate", 0.0, suite="bias")], [v], suites=("bias",))
    verdict = evaluate_policy(policy_from_text(NA_RULES), res)
    by = {r.rule: r for r in verdict.rules}
    assert by["eo"].status == "SKIP"
    assert by["eo"].message == "not applicable: the eval data has no sensitive-group columns"
    assert by["fpr"].status == "ERROR" and by["fpr"].message == "metric missing from results"
    res.verdict = verdict
    assert any("rule eo" in line and "no sensitive-group columns" in line for line in views.limitations(res))


CI_RULES = """\
name: t
rules:
  - {id: lo, metric: performance/*/accuracy_delta, use: ci_lower, min: -0.05}
  - {id: lo-optional, metric: performance/*/accuracy_delta, use: ci_lower, min: -0.05, required: false}
  - {id: gap-hi, metric: performance/*/accuracy, aggregate: difference, use: ci_upper, max: 0.5}
  - {id: point, metric: performance/*/accuracy_delta, min: -0.05}
"""


def test_ci_end_rules_cannot_judge_without_resamples() -> None:
    no_ci = [m("accuracy_delta", -0.01), m("accuracy", 0.8, groups={"g": {"a": (0.8, 50), "b": (0.7, 50)}})]
    res = run([m("accuracy", 0.81)], [variant("v", "magnitude", 0.5, no_ci)])
    res.config["runtime"] = {"n_boot": 0}
    by = {r.rule: r for r in evaluate_policy(policy_from_text(CI_RULES), res).rules}
    assert by["lo"].status == "ERROR" and "runtime.n_boot is 0" in by["lo"].message
    assert "lower end" in by["lo"].message and by["lo"].compared is None
    assert by["lo-optional"].status == "SKIP" and "no confidence interval" in by["lo-optional"].message
    # a group aggregate must not fall back to the groups' point values either
    assert by["gap-hi"].status == "ERROR" and "upper end" in by["gap-hi"].message
    assert by["point"].status == "PASS"


def test_ci_end_rules_judge_when_the_interval_exists() -> None:
    res = run([m("accuracy", 0.81)], [variant("v", "magnitude", 0.5, [m("accuracy_delta", -0.01, ci=(-0.04, 0.02))])])
    by = {r.rule: r for r in evaluate_policy(policy_from_text(CI_RULES), res).rules}
    assert by["lo"].status == "PASS" and by["lo"].compared == pytest.approx(-0.04)


def test_groupless_data_skips_group_rules_under_every_shipped_policy(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    data = (
        "data:\n"
        f"  files: {{train: {tiny_data_dir / 'train.jsonl'}, test: {tiny_data_dir / 'test.jsonl'}}}\n"
        "  columns: {text: text, label: label, id: id}\n"
        "  splits: {eval: test, calibration: train}\n"
    )
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            data=data,
            suites="suites:\n  performance: {}\n  bias: {}\n",
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n",
            runtime="runtime:\n  n_boot: 20\n  batch_size: 64\n",
            deploy="deploy:\n  enabled: false\n",
        )
    )
    run_audit(cfg, command="test")
    res = load_results(cfg.output_path() / "results.json")
    na = res.variants[0].not_applicable
    assert set(na) == {
        "bias/test/demographic_parity_difference",
        "bias/test/equalized_odds_difference",
        "bias/test/pruning_disparate_impact",
    }
    assert all("no sensitive-group columns" in reason for reason in na.values())
    for name in sorted(set(builtin_policies()) - {"lm-default"}):  # lm-default gates causal LMs, not a classifier
        policy, label = load_policy(name)
        verdict = evaluate_policy(policy, res, policy_label=label)
        errors = [f"{r.rule}: {r.message}" for r in verdict.rules if r.status == "ERROR"]
        assert errors == [], name
        group_rules = [r for r in verdict.rules if r.metric.split("/")[-1] in {p.split("/")[-1] for p in na}]
        assert group_rules and all(r.status == "SKIP" and "not applicable" in r.message for r in group_rules), name
        res.verdict = verdict
        limits = views.limitations(res)
        for r in group_rules:
            assert any(f"rule {r.rule} " in line and "no sensitive-group columns" in line for line in limits), name


def test_a_rule_on_a_speed_metric_of_another_batch_size_is_known_and_keeps_its_direction() -> None:
    from audit.errors import ConfigError
    from audit.policy_metrics import check_rule_metrics

    text = (
        "name: b8\nrules:\n"
        "  - {id: speed, metric: deployment/seq128/speedup_b8, aggregate: overall, comparison: absolute, min: 1.1}\n"
    )
    pol = policy_from_text(text, "b8.yaml")
    check_rule_metrics(pol)  # speedup_b8 follows deploy.speed_batch_size: not a typo
    with pytest.raises(ConfigError, match="is higher-is-better, so a max bound points the wrong way"):
        policy_from_text(text.replace("min: 1.1", "max: 1.1"), "b8.yaml")
