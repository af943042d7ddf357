"""Measurements of the adversarial suite: means of per-example values, overall and per
group, with percentile-bootstrap CIs from :mod:`audit.stats` (numpy only, no textattack).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from audit import paired, stats
from audit.results import GroupValue, Measurement

SUITE = "adversarial"


def mean_measurement(
    *,
    recipe: str,
    metric: str,
    values: np.ndarray,
    groups: Mapping[str, np.ndarray] | None = None,
    n_boot: int,
    level: float,
    seed: int,
    details: dict[str, Any] | None = None,
    intersections: bool = True,
) -> Measurement:
    """Mean of ``values`` (one per example) with a bootstrap CI, and per group."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    method = f"percentile bootstrap, {n_boot} resamples, {level:.0%}" if n_boot and n else None
    lo, hi = stats.bootstrap_ci(values, n_boot=n_boot, level=level, seed=seed) if n else (None, None)
    m = Measurement(
        suite=SUITE,
        dataset=recipe,
        metric=metric,
        value=float(values.mean()) if n else None,
        ci_low=lo,
        ci_high=hi,
        ci_method=method,
        n=n,
        details=dict(details or {}),
    )
    if groups and n:
        for feat_name, feat in stats.feature_columns(groups, intersections).items():
            for group in sorted(set(feat.tolist())):
                members = feat == group
                cnt = int(members.sum())
                g_lo, g_hi = stats.bootstrap_ci(values[members], n_boot=n_boot, level=level, seed=seed)
                m.groups.setdefault(feat_name, {})[str(group)] = GroupValue(
                    value=float(values[members].mean()),
                    ci_low=g_lo,
                    ci_high=g_hi,
                    n=cnt,
                    small_n=cnt < stats.SMALL_GROUP_N,
                )
    return m


def paired_delta_measurement(
    *,
    recipe: str,
    metric: str,
    base: np.ndarray,
    variant: np.ndarray,
    n_boot: int,
    level: float,
    seed: int,
    details: dict[str, Any] | None = None,
) -> Measurement:
    """``mean(variant) - mean(base)`` on the same examples: the paired record of :func:`audit.paired.paired_binary`.

    Paired bootstrap CI (none with fewer than two resamples) and exact McNemar test, in
    ``details["paired"]``; no examples: no value, and a record with no p-value.
    """
    rec = paired.paired_binary(base, variant, n_boot=n_boot, level=level, seed=seed)
    return paired.delta_measurement(rec, suite=SUITE, dataset=recipe, metric=metric, details=details)
