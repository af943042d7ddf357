"""FPR, FNR and selection rate per sensitive group and intersection (fairlearn ``MetricFrame``
through :func:`audit.stats.group_measurements`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from audit import stats
from audit.data import EvalSet
from audit.results import Measurement
from audit.suite import SuiteContext

if TYPE_CHECKING:
    from suites.bias.run import BiasSuite


def group_rates(suite: BiasSuite, ctx: SuiteContext, es: EvalSet, pred: np.ndarray) -> list[Measurement]:
    pos = suite.positive
    assert pos is not None
    y = (es.labels == pos).astype(np.int64)
    p = (pred == pos).astype(np.int64)
    return stats.group_measurements(
        suite=suite.name,
        dataset=es.name,
        metrics=[
            stats.false_positive_rate_metric(),
            stats.false_negative_rate_metric(),
            stats.selection_rate_metric(),
        ],
        y_true=y,
        y_pred=p,
        groups=suite.features,
        n_boot=ctx.n_boot,
        level=ctx.ci_level,
        seed=ctx.seed,
        intersections=suite.params.intersections,
        min_group_n=suite.params.min_group_n,
    )
