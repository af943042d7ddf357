from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import roc_auc_score

from audit import paired, stats


def test_delong_matches_sklearn_and_bootstrap_variance() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.random(n) < 0.4
    a = rng.normal(size=n) + 1.0 * y
    b = a + rng.normal(scale=0.8, size=n) - 0.5 * y  # a noisier, worse copy of a
    d = stats.delong_paired(a, b, y)
    assert d["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert d["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert d["delta"] == pytest.approx(d["auc_b"] - d["auc_a"])
    boot_a, boot_b = stats.bootstrap_auc(a, y, n_boot=2000, seed=1, paired_with=b)
    assert d["se"] == pytest.approx(np.std(boot_b - boot_a), rel=0.15)
    assert d["p_value"] < 0.01
    same = stats.delong_paired(a, a, y)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    assert stats.delong_paired(a, b, np.ones(n, bool))["p_value"] is None


def test_disparities_match_fairlearn_and_pair_up() -> None:
    rng = np.random.default_rng(0)
    n = 600
    g = rng.choice(["a", "b", "c"], n)
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < 0.8, y, 1 - y)
    p[(g == "c") & (rng.random(n) < 0.3)] = 1  # group c is selected more often
    res = stats.disparity_differences(y, p, g, n_boot=300, seed=3, return_boot=True)
    dp = res["demographic_parity_difference"]
    eo = res["equalized_odds_difference"]
    assert dp["value"] == pytest.approx(demographic_parity_difference(y, p, sensitive_features=g))
    assert eo["value"] == pytest.approx(equalized_odds_difference(y, p, sensitive_features=g))
    assert dp["ci_low"] <= dp["value"] <= dp["ci_high"] and dp["n_groups"] == 3
    assert dp["boot"].shape == (300,)
    again = stats.disparity_differences(y, p, g, n_boot=300, seed=3, return_boot=True)
    assert np.array_equal(again["demographic_parity_difference"]["boot"], dp["boot"])  # same seed, same resamples


def test_pruning_disparate_impact_is_group_gap_minus_overall_gap() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    g = rng.choice(["x", "y"], n, p=[0.8, 0.2])
    base = rng.random(n) < 0.9
    new = base.copy()
    hit = (g == "y") & base & (rng.random(n) < 0.3)  # pruning hurts group y only
    new[hit] = False
    res = paired.pruning_disparate_impact(base, new, g, n_boot=300, seed=0)
    overall = base.mean() - new.mean()
    assert res["overall_gap"] == pytest.approx(overall)
    for name in ("x", "y"):
        m = g == name
        gap = base[m].mean() - new[m].mean()
        r = res["groups"][name]
        assert r["gap"] == pytest.approx(gap)
        assert r["excess"] == pytest.approx(gap - overall)
        assert r["n"] == int(m.sum())
        t = paired.mcnemar_exact(base[m], new[m])
        rec = r["paired"]
        assert (rec.p_value, rec.lost, rec.gained, rec.n) == (t["p_value"], t["lost"], t["gained"], int(m.sum()))
        assert rec.delta == pytest.approx(-gap)
    assert res["groups"]["y"]["ci_low"] > 0  # y loses significantly more than average
    assert res["groups"]["x"]["ci_high"] < 0
    assert res["groups"]["y"]["paired"].lost == int(hit.sum())
    assert res["groups"]["y"]["paired"].ci_high < 0  # y's own accuracy falls, and its CI says so


def test_benjamini_hochberg_by_hand() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.005])
    q = stats.benjamini_hochberg(p)
    finite = p[np.isfinite(p)]
    m = len(finite)
    order = np.argsort(finite)
    ranked = finite[order] * m / np.arange(1, m + 1)
    expected = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(expected, 1)
    assert np.allclose(q[np.isfinite(p)], out)
    assert np.isnan(q[4])
    assert (stats.benjamini_hochberg(p, method="by")[np.isfinite(p)] >= q[np.isfinite(p)]).all()


def test_disparities_match_fairlearn_when_a_group_has_no_positives() -> None:
    rng = np.random.default_rng(1)
    g = np.repeat(["a", "b", "c"], 40)
    y = rng.integers(0, 2, 120)
    y[g == "b"] = 0  # TPR is undefined for b: fairlearn's own convention must carry over
    p = rng.integers(0, 2, 120)
    res = stats.disparity_differences(y, p, g, n_boot=0)
    assert res["demographic_parity_difference"]["value"] == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=g)
    )
    assert res["equalized_odds_difference"]["value"] == pytest.approx(
        equalized_odds_difference(y, p, sensitive_features=g)
    )
