"""The suite plugin API: :class:`Variant`, :class:`SuiteContext`, :class:`Suite`.

A suite is constructed once per run with its validated params, gets :meth:`Suite.setup`
once (load its datasets, fail early on bad input), then :meth:`Suite.run` once per
variant, dense baseline first. What it returns for the baseline as ``artifacts`` is
handed back on every later variant as ``ctx.baseline``, so paired dense-vs-pruned
statistics are computed on the same examples.

A third-party suite::

    from audit.registry import SuiteSpec, MetricSpec, PluginParams, register

    class Params(PluginParams):
        threshold: float = 0.5

    SPEC = register(SuiteSpec(
        name="toxicity", impl="my_pkg.toxicity:ToxicitySuite", params=Params,
        summary="...", metrics=(MetricSpec("auc", "ROC AUC", higher_is_better=True),),
    ))

    class ToxicitySuite(Suite):
        def run(self, variant, ctx):
            proba = ctx.proba(variant, ctx.eval_set.texts)
            ...
            return SuiteOutput(measurements=[...])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.registry import PluginParams, SuiteSpec
from audit.results import DatasetIdentity, DeploymentRecord, Measurement, PruningRecord

if TYPE_CHECKING:
    from audit.config import AuditConfig, DatasetRef
    from audit.data import EvalSet
    from audit.inference import Predictor
    from audit.plan import SweepPoint

log = logging.getLogger(__name__)


@dataclass
class Variant:
    """A model as deployed, with the decisions that made it."""

    point: SweepPoint
    model: Any
    pruning: PruningRecord | None = None
    deployment: DeploymentRecord | None = None

    @property
    def id(self) -> str:
        return self.point.id

    @property
    def is_baseline(self) -> bool:
        return self.point.is_baseline


@dataclass
class SuiteOutput:
    """What a suite returns for one variant."""

    measurements: list[Measurement] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    """Arrays kept for paired comparisons (only the baseline's are kept)."""
    examples: list[dict[str, Any]] = field(default_factory=list)
    """A few illustrative rows for the report (already truncated, plain strings)."""
    warnings: list[str] = field(default_factory=list)
    datasets: list[DatasetIdentity] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)
    """Metric ids (``suite/dataset/metric``) this suite could not produce on this data, with why
    (e.g. no group columns). A policy rule on them is SKIP with the reason, not ERROR; a
    metric the suite should have produced but did not stays an ERROR."""


@dataclass
class PredictionSet:
    """One dataset's per-example predictions and gold references, as a suite gives them to ``extra_metrics``.

    ``groups``: sensitive column (or intersection ``"a&b"``) -> one group per example; the
    extra metrics are computed per group of each (fairlearn ``MetricFrame``).
    """

    dataset: str
    predictions: np.ndarray
    references: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DefiningExamples:
    """The examples that define one of a suite's regressions, for regression attribution.

    ``texts``, ``text_pairs``, ``labels`` and ``groups`` (its group columns) are the whole set
    the regressing measurement was computed on; ``members`` are the rows that define the
    regression (every row, or one group's). :mod:`audit.attribution` re-scores the members with
    groups of layers restored to dense and re-measures ``measure`` on them (``accuracy``: each
    example scores 1 when its predicted class is its label; ``counterfactual_consistency``: when
    its text and its counterpart get the same class); Tran et al.'s per-group
    diagnostics are computed over the whole set. ``scope``: which rows these are, in words.
    """

    dataset: str
    texts: list[str]
    text_pairs: list[str] | None
    labels: np.ndarray
    members: np.ndarray
    scope: str
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    measure: str = "accuracy"
    counterparts: list[str] | None = None
    """``measure: counterfactual_consistency``: each text's counterfactual (same text pair), row by row; an
    example scores 1 when the model gives both texts the same class (one minus the counterfactual flip)."""

    @classmethod
    def of(cls, es: EvalSet, members: np.ndarray | None = None, scope: str = "every example") -> DefiningExamples:
        """The rows ``members`` (default: all) of ``es``."""
        rows = np.arange(len(es)) if members is None else np.asarray(members, dtype=np.int64)
        groups = {k: np.asarray(v, dtype=object).astype(str) for k, v in es.groups.items()}
        return cls(es.name, list(es.texts), es.text_pairs, np.asarray(es.labels), rows, scope, groups)


@dataclass
class SuiteContext:
    """Everything a suite may use; shared by all suites of a run."""

    config: AuditConfig
    eval_set: EvalSet
    predictor: Predictor
    id2label: dict[int, str]
    seed: int = 0
    n_boot: int = 1000
    ci_level: float = 0.95
    baseline: dict[str, Any] | None = None
    """The artifacts this suite returned for the dense baseline (None while running it)."""
    _datasets: dict[str, EvalSet] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def proba(self, variant: Variant, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Class probabilities of ``variant``'s deployed model."""
        return self.predictor.proba(variant.model, texts, pairs)

    def load_dataset(self, ref: DatasetRef, *, need_label: bool = True) -> EvalSet:
        """Load (once per run) an extra dataset named in suite params.

        Its identity records how many texts the tokenizer truncates (see
        :meth:`record_truncation`).
        """
        from audit.data import load_ref

        key = f"{ref.name}:{need_label}:{ref.model_dump_json()}"
        if key not in self._datasets:
            es = load_ref(ref, self.config, self.id2label, need_label=need_label)
            self.record_truncation(es)
            self._datasets[key] = es
        return self._datasets[key]

    def record_truncation(self, es: EvalSet) -> int:
        """Record on ``es.identity`` how many of its texts exceed ``max_length`` tokens (tokenized once, cached).

        Suites call it for every set they build themselves (e.g. corrupted copies)
        and return in :attr:`SuiteOutput.datasets`.
        """
        from audit.data import record_truncation

        return record_truncation(es, self.predictor)

    def for_suite(self, baseline: dict[str, Any] | None) -> SuiteContext:
        """A view of this context with another suite's baseline artifacts."""
        ctx = SuiteContext(
            config=self.config,
            eval_set=self.eval_set,
            predictor=self.predictor,
            id2label=self.id2label,
            seed=self.seed,
            n_boot=self.n_boot,
            ci_level=self.ci_level,
            baseline=baseline,
        )
        ctx._datasets = self._datasets
        return ctx


class Suite:
    """Base class of suites. Subclasses implement :meth:`run`."""

    spec: SuiteSpec
    keeps_variant_artifacts: bool = False
    """Whether a pruned variant's artifacts are stored with its output (the baseline's always are) and
    handed to :meth:`defining_examples` as ``artifacts=``: for a suite whose regressions are defined by
    what it produced on the variant (the adversarial suite's attacked examples)."""

    def __init__(self, spec: SuiteSpec, params: PluginParams) -> None:
        self.spec = spec
        self.params = params

    @property
    def name(self) -> str:
        return self.spec.name

    def setup(self, ctx: SuiteContext) -> None:  # noqa: B027 - optional hook
        """Load datasets and resources once; raise :class:`audit.errors.UsageError` on bad input."""

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        raise NotImplementedError

    def prediction_sets(self, artifacts: dict[str, Any], ctx: SuiteContext) -> list[PredictionSet]:
        """The per-example predictions in ``artifacts`` (what :meth:`run` returned for a variant) with their references.

        Suites whose spec sets ``predictions=True`` implement it; :mod:`audit.extra_metrics`
        computes a config's ``extra_metrics`` on them, for the variant and (from
        ``ctx.baseline``) for dense, so both are paired on the same examples.
        """
        return []

    def defining_examples(self, metric: str, dataset: str, test: str, ctx: SuiteContext) -> DefiningExamples | None:
        """The examples whose accuracy defines the regression of ``<suite>/<dataset>/<metric>`` at ``test``.

        ``test``: the path of the regressing test in the measurement's details (``paired``,
        ``paired_groups.<feature>.<group>``). None (the default): this suite's regression cannot be
        re-measured from per-example correctness, and attribution records why. Called after :meth:`setup`,
        with ``ctx.baseline`` the dense model's artifacts of this suite; a suite that sets
        :attr:`keeps_variant_artifacts` also gets the variant's own as the keyword ``artifacts``.
        """
        return None


def eval_set_examples(
    es: EvalSet, *, test: str, intersections: bool = True, group_path: str = "paired_groups"
) -> DefiningExamples | None:
    """Every row of ``es`` (``test`` is ``paired``), or one group's (``<group_path>.<feature>.<group>``).

    The feature may be an intersection (``a&b``, when ``intersections``); None when ``test`` names
    neither, or a group with no rows.
    """
    from audit import stats

    if test == "paired":
        return DefiningExamples.of(es)
    head, _, rest = test.partition(".")
    if head != group_path or not rest:
        return None
    features = stats.feature_columns(es.groups, intersections) if es.groups else {}
    for feat in sorted(features, key=len, reverse=True):  # a feature name may hold dots: the longest first
        if rest.startswith(f"{feat}."):
            group = rest[len(feat) + 1 :]
            members = np.flatnonzero(features[feat] == group)
            return DefiningExamples.of(es, members, f"{feat}={group}") if len(members) else None
    return None


def prediction_details(labels: np.ndarray, pred: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
    """``details`` entries of an accuracy measurement: the predicted-class and label distributions.

    Shown next to accuracy so that a model drifting towards one class is visible
    (``predicted_classes`` / ``label_classes``: label name -> share).
    """
    from audit import stats

    k = len(id2label)
    names = [id2label.get(i, str(i)) for i in range(k)]
    pred_share, label_share = stats.class_shares(pred, k), stats.class_shares(labels, k)
    return {
        "predicted_classes": {n: float(x) for n, x in zip(names, pred_share, strict=True)},
        "label_classes": {n: float(x) for n, x in zip(names, label_share, strict=True)},
    }


def add_prediction_details(
    measurements: list[Measurement], labels: np.ndarray, pred: np.ndarray, ctx: SuiteContext
) -> None:
    """Put :func:`prediction_details` into the ``accuracy`` measurement among ``measurements``."""
    for m in measurements:
        if m.metric == "accuracy":
            m.details.update(prediction_details(labels, pred, ctx.id2label))


def flag_suspicious_gain(
    m: Measurement, labels: np.ndarray, pred: np.ndarray, base_pred: np.ndarray, ctx: SuiteContext
) -> None:
    """Mark an ``accuracy_delta`` gain that rests on a below-chance dense model or collapsed predictions.

    Sets ``details["suspicious_gain"]`` (the reason, see :func:`audit.stats.suspicious_gain`)
    and the variant's predicted-class distribution; :mod:`audit.analysis` lists flagged
    gains in ``statistics["suspicious_gains"]`` and the reports show them.
    """
    from audit import stats

    m.details.update(prediction_details(labels, pred, ctx.id2label))
    reason = stats.suspicious_gain(labels, pred, base_pred, ctx.num_labels, class_names=ctx.id2label)
    if reason is not None:
        m.details["suspicious_gain"] = reason


def accuracy_delta_measurement(
    suite: str,
    dataset: str,
    labels: np.ndarray,
    pred: np.ndarray,
    base_pred: np.ndarray,
    ctx: SuiteContext,
    *,
    seed: int,
) -> Measurement:
    """``<suite>/<dataset>/accuracy_delta``: variant minus dense accuracy on the same examples.

    Paired bootstrap CI and exact McNemar test, as the :class:`audit.paired.PairedComparison`
    in ``details["paired"]``, where :mod:`audit.analysis` finds it for the FDR control.
    """
    from audit import paired

    rec = paired.paired_binary(base_pred == labels, pred == labels, n_boot=ctx.n_boot, level=ctx.ci_level, seed=seed)
    m = paired.delta_measurement(rec, suite=suite, dataset=dataset, metric="accuracy_delta")
    flag_suspicious_gain(m, labels, pred, base_pred, ctx)
    return m
