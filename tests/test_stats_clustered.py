"""Statistics of issue 13 item 6: the clustered McNemar test and "no resamples, no CI"."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from audit import stats


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
    t = stats.clustered_mcnemar(a, b, c)
    assert (t["lost"], t["gained"], t["clusters"]) == (30, 10, 10)
    assert t["statistic"] == pytest.approx(2.25)
    assert t["p_value"] == pytest.approx(chi2.sf(2.25, 1))
    assert t["p_value"] == pytest.approx(0.13361, abs=1e-4)


def test_clustered_mcnemar_singletons_match_the_closed_form() -> None:
    # clusters of one unit: X^2 = (b - c)^2 (N - 1) / (N (b + c) - (b - c)^2), close to McNemar's (b - c)^2 / (b + c)
    a, b, c = _clusters([(1, "lost")] * 12 + [(1, "gained")] * 4 + [(1, "same")] * 24)
    t = stats.clustered_mcnemar(a, b, c)
    n, lost, gained = 40, 12, 4
    closed_form = (lost - gained) ** 2 * (n - 1) / (n * (lost + gained) - (lost - gained) ** 2)
    assert t["statistic"] == pytest.approx(closed_form)


def test_clustered_mcnemar_is_more_conservative_than_naive_when_clusters_move_together() -> None:
    a, b, c = _clusters([(5, "lost")] * 6 + [(5, "gained")] * 2 + [(5, "same")] * 2)
    naive = stats.mcnemar_exact(a, b)["p_value"]
    clustered = stats.clustered_mcnemar(a, b, c)["p_value"]
    assert naive < 0.01 < 0.05 < clustered  # 40 correlated discordant units are 8 clusters' worth of evidence


def test_clustered_mcnemar_edge_cases() -> None:
    same = np.ones(6, bool)
    assert stats.clustered_mcnemar(same, same, np.arange(6))["p_value"] == 1.0  # nothing discordant
    one = stats.clustered_mcnemar(np.array([1, 1, 0], bool), np.array([0, 0, 0], bool), np.zeros(3))
    assert one["p_value"] is None and one["clusters"] == 1  # one cluster: no between-cluster variance


def test_no_resamples_give_no_interval() -> None:
    a = np.array([1, 1, 0, 1, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 1, 1], bool)
    for n_boot in (0, 1):
        d, lo, hi = stats.paired_bootstrap_delta(a, b, n_boot=n_boot)
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
