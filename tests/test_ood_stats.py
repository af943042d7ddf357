from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from audit import paired, stats


def _ece_loop(proba: np.ndarray, y: np.ndarray, bins: int) -> float:
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.sum() / len(y) * abs(correct[m].mean() - conf[m].mean())
    return total


@pytest.fixture()
def probs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 700
    p1 = rng.beta(2, 2, n)
    proba = np.stack([1 - p1, p1], axis=1)
    y = (rng.random(n) < p1**1.5).astype(int)  # miscalibrated on purpose
    return proba, y


def test_ece_matches_its_definition(probs) -> None:
    proba, y = probs
    for bins in (5, 15):
        assert stats.expected_calibration_error(proba, y, n_bins=bins) == pytest.approx(_ece_loop(proba, y, bins))
    # a perfectly confident, always-right model is calibrated; always wrong at confidence 1 is maximal
    onehot = np.eye(2)[y]
    assert stats.expected_calibration_error(onehot, y) == 0.0
    assert stats.expected_calibration_error(onehot, 1 - y) == pytest.approx(1.0)


def test_bootstrap_ece_is_the_ece_of_each_resample(probs) -> None:
    proba, y = probs
    idx = stats.bootstrap_indices(len(y), 20, 1)
    boot = stats.bootstrap_ece(proba, y, idx, n_bins=10)
    for b in (0, 7, 19):
        assert boot[b] == pytest.approx(stats.expected_calibration_error(proba[idx[b]], y[idx[b]], n_bins=10))


def test_auc_helpers_agree_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = rng.normal(size=300) + y
    s[:20] = 0.5  # ties
    assert stats.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(stats.roc_auc(s, np.ones(300, bool)))
    order = np.concatenate([np.flatnonzero(y), np.flatnonzero(~y)])
    assert stats.auc_from_ranks(s[order][None, :], int(y.sum()))[0] == pytest.approx(roc_auc_score(y, s))
    boot, mirrored = stats.bootstrap_auc(s, y, n_boot=200, seed=0, paired_with=-s)
    assert boot.shape == (200,) and mirrored is not None
    assert np.allclose(mirrored, 1 - boot)  # same resamples: a mirrored score has the mirrored AUC
    lo, hi = stats.percentile_ci(boot)
    assert lo < roc_auc_score(y, s) < hi


def test_confusion_from_index_and_paired_continuous() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    p = np.where(rng.random(100) < 0.7, y, rng.integers(0, 3, 100))
    idx = stats.bootstrap_indices(100, 5, 0)
    cm = stats.confusion_from_index(y, p, idx, 3)
    for b in range(5):
        assert np.array_equal(cm[b], stats.confusion_counts(y[idx[b]], p[idx[b]], 3))
    rec = paired.paired_continuous(
        baseline=0.8, value=0.7, boot_deltas=rng.normal(-0.1, 0.02, 500), level=0.95, test="t", n=100
    ).to_dict()
    assert rec["delta"] == pytest.approx(-0.1)
    assert rec["ci_low"] < -0.1 < rec["ci_high"] and rec["p_value"] < 1e-4
    null = paired.paired_continuous(baseline=0.8, value=0.8, boot_deltas=np.zeros(50), level=0.95, test="t", n=100)
    assert null.p_value == 1.0
