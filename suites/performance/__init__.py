"""Performance suite: accuracy and macro-F1 on the in-distribution eval split, per group,
and the paired change vs the dense baseline.
"""

from __future__ import annotations

from audit.registry import SUITES, MetricSpec, PluginParams, SuiteSpec


class PerformanceParams(PluginParams):
    """Accuracy on the eval split.

    ```yaml
    suites:
      performance: {intersections: true}
    ```
    """

    intersections: bool = True
    """Also report the intersection of all group columns."""


METRICS = (
    MetricSpec("accuracy", "Share of examples classified correctly.", higher_is_better=True),
    MetricSpec("macro_f1", "Unweighted mean of per-class F1 scores.", higher_is_better=True),
    MetricSpec(
        "accuracy_delta",
        "Accuracy of the variant minus accuracy of the dense model on the same examples "
        "(paired bootstrap CI; exact McNemar p-value in details).",
        higher_is_better=True,
        range=(-1.0, 1.0),
    ),
    MetricSpec(
        "agreement",
        "Share of examples on which the variant predicts the same class as the dense model.",
        higher_is_better=True,
    ),
)

SPEC = SUITES.register(
    SuiteSpec(
        name="performance",
        predictions=True,  # extra_metrics: see prediction_sets in run.py
        impl="suites.performance.run:PerformanceSuite",
        summary="Accuracy and macro-F1 on the eval split, per group, paired vs dense.",
        params=PerformanceParams,
        metrics=METRICS,
        tags=("core",),
        title="In-distribution performance",
        report_order=10,
        always_reported=True,
        model_kinds=("classifier", "causal-lm"),  # a causal LM as a zero-shot classifier (model.zero_shot)
    )
)
