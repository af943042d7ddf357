"""Out-of-distribution suite: shifted datasets and seeded corruptions of the eval set,
each compared with the in-distribution set and, paired, with the dense model.

Torch-free: spec, params and metric declarations only; the implementation is in
:mod:`suites.ood.run`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from audit.config import DatasetRef
from audit.registry import SUITES, MetricSpec, PluginParams, SuiteSpec

CorruptionKind = Literal["typo", "casing", "punctuation", "whitespace", "contraction", "synonym"]

DEFAULT_RATES: dict[str, float] = {
    "typo": 0.1,
    "casing": 0.2,
    "punctuation": 0.3,
    "whitespace": 0.1,
    "contraction": 1.0,
    "synonym": 0.2,
}


class Corruption(PluginParams):
    """One synthetic shift of the in-distribution texts (see :mod:`suites.ood.corruptions`).

    ```yaml
    - {kind: typo, rate: 0.1, seed: 0}
    ```
    """

    kind: CorruptionKind
    rate: float | None = Field(
        None, gt=0.0, le=1.0, description="Chance per word, mark or gap (default depends on the kind)."
    )
    seed: int = Field(0, ge=0)
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="Dataset id in metric ids (default: <eval set>-<kind>).",
    )
    only_changed: bool = Field(
        True,
        description="Evaluate only the rows the corruption changed (compared with the same rows uncorrupted).",
    )

    @property
    def effective_rate(self) -> float:
        return self.rate if self.rate is not None else DEFAULT_RATES[self.kind]


class ShiftedDataset(DatasetRef):
    """An other-domain labelled set; ``paired_with`` names its counterpart among the shifted sets.

    ```yaml
    - {name: contrast, path: data/revised.tsv, paired_with: original}
    - {name: original, path: data/orig.tsv}
    ```
    """

    paired_with: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="Name of another shifted set whose rows are this set's counterparts, one per row and in the "
        "same order (e.g. a contrast set and its originals): the suite reports accuracy on this set minus on "
        "the counterpart, pair by pair (paired_set_gap), and on variants the change of that gap vs dense.",
    )


def _default_corruptions() -> list[Corruption]:
    return [Corruption(kind=k) for k in DEFAULT_RATES]  # type: ignore[arg-type]


class OodParams(PluginParams):
    """Shifted sets and corruptions; every one is compared with the in-distribution eval set.

    ```yaml
    suites:
      ood:
        shifted:
          - {name: yelp, path: data/yelp.csv, columns: {text: text, label: label}}
        corruptions:
          - {kind: typo, rate: 0.1}
          - {kind: synonym, rate: 0.2, seed: 1}
        ece_bins: 15
    ```

    A shifted set may name its counterpart (``paired_with``, see :class:`ShiftedDataset`).
    """

    shifted: list[ShiftedDataset] = Field(default_factory=list, description="Other-domain labelled sets.")
    corruptions: list[Corruption] = Field(
        default_factory=_default_corruptions,
        description="Seeded corruptions of the eval set (default: all six kinds at their default rates; [] for none).",
    )
    ece_bins: int = Field(15, ge=2, le=100, description="Equal-width confidence bins of the ECE.")
    detection: bool = Field(True, description="Report OOD-detection AUROC of the max-softmax probability.")
    n_examples: int = Field(8, ge=0, le=200, description="Illustrative rows per shifted set in the report.")

    @model_validator(mode="after")
    def _unique_names(self) -> OodParams:
        names = [d.name for d in self.shifted] + [c.name for c in self.corruptions if c.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"shifted sets and corruptions need distinct names; repeated: {dup}")
        kinds = [c.kind for c in self.corruptions if not c.name]
        again = sorted({k for k in kinds if kinds.count(k) > 1})
        if again:
            raise ValueError(f"corruptions of the same kind need a `name` each to tell them apart: {again}")
        sets = [d.name for d in self.shifted]
        for i, d in enumerate(self.shifted):
            if d.paired_with is None or (d.paired_with in sets and d.paired_with != d.name):
                continue
            why = (
                "a set cannot be paired with itself"
                if d.paired_with == d.name
                else f"it names no shifted set (shifted sets: {', '.join(sets)}; corruptions are paired with the "
                "in-distribution rows already)"
            )
            error = PydanticCustomError("paired_with", f"{d.paired_with!r}: {why}")
            raise ValidationError.from_exception_data(
                "OodParams", [InitErrorDetails(type=error, loc=("shifted", i, "paired_with"), input=d.paired_with)]
            )
        return self


CITE_ECE = "Guo et al. 2017, On Calibration of Modern Neural Networks"
CITE_MSP = "Hendrycks & Gimpel 2017, A Baseline for Detecting Misclassified and Out-of-Distribution Examples"

METRICS = (
    MetricSpec("accuracy", "Share of the shifted set's examples classified correctly.", higher_is_better=True),
    MetricSpec("macro_f1", "Unweighted mean of per-class F1 on the shifted set.", higher_is_better=True),
    MetricSpec(
        "ece",
        "Expected calibration error of the top-class confidence (equal-width bins): the gap "
        "between confidence and accuracy; 0 is perfectly calibrated. Reported for the "
        "in-distribution set too.",
        higher_is_better=False,
        citation=CITE_ECE,
    ),
    MetricSpec(
        "accuracy_drop",
        "In-distribution accuracy minus accuracy on the shifted set (for corruptions: on the "
        "same rows before and after); positive is a loss under shift.",
        higher_is_better=False,
        range=(-1.0, 1.0),
    ),
    MetricSpec(
        "detection_auroc",
        "How well the max-softmax probability separates in-distribution from shifted inputs "
        "(ROC AUC, in-distribution as positive); 0.5 means the model's confidence does not "
        "notice the shift.",
        higher_is_better=True,
        citation=CITE_MSP,
    ),
    MetricSpec(
        "paired_set_gap",
        "Accuracy on this shifted set minus accuracy on its counterpart (paired_with), pair by "
        "pair (paired bootstrap CI over pairs); on variants details.paired tests the change of "
        "the gap vs dense, e.g. whether pruning widens a contrast set's gap.",
        higher_is_better=True,
        range=(-1.0, 1.0),
    ),
    MetricSpec(
        "accuracy_delta",
        "Accuracy of the variant minus accuracy of the dense model on the same shifted "
        "examples (paired bootstrap CI; exact McNemar p-value in details).",
        higher_is_better=True,
        range=(-1.0, 1.0),
    ),
)

SPEC = SUITES.register(
    SuiteSpec(
        name="ood",
        impl="suites.ood.run:OodSuite",
        summary="Accuracy, macro-F1, ECE, drop and max-softmax OOD-detection AUROC on shifted sets "
        "and seeded corruptions, paired vs dense.",
        params=OodParams,
        metrics=METRICS,
        tags=("robustness",),
        title="Out-of-distribution robustness",
        not_run="No out-of-distribution suite ran: behaviour under domain shift was not measured.",
        report_order=20,
        always_reported=True,
        model_kinds=("classifier", "causal-lm"),  # a causal LM as a zero-shot classifier (model.zero_shot)
    )
)
