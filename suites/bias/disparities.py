"""Demographic-parity and equalized-odds differences (fairlearn) per sensitive feature, the worst
single feature as the measurement, with a paired bootstrap against the dense model.

The dense model's side of each pairing depends only on its predictions, the labels, the
feature and the bootstrap seed, so it is computed once per run and kept on the suite
(:func:`_dense_side`): every variant pairs against the very same resamples.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from audit import paired, stats
from audit.data import EvalSet
from audit.results import Measurement
from audit.suite import SuiteContext

if TYPE_CHECKING:
    from suites.bias.run import BiasSuite


def disparities(
    suite: BiasSuite, ctx: SuiteContext, es: EvalSet, pred: np.ndarray, base_pred: np.ndarray | None
) -> list[Measurement]:
    pos = suite.positive
    assert pos is not None
    y = (es.labels == pos).astype(np.int64)
    by_metric: dict[str, dict[str, Any]] = {"demographic_parity_difference": {}, "equalized_odds_difference": {}}
    singles = set(suite.features)
    for k, (feat, values) in enumerate(suite.all_features(suite.features).items()):
        if len(np.unique(values)) < 2:
            continue
        res = stats.disparity_differences(
            y,
            (pred == pos).astype(np.int64),
            values,
            n_boot=ctx.n_boot,
            level=ctx.ci_level,
            seed=suite.rng(ctx, 1, k),
            return_boot=True,
        )
        base = None
        if base_pred is not None:
            base = _dense_side(suite, ctx, y, (base_pred == pos).astype(np.int64), values, k)
        for metric, r in res.items():
            boot = r.pop("boot")
            entry: dict[str, Any] = {**r, "intersection": feat not in singles}
            if base is not None:
                b = base[metric]
                entry["paired"] = paired.paired_continuous(
                    baseline=b["value"],
                    value=r["value"],
                    boot_deltas=boot - b["boot"],
                    level=ctx.ci_level,
                    test="paired bootstrap within groups (normal approximation)",
                    n=len(y),
                ).to_dict()
            by_metric[metric][feat] = entry
    out = []
    for metric, feats in by_metric.items():
        candidates = {f: e for f, e in feats.items() if not e["intersection"]} or feats
        if not candidates:
            continue
        worst = max(candidates, key=lambda f: candidates[f]["value"])
        w = candidates[worst]
        out.append(
            Measurement(
                suite=suite.name,
                dataset=es.name,
                metric=metric,
                value=w["value"],
                ci_low=w["ci_low"],
                ci_high=w["ci_high"],
                ci_method=suite.ci_method(ctx, ", within groups"),
                n=len(y),
                details={"feature": worst, "by_feature": feats, "positive_class": int(pos)},
            )
        )
    return out


def _dense_side(
    suite: BiasSuite, ctx: SuiteContext, y: np.ndarray, base: np.ndarray, values: np.ndarray, k: int
) -> dict[str, dict[str, Any]]:
    """The dense model's disparities with their resamples, computed once per distinct input."""
    h = hashlib.blake2b(digest_size=16)
    for part in (y, base, np.asarray(values, dtype=object).astype(str)):
        h.update(repr(part.shape).encode())
        h.update(repr(part.dtype).encode() + part.tobytes())
    h.update(repr((ctx.n_boot, ctx.ci_level, ctx.seed, k)).encode())
    memo = suite.dense_disparities
    key = h.hexdigest()
    if key not in memo:
        memo[key] = stats.disparity_differences(
            y, base, values, n_boot=ctx.n_boot, level=ctx.ci_level, seed=suite.rng(ctx, 1, k), return_boot=True
        )
    return {m: dict(r) for m, r in memo[key].items()}  # callers pop from their copy
