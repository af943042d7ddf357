from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score, f1_score

from audit import paired, stats


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    n = 500
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.85, y, 1 - y)
    g = rng.choice(["a", "b", "c"], n, p=[0.5, 0.4, 0.1])
    h = rng.choice(["x", "y"], n)
    return y, pred, g, h


def test_confusion_metrics_match_sklearn(data) -> None:
    y, p, _, _ = data
    assert stats.accuracy_metric(2)(y, p) == pytest.approx(accuracy_score(y, p))
    assert stats.macro_f1_metric(2)(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    y3 = np.array([0, 1, 2, 2, 1])
    p3 = np.array([0, 2, 2, 2, 0])
    assert stats.macro_f1_metric(3)(y3, p3) == pytest.approx(f1_score(y3, p3, average="macro"))
    tn = np.sum((y == 0) & (p == 0))
    fp = np.sum((y == 0) & (p == 1))
    assert stats.false_positive_rate_metric()(y, p) == pytest.approx(fp / (fp + tn))
    assert stats.selection_rate_metric()(y, p) == pytest.approx(np.mean(p == 1))


def test_group_measurements_agree_with_metricframe_and_cover_points(data) -> None:
    y, p, g, h = data
    ms = stats.group_measurements(
        suite="s",
        dataset="d",
        metrics=[stats.accuracy_metric(2), stats.macro_f1_metric(2)],
        y_true=y,
        y_pred=p,
        groups={"g": g, "h": h},
        n_boot=300,
        seed=1,
    )
    acc = next(m for m in ms if m.metric == "accuracy")
    assert acc.id == "s/d/accuracy" and acc.n == len(y)
    assert acc.value == pytest.approx(accuracy_score(y, p))
    assert acc.ci_low < acc.value < acc.ci_high
    mf = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=p, sensitive_features=g)
    for group, value in mf.by_group.items():
        gv = acc.groups["g"][group]
        assert gv.value == pytest.approx(value)
        assert gv.ci_low <= gv.value <= gv.ci_high
        assert gv.n == int(np.sum(g == group))
    assert set(acc.groups) == {"g", "h", "g&h"}
    for feat in acc.groups.values():
        for gv in feat.values():
            assert gv.small_n == (gv.n < stats.SMALL_GROUP_N)
    assert any(gv.small_n for gv in acc.groups["g&h"].values())  # c&x / c&y are small
    # the smaller group has the wider interval
    wa = acc.groups["g"]["a"].ci_high - acc.groups["g"]["a"].ci_low
    wc = acc.groups["g"]["c"].ci_high - acc.groups["g"]["c"].ci_low
    assert wc > wa


def test_bootstrap_is_deterministic_under_seed(data) -> None:
    y, p, g, _ = data
    kw = dict(
        suite="s", dataset="d", metrics=[stats.accuracy_metric(2)], y_true=y, y_pred=p, groups={"g": g}, n_boot=100
    )
    a = stats.group_measurements(seed=3, **kw)[0]
    b = stats.group_measurements(seed=3, **kw)[0]
    c = stats.group_measurements(seed=4, **kw)[0]
    assert a == b and (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_mcnemar_and_paired_delta() -> None:
    a = np.array([1] * 80 + [0] * 20, dtype=bool)
    b = a.copy()
    b[:15] = False  # 15 lost, none gained
    t = paired.mcnemar_exact(a, b)
    assert (t["lost"], t["gained"], t["discordant"]) == (15, 0, 15)
    assert t["p_value"] == pytest.approx(2 * 0.5**15)
    d, lo, hi = paired.paired_bootstrap_delta(a, b, n_boot=500)
    assert d == pytest.approx(-0.15) and lo < d < hi <= 0
    assert paired.mcnemar_exact(a, a)["p_value"] == 1.0
