"""Statistics of issue 13 item 6: the clustered McNemar test and "no resamples, no CI"."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from audit import paired, stats


def _clusters(spec: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cluster) for clusters of ``size`` units that all behave the same way: "lost" (a only),
    "gained" (b only) or "same" (both)."""
    a, b, c = [], [], []
    for k, (size, kind) in enumerate(spec):
        a += [kind in ("lost", "same")] * size
        b += [kind in ("gained", "same")] * size
        c += [k] * size
    return np.array(a), np.array(b), np.array(c)


def test_clustered_mcnemar_hand_computed() -> None:
    # 10 clusters of 5: 6 lose all 5 units, 2 gain all 5, 2 are concordant. N = 50, K = 10.
    # p_a - p_b = (30 - 10) / 50 = 0.4; d_k - n_k * 0.4 = 3 (x6), -7 (x2), -2 (x2): sum of squares 160
    # var = 10 / (9 * 2500) * 160 = 1600 / 22500; X^2 = 0.16 / var = 2.25 exactly
    a, b, c = _clusters([(5, "lost")] * 6 + [(5, "gained")] * 2 + [(5, "same")] * 2)
    t = paired.clustered_mcnemar(a, b, c)
    assert (t["lost"], t["gained"], t["clusters"]) == (30, 10, 10)
    assert t["statistic"] == pytest.approx(2.25)
    assert t["p_value"] == pytest.approx(chi2.sf(2.25, 1))
    assert t["p_value"] == pytest.approx(0.13361, abs=1e-4)


def test_clustered_mcnemar_singletons_match_the_closed_form() -> None:
    # clusters of one unit: X^2 = (b - c)^2 (N - 1) / (N (b + c) - (b - c)^2), close to McNemar's (b - c)^2 / (b + c)
    a, b, c = _clusters([(1, "lost")] * 12 + [(1, "gained")] * 4 + [(1, "same")] * 24)
    t = paired.clustered_mcnemar(a, b, c)
    n, lost, gained = 40, 12, 4
    closed_form = (lost - gained) ** 2 * (n - 1) / (n * (lost + gained) - (lost - gained) ** 2)
    assert t["statistic"] == pytest.approx(closed_form)


def test_clustered_mcnemar_is_more_conservative_than_naive_when_clusters_move_together() -> None:
    a, b, c = _clusters([(5, "lost")] * 6 + [(5, "gained")] * 2 + [(5, "same")] * 2)
    naive = paired.mcnemar_exact(a, b)["p_value"]
    clustered = paired.clustered_mcnemar(a, b, c)["p_value"]
    assert naive < 0.01 < 0.05 < clustered  # 40 correlated discordant units are 8 clusters' worth of evidence


def test_clustered_mcnemar_edge_cases() -> None:
    same = np.ones(6, bool)
    assert paired.clustered_mcnemar(same, same, np.arange(6))["p_value"] == 1.0  # nothing discordant
    one = paired.clustered_mcnemar(np.array([1, 1, 0], bool), np.array([0, 0, 0], bool), np.zeros(3))
    assert one["p_value"] is None and one["clusters"] == 1  # one cluster: no between-cluster variance


def test_no_resamples_give_no_interval() -> None:
    a = np.array([1, 1, 0, 1, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 1, 1], bool)
    for n_boot in (0, 1):
        d, lo, hi = paired.paired_bootstrap_delta(a, b, n_boot=n_boot)
        assert d == pytest.approx(0.0) and (lo, hi) == (None, None)
        assert stats.bootstrap_ci(a.astype(float), n_boot=n_boot) == (None, None)
        assert stats.ci_method("bootstrap", n_boot) is None
    (m,) = stats.group_measurements(
        suite="s",
        dataset="d",
        metrics=[stats.accuracy_metric(2)],
        y_true=a.astype(int),
        y_pred=b.astype(int),
        groups={"g": np.array(list("xxxyyy"))},
        n_boot=0,
    )
    assert (m.ci_low, m.ci_high, m.ci_method) == (None, None, None)
    assert all(gv.ci_low is None and gv.ci_high is None for gv in m.groups["g"].values())


class _Predictor:
    """One-hot predictions: the variant's ``model`` is the array of predicted classes."""

    def proba(self, model: np.ndarray, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        return np.eye(2)[model]


@pytest.mark.parametrize("n_boot", [0, 1000])
def test_performance_suite_reports_no_ci_without_resamples_and_says_how_many(n_boot: int) -> None:
    from results_factory import run, variant

    from audit.analysis import analyze_sweep
    from audit.data import EvalSet
    from audit.plan import SweepPoint
    from audit.registry import SUITES
    from audit.suite import SuiteContext, Variant
    from reports import markdown

    labels = np.tile([0, 1], 40)
    es = EvalSet(name="test", texts=[f"t{i}" for i in range(80)], labels=labels)
    ctx = SuiteContext(config=None, eval_set=es, predictor=_Predictor(), id2label={0: "n", 1: "p"}, n_boot=n_boot)  # type: ignore[arg-type]
    spec = SUITES.get("performance")
    suite = spec.load()(spec, spec.params.model_validate({}))
    pruned = labels.copy()
    pruned[:12] = 1 - pruned[:12]
    dense_out = suite.run(Variant(SweepPoint("dense", 0.0, 0), labels), ctx)
    out = suite.run(Variant(SweepPoint("magnitude", 0.5, 0), pruned), ctx.for_suite(dense_out.artifacts))
    for meas in [*dense_out.measurements, *out.measurements]:
        if n_boot == 0:  # the bug: accuracy_delta and agreement gave [x, x] from one resample, "0 resamples"
            assert (meas.ci_low, meas.ci_high, meas.ci_method) == (None, None, None), meas.id
        else:
            assert meas.ci_low is not None and meas.ci_high is not None and "1000 resamples" in meas.ci_method
    res = run(dense_out.measurements, [variant("magnitude-s0.50-seed0", "magnitude", 0.5, out.measurements)])
    res.config["runtime"] = {"n_boot": n_boot, "ci_level": 0.95}
    analyze_sweep(res)
    assert res.statistics["bootstrap"]["n_boot"] == n_boot
    md = markdown.render(res)
    if n_boot == 0:
        assert "No confidence intervals: runtime.n\\_boot is 0" in md
    else:
        assert "bootstrap interval from 1000 resamples (each end rests on about 25 resamples beyond it)" in md


def test_default_resample_count_puts_more_than_5_resamples_beyond_each_end() -> None:
    from audit.config import RuntimeConfig

    n = RuntimeConfig().n_boot
    assert n * (1 - 0.95) / 2 > 5
