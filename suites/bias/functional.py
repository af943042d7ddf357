"""Functional sets (HateCheck-style): accuracy per target and functionality, its paired change
against the dense model, and the disparate impact of pruning over the targets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from audit import stats
from audit.data import EvalSet
from audit.results import Measurement
from audit.suite import SuiteContext, accuracy_delta_measurement
from suites.bias.pruning_impact import disparate_impact

if TYPE_CHECKING:
    from suites.bias.run import BiasSuite


def functional_metrics(
    suite: BiasSuite, ctx: SuiteContext, k: int, fes: EvalSet, pred: np.ndarray, base_pred: np.ndarray | None
) -> list[Measurement]:
    out = stats.group_measurements(
        suite=suite.name,
        dataset=fes.name,
        metrics=[stats.accuracy_metric(ctx.num_labels)],
        y_true=fes.labels,
        y_pred=pred,
        groups=fes.groups,
        n_boot=ctx.n_boot,
        level=ctx.ci_level,
        seed=ctx.seed + k,
        intersections=False,
        min_group_n=suite.params.min_group_n,
    )
    if base_pred is None:
        return out
    out.append(accuracy_delta_measurement(suite.name, fes.name, fes.labels, pred, base_pred, ctx, seed=ctx.seed + k))
    di = disparate_impact(suite, ctx, fes.name, fes.labels, pred, base_pred, fes.groups, intersections=False)
    if di is not None:
        out.append(di)
    return out
