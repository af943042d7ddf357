"""Implementation of the performance suite."""

from __future__ import annotations

import numpy as np

from audit import stats
from audit.results import Measurement
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant, add_prediction_details, flag_suspicious_gain


class PerformanceSuite(Suite):
    """Accuracy and macro-F1 overall and per group; paired deltas vs dense."""

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        es = ctx.eval_set
        proba = ctx.proba(variant, es.texts, es.text_pairs)
        pred = proba.argmax(axis=1)
        correct = pred == es.labels
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
            base_correct = base_pred == es.labels
            delta, lo, hi = stats.paired_bootstrap_delta(
                base_correct, correct, n_boot=ctx.n_boot, level=ctx.ci_level, seed=ctx.seed
            )
            test = stats.mcnemar_exact(base_correct, correct)
            delta_m = Measurement(
                suite=self.name,
                dataset=es.name,
                metric="accuracy_delta",
                value=delta,
                ci_low=lo,
                ci_high=hi,
                ci_method=stats.ci_method(f"paired bootstrap, {ctx.n_boot} resamples", ctx.n_boot),
                n=len(es),
                details={"mcnemar": test},
            )
            flag_suspicious_gain(delta_m, es.labels, pred, base_pred, ctx)
            measurements.append(delta_m)
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
