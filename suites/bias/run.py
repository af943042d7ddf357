"""Implementation of the bias suite.

On the eval set: FPR, FNR and selection rate per sensitive group and intersection
(fairlearn ``MetricFrame`` through :func:`audit.stats.group_measurements`),
demographic-parity and equalized-odds differences (fairlearn), counterfactual
identity-term swaps. On extra sets: subgroup/BPSN/BNSP AUCs (Borkan et al. 2019) for
toxicity-style sets with identity columns, per-target accuracy for functional sets.

On pruned variants, against the dense model on the same examples: the disparate
impact of pruning per group (Tran et al. 2022) with an exact McNemar test per group,
pruning-identified exemplars per group (Hooker et al. 2019), paired tests of every
disparity and of counterfactual sensitivity, DeLong tests of every subgroup AUC.
Each test's p-value sits in ``details``; :mod:`audit.analysis` adds BH q-values once
every variant has run.

This module is the orchestration: :class:`BiasSuite` validates and prepares its inputs once
(:meth:`BiasSuite.setup`) and runs each analysis per variant (:meth:`BiasSuite.run`). The
analyses are their own modules: :mod:`suites.bias.group_rates`, :mod:`suites.bias.disparities`,
:mod:`suites.bias.counterfactual_metrics`, :mod:`suites.bias.identity`,
:mod:`suites.bias.functional` and :mod:`suites.bias.pruning_impact`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from audit import stats
from audit.data import MISSING_GROUP, EvalSet
from audit.errors import DataError, UsageError
from audit.results import DatasetIdentity, Measurement
from audit.suite import DefiningExamples, PredictionSet, Suite, SuiteContext, SuiteOutput, Variant, eval_set_examples
from suites.bias import BiasParams
from suites.bias.counterfactual_metrics import CounterfactualSet, counterfactual_metrics, find_counterfactuals
from suites.bias.disparities import disparities
from suites.bias.functional import functional_metrics
from suites.bias.group_rates import group_rates
from suites.bias.identity import (
    GENERALIZED_MEAN_POWER,
    IdentitySet,
    generalized_mean,
    identity_metrics,
    load_identity_set,
)
from suites.bias.pruning_impact import disparate_impact, pie

__all__ = ["BiasSuite", "CounterfactualSet", "GENERALIZED_MEAN_POWER", "IdentitySet", "generalized_mean"]

log = logging.getLogger(__name__)


class BiasSuite(Suite):
    """Group fairness, counterfactual invariance, subgroup AUCs, and pruning's effect on each."""

    params: BiasParams

    # -- setup: everything validated and prepared once ----------------------------------------------

    def setup(self, ctx: SuiteContext) -> None:
        self._setup_warnings: list[str] = []
        self.dense_disparities: dict[str, dict[str, dict[str, Any]]] = {}  # suites/bias/disparities.py
        es = ctx.eval_set
        self.positive = self._positive_index(ctx)
        self.features = self._sensitive_features(es)
        for name, values in self.features.items():
            self._check_groups(f"eval set {es.name!r}, sensitive column {name!r}", values)
        self.cf = find_counterfactuals(self, es) if self.params.counterfactual.enabled else None
        self.identity_sets = [load_identity_set(self, ctx, ref) for ref in self.params.identity_sets]
        self.functional_sets = []
        for ref in self.params.functional_sets:
            fes = ctx.load_dataset(ref)
            if not fes.groups:
                raise DataError(
                    f"functional set {ref.name!r} names no target column",
                    where=f"suites.bias.functional_sets[{ref.name}]",
                    hint="name the target (and functionality) columns in columns.groups",
                )
            for g, values in fes.groups.items():
                self._check_groups(f"functional set {ref.name!r}, column {g!r}", values)
            self.functional_sets.append(fes)

    def warn(self, msg: str) -> None:
        """Log a setup warning; it is reported once, on the dense baseline."""
        log.warning(msg)
        self._setup_warnings.append(msg)

    def _positive_index(self, ctx: SuiteContext) -> int | None:
        p = self.params.positive_label
        labels = dict(sorted(ctx.id2label.items()))
        if p is None:
            if ctx.num_labels == 2:
                return 1
            if self.params.identity_sets:
                raise UsageError(
                    f"identity-subgroup AUCs need a positive class, and the model has {ctx.num_labels} labels {labels}",
                    where="suites.bias.positive_label",
                    hint="set positive_label to the class scored as positive (e.g. toxic)",
                )
            self.warn(
                f"bias: the model has {ctx.num_labels} labels and no positive_label is set: FPR, FNR, "
                "selection rate and parity differences are not reported"
            )
            return None
        if isinstance(p, int) or str(p).strip().lstrip("-").isdigit():
            idx = int(p)
            if 0 <= idx < ctx.num_labels:
                return idx
        else:
            by_name = {name.strip().lower(): i for i, name in ctx.id2label.items()}
            if str(p).strip().lower() in by_name:
                return by_name[str(p).strip().lower()]
        raise UsageError(
            f"positive_label {p!r} is not a label of the model (labels: {labels})",
            where="suites.bias.positive_label",
            hint="name one of the model's labels, by index or by name",
        )

    def _sensitive_features(self, es: EvalSet) -> dict[str, np.ndarray]:
        cols = self.params.sensitive_columns
        if cols is None:
            cols = list(es.groups)
            if not cols:
                self.warn(
                    "bias: no sensitive columns (data.columns.groups is empty and suites.bias.sensitive_columns "
                    "is not set): group metrics are overall only"
                )
        out = {}
        for c in cols:
            if c in es.groups:
                out[c] = np.asarray(es.groups[c], dtype=object).astype(str)
            elif c in es.columns:
                out[c] = np.asarray(
                    [MISSING_GROUP if v is None or v == "" else str(v) for v in es.columns[c]], dtype=object
                )
            else:
                raise DataError(
                    f"sensitive column {c!r} is not in the eval set; it has columns "
                    f"{sorted([*es.groups, *es.columns])}",
                    where="suites.bias.sensitive_columns",
                    hint="name a column of the eval data",
                )
        return out

    def _check_groups(self, where: str, values: np.ndarray) -> None:
        uniq, counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)
        if len(uniq) < 2:
            self.warn(
                f"{where} has a single group ({str(uniq[0])!r}, n={int(counts[0])}): no between-group comparison "
                "is possible; its values are reported but it has no disparity"
                if len(uniq)
                else f"{where} is empty"
            )
        small = [f"{g} (n={c})" for g, c in zip(uniq, counts, strict=True) if c < self.params.min_group_n]
        if small:
            self.warn(
                f"{where}: groups smaller than min_group_n={self.params.min_group_n} are reported with wide "
                f"CIs and flagged small_n: {', '.join(small)}"
            )

    def _lexicon(self, *, strict: bool, names: bool = True) -> Any:
        from suites.bias.counterfactual import Lexicon
        from suites.bias.terms import CATEGORIES, NAMES

        cp = self.params.counterfactual
        cats = {**CATEGORIES, **cp.terms}
        if cp.categories is not None:
            cats = {c: g for c, g in cats.items() if c in cp.categories}
        nm = (NAMES if cp.names is None else cp.names) if names else None
        if nm and cp.categories is not None and not ({"gender", "race"} & set(cp.categories)):
            nm = None
        return Lexicon(cats, nm, strict=strict)

    # -- helpers the analyses share ----------------------------------------------------------------------

    def ci_method(self, ctx: SuiteContext, suffix: str = "") -> str | None:
        """The CI method text of a percentile bootstrap (None without resamples)."""
        return stats.ci_method(f"percentile bootstrap, {ctx.n_boot} resamples, {ctx.ci_level:.0%}{suffix}", ctx.n_boot)

    def rng(self, ctx: SuiteContext, *parts: int) -> np.random.Generator:
        """A generator seeded by the run's seed and ``parts`` (one stream per analysis, feature, ...)."""
        return np.random.default_rng([ctx.seed, 7, *parts])

    def defining_examples(self, metric: str, dataset: str, test: str, ctx: SuiteContext) -> DefiningExamples | None:
        """Pruning's disparate impact on one group (``paired_groups.<feature>.<group>``): that group's examples,
        re-measured as accuracy; the counterfactual flip rate (overall or one swap): its counterfactual pairs,
        re-measured as their consistency. The suite's other tests (rates, subgroup AUCs, probability shifts)
        are not per-example scores.
        """
        if dataset != ctx.eval_set.name:
            return None
        if metric == "counterfactual_flip_rate":
            return self._counterfactual_examples(test, ctx)
        if metric != "pruning_disparate_impact":
            return None
        return eval_set_examples(ctx.eval_set, test=test, intersections=self.params.intersections)

    def _counterfactual_examples(self, test: str, ctx: SuiteContext) -> DefiningExamples | None:
        """The counterfactual flip rate's pairs (every pair at ``paired``, one category's swap at
        ``paired_groups.<category>.<pair>``): each eval text with its counterfactual, re-measured as
        their consistency (same class on both, one minus the flip).
        """
        cf = self.cf
        if cf is None:
            return None
        if test == "paired":
            keep = np.arange(len(cf.texts))
            scope = f"the {len(keep)} counterfactual pairs of {len(np.unique(cf.rows))} eval texts"
        else:
            parts = test.split(".", 2)
            if len(parts) != 3 or parts[0] != "paired_groups":
                return None
            keep = np.flatnonzero((cf.categories == parts[1]) & (cf.pairs == parts[2]))
            if not len(keep):
                return None
            scope = f"the {len(keep)} counterfactual pairs swapping {parts[1]} {parts[2]}"
        es = ctx.eval_set
        rows = cf.rows[keep]
        return DefiningExamples(
            dataset=es.name,
            texts=[es.texts[i] for i in rows],
            text_pairs=[es.text_pairs[i] for i in rows] if es.text_pairs is not None else None,
            labels=np.asarray(es.labels)[rows],
            members=np.arange(len(keep)),
            scope=scope + " (pairs resampled one by one, not clustered by text as the flip rate's own test is)",
            groups={
                "category": np.asarray(cf.categories[keep], dtype=object).astype(str),
                "pair": np.asarray(cf.pairs[keep], dtype=object).astype(str),
            },  # fmt: skip
            measure="counterfactual_consistency",
            counterparts=[cf.texts[i] for i in keep],
        )

    def all_features(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The sensitive features and, when ``intersections`` is set, their intersections."""
        return stats.feature_columns(features, self.params.intersections) if features else {}

    def _not_applicable(self, ctx: SuiteContext, variant: Variant) -> dict[str, str]:
        """Eval-set metrics this data cannot give, with why (a rule on them is SKIP, not ERROR)."""
        es = ctx.eval_set
        out: dict[str, str] = {}

        def na(metrics: tuple[str, ...], reason: str) -> None:
            out.update({f"{self.name}/{es.name}/{m}": reason for m in metrics})

        if self.positive is None:
            na(
                ("fpr", "fnr", "selection_rate", "demographic_parity_difference", "equalized_odds_difference"),
                f"the model has {ctx.num_labels} labels and suites.bias.positive_label is not set",
            )
        if not self.features:
            reason = (
                "the eval data has no sensitive-group columns (data.columns.groups and "
                "suites.bias.sensitive_columns are empty)"
            )
        elif all(len(np.unique(v)) < 2 for v in self.features.values()):
            reason = f"every sensitive column ({', '.join(sorted(self.features))}) has a single group"
        else:
            reason = ""
        if reason:
            na(("demographic_parity_difference", "equalized_odds_difference"), reason)
            if not self.features and not variant.is_baseline:
                na(("pruning_disparate_impact",), reason)
        if self.cf is None:
            na(
                ("counterfactual_flip_rate", "counterfactual_prob_shift"),
                "no identity terms (names, pronouns, identity words) were found in the eval texts"
                if self.params.counterfactual.enabled
                else "counterfactual tests are disabled (suites.bias.counterfactual.enabled: false)",
            )
        return out

    def prediction_sets(self, artifacts: dict[str, Any], ctx: SuiteContext) -> list[PredictionSet]:
        """The eval set's predicted classes against its labels, grouped by the sensitive columns (and intersections)."""
        es = ctx.eval_set
        pred = np.asarray(artifacts["proba"]).argmax(axis=1)
        return [PredictionSet(es.name, pred, np.asarray(es.labels), self.all_features(self.features))]

    # -- the suite ----------------------------------------------------------------------------------------

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        es = ctx.eval_set
        base = ctx.baseline
        proba = ctx.proba(variant, es.texts, es.text_pairs)
        pred = proba.argmax(axis=1)
        base_proba = np.asarray(base["proba"]) if base is not None else None
        base_pred = base_proba.argmax(axis=1) if base_proba is not None else None
        artifacts: dict[str, Any] = {"proba": proba}
        measurements: list[Measurement] = []
        examples: list[dict[str, Any]] = []
        datasets: list[DatasetIdentity] = []

        if self.positive is not None:
            measurements += group_rates(self, ctx, es, pred)
            measurements += disparities(self, ctx, es, pred, base_pred)
        if self.cf is not None:
            ms, arts = counterfactual_metrics(self, ctx, variant, proba, base)
            measurements += ms
            artifacts.update(arts)
        if base_proba is not None and base_pred is not None:
            di = disparate_impact(
                self, ctx, es.name, es.labels, pred, base_pred, self.features, self.params.intersections
            )
            if di is not None:
                measurements.append(di)
            pie_rate, rows = pie(self, ctx, es, proba, base_proba)
            measurements.append(pie_rate)
            examples += rows

        artifacts["identity"] = {}
        for k, iset in enumerate(self.identity_sets):
            scores = ctx.proba(variant, iset.es.texts, iset.es.text_pairs)[:, self.positive]
            artifacts["identity"][iset.ref.name] = scores
            b = np.asarray(base["identity"][iset.ref.name]) if base is not None else None
            measurements += identity_metrics(self, ctx, k, iset, scores, b)
            if iset.es.identity is not None:
                datasets.append(iset.es.identity)
        artifacts["functional"] = {}
        for k, fes in enumerate(self.functional_sets):
            fpred = ctx.proba(variant, fes.texts, fes.text_pairs).argmax(axis=1)
            artifacts["functional"][fes.name] = fpred
            b = np.asarray(base["functional"][fes.name]) if base is not None else None
            measurements += functional_metrics(self, ctx, k, fes, fpred, b)
            if fes.identity is not None:
                datasets.append(fes.identity)
        warnings = list(self._setup_warnings) if variant.is_baseline else []
        produced = {m.id for m in measurements}
        not_applicable = {k: r for k, r in self._not_applicable(ctx, variant).items() if k not in produced}
        return SuiteOutput(
            measurements=measurements,
            artifacts=artifacts,
            examples=examples,
            warnings=warnings,
            datasets=datasets,
            not_applicable=not_applicable,
        )
