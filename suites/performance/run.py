"""Implementation of the performance suite."""

from __future__ import annotations

from typing import Any

import numpy as np

from audit import stats
from audit.results import Measurement
from audit.suite import (
    DefiningExamples,
    PredictionSet,
    Suite,
    SuiteContext,
    SuiteOutput,
    Variant,
    accuracy_delta_measurement,
    add_prediction_details,
    eval_set_examples,
)


class PerformanceSuite(Suite):
    """Accuracy and macro-F1 overall and per group; paired deltas vs dense."""

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        es = ctx.eval_set
        proba = ctx.proba(variant, es.texts, es.text_pairs)
        pred = proba.argmax(axis=1)
        measurements = stats.group_measurements(
            suite=self.name,
            dataset=es.name,
            metrics=[stats.accuracy_metric(ctx.num_labels), stats.macro_f1_metric(ctx.num_labels)],
            y_true=es.labels,
            y_pred=pred,
            groups=es.groups,
            n_boot=ctx.n_boot,
            level=ctx.ci_level,
            seed=ctx.seed,
            intersections=self.params.intersections,
        )
        add_prediction_details(measurements, es.labels, pred, ctx)
        if ctx.baseline is not None:
            base_pred = np.asarray(ctx.baseline["pred"])
            delta = accuracy_delta_measurement(self.name, es.name, es.labels, pred, base_pred, ctx, seed=ctx.seed)
            measurements.append(delta)
            same = pred == base_pred
            lo, hi = stats.bootstrap_ci(same.astype(float), n_boot=ctx.n_boot, level=ctx.ci_level, seed=ctx.seed)
            measurements.append(
                Measurement(
                    suite=self.name,
                    dataset=es.name,
                    metric="agreement",
                    value=float(same.mean()),
                    ci_low=lo,
                    ci_high=hi,
                    ci_method=stats.ci_method(f"bootstrap, {ctx.n_boot} resamples", ctx.n_boot),
                    n=len(es),
                )
            )
        return SuiteOutput(measurements=measurements, artifacts={"pred": pred.tolist()})

    def defining_examples(self, metric: str, dataset: str, test: str, ctx: SuiteContext) -> DefiningExamples | None:
        """Accuracy and its paired change: every example of the eval set."""
        if metric not in ("accuracy", "accuracy_delta") or dataset != ctx.eval_set.name or test != "paired":
            return None
        return eval_set_examples(ctx.eval_set, test=test, intersections=self.params.intersections)

    def prediction_sets(self, artifacts: dict[str, Any], ctx: SuiteContext) -> list[PredictionSet]:
        """The eval set's predicted classes against its labels, grouped by its group columns."""
        es = ctx.eval_set
        groups = stats.feature_columns(es.groups, self.params.intersections) if es.groups else {}
        return [PredictionSet(es.name, np.asarray(artifacts["pred"], dtype=np.int64), np.asarray(es.labels), groups)]
