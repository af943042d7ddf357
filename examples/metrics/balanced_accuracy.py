"""Balanced accuracy (the mean of per-class recalls) as a local `evaluate` metric module.

An example for a suite's `extra_metrics` (README: "Your own metrics (evaluate modules)"):

    suites:
      performance:
        extra_metrics:
          - {path: examples/metrics/balanced_accuracy.py, key: balanced_accuracy, name: bal_acc,
             higher_is_better: true, range: [0, 1]}
"""

import datasets
import evaluate
from sklearn.metrics import balanced_accuracy_score


class BalancedAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Balanced accuracy: the mean recall over the classes present in the references.",
            citation="",
            inputs_description="predictions and references: integer class ids of the same length.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"balanced_accuracy": float(balanced_accuracy_score(references, predictions))}
