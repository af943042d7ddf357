from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_config
from results_factory import m, run, variant

from audit import stats
from audit.analysis import analyze_sweep, iter_tests
from audit.config import load_config
from audit.paired import PairedComparison
from audit.results import MetricInfo, load_results
from audit.runner import run_audit


def _with(meas, **details):
    meas.details.update(details)
    return meas


def _result():
    def tests(p_acc: float, p_group: float, p_f1: float, delta: float):
        return [
            _with(
                m("accuracy_delta", delta),
                paired=PairedComparison(
                    baseline=0.9,
                    delta=delta,
                    ci_low=None,
                    ci_high=None,
                    ci_method=None,
                    test="exact McNemar",
                    p_value=p_acc,
                    n=400,
                    lost=5,
                    gained=1,
                    discordant=6,
                ).to_dict(),
            ),
            _with(
                m("ece", 0.1, suite="ood", dataset="yelp"),
                paired={"delta": 0.05, "p_value": p_f1},  # ECE is lower-is-better: +0.05 is worse
            ),
            _with(
                m("pruning_disparate_impact", 0.1, suite="bias"),
                paired_groups={"gender": {"f": {"delta": -0.1, "p_value": p_group, "higher_is_better": True}}},
                heterogeneity={"gender": {"p_value": 0.5}},
            ),
        ]

    res = run(
        [m("accuracy", 0.9)],
        [
            variant("magnitude-s0.30-seed0", "magnitude", 0.3, tests(0.2, 0.04, 0.9, -0.01)),
            variant("magnitude-s0.50-seed0", "magnitude", 0.5, tests(0.001, 0.0001, 0.002, -0.05)),
            variant("magnitude-s0.70-seed0", "magnitude", 0.7, tests(1e-6, 1e-6, 1e-5, -0.2)),
        ],
        suites=("performance", "ood", "bias"),
    )
    res.metrics["ood/ece"] = MetricInfo(suite="ood", name="ece", meaning="e", higher_is_better=False)
    res.metrics["bias/pruning_disparate_impact"] = MetricInfo(
        suite="bias", name="pruning_disparate_impact", meaning="d", higher_is_better=False
    )
    return res


def test_bh_over_every_test_of_the_sweep() -> None:
    res = _result()
    found = list(iter_tests(res))
    assert len(found) == 12  # 3 variants x (two overall records, one group, one heterogeneity)
    p = np.array([t.record["p_value"] for t in found])
    summary = analyze_sweep(res, alpha=0.05)
    q = stats.benjamini_hochberg(p)
    assert [t.record["q_value"] for t in iter_tests(res)] == pytest.approx(list(q))
    assert summary["n_tests"] == 12 and summary["method"] == "Benjamini-Hochberg"
    assert summary["n_significant"] == int((q <= 0.05).sum())
    assert "Benjamini-Hochberg" in summary["statement"] and "12" in summary["statement"]
    assert res.statistics["multiple_testing"] is summary
    # a raw p of 0.04 at 30 % does not survive the correction
    low = res.variants[0].measurements[2].details["paired_groups"]["gender"]["f"]
    assert low["p_value"] < 0.05 and low["q_value"] > 0.05 and low["significant"] is False


def test_regressions_follow_each_metrics_direction_and_give_the_onset() -> None:
    res = _result()
    analyze_sweep(res, alpha=0.05)
    regs = res.statistics["regressions"]
    assert {(r["metric"], r["test"], r["sparsity"]) for r in regs} == {
        ("performance/test/accuracy_delta", "paired", 0.5),
        ("performance/test/accuracy_delta", "paired", 0.7),
        ("ood/yelp/ece", "paired", 0.5),
        ("ood/yelp/ece", "paired", 0.7),
        ("bias/test/pruning_disparate_impact", "paired_groups.gender.f", 0.5),
        ("bias/test/pruning_disparate_impact", "paired_groups.gender.f", 0.7),
    }
    # the heterogeneity test has no delta: significant or not, it is never a "regression"
    assert all("heterogeneity" not in r["test"] for r in regs)
    onset = res.statistics["regression_onset"]["magnitude"]
    assert onset["performance/test/accuracy_delta"] == 0.5 and onset["ood/yelp/ece"] == 0.5
    assert "bias/test/pruning_disparate_impact" not in onset  # only overall tests give an onset


def test_no_tests_is_stated_too() -> None:
    res = run([m("accuracy", 0.9)], [variant("magnitude-s0.50-seed0", "magnitude", 0.5, [m("accuracy", 0.8)])])
    summary = analyze_sweep(res)
    assert summary["n_tests"] == 0 and "No dense-vs-variant tests" in summary["statement"]


def test_end_to_end_with_both_suites(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    suites = (
        "suites:\n"
        "  performance: {}\n"
        "  ood:\n"
        f"    shifted: [{{name: ood, path: {tiny_data_dir / 'ood.jsonl'}}}]\n"
        "    corruptions: [{kind: typo, rate: 0.2}]\n"
        "  bias:\n"
        "    counterfactual: {categories: [gender]}\n"
    )
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            suites=suites,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n",
            runtime="runtime:\n  n_boot: 30\n  batch_size: 64\n",
        )
    )
    outcome = run_audit(cfg, command="test")
    res = load_results(cfg.output_path() / "results.json")
    for v in res.all_variants():
        assert not v.errors
        for meas in v.measurements:
            assert res.metric_info(meas.id) is not None, meas.id  # every metric is declared
    mt = res.statistics["multiple_testing"]
    assert mt["n_tests"] > 10 and mt["alpha"] == pytest.approx(0.05)
    pruned = res.variants[0]
    delta = pruned.measurement("ood/ood/accuracy_delta").details["paired"]
    assert delta["q_value"] >= delta["p_value"] and delta["significant"] == (delta["q_value"] <= 0.05)
    assert "ood/ood/accuracy_delta" in res.statistics["regression_onset"]["magnitude"]
    assert res.baseline.warnings and not pruned.warnings  # setup warnings are reported once
    assert pruned.examples["bias"] and pruned.examples["ood"]
    assert {"ood", "test-typo"} <= {d.id for d in res.datasets}
    assert outcome.verdict is not None
