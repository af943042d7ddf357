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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit import stats
from audit.data import MISSING_GROUP, EvalSet
from audit.errors import DataError, UsageError
from audit.results import DatasetIdentity, GroupValue, Measurement
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant, accuracy_delta_measurement
from suites.bias import BiasParams, IdentitySetRef

log = logging.getLogger(__name__)

TEXT_CHARS = 300
GENERALIZED_MEAN_POWER = -5.0
_NONE_VALUES = {"", "none", "null", "nan", "no", "false", "0", MISSING_GROUP.lower()}
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0", ""}


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def generalized_mean(values: list[float], p: float = GENERALIZED_MEAN_POWER) -> float:
    """Power mean ``(mean(v**p))**(1/p)`` of the finite values (Borkan et al. 2019 use p = −5)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan")
    if (v <= 0).any():
        return float(v.min())
    return float(np.mean(v**p) ** (1.0 / p))


@dataclass
class CounterfactualSet:
    """Counterfactual texts of the eval set, with the row, category and pair of each."""

    rows: np.ndarray
    categories: np.ndarray
    pairs: np.ndarray
    texts: list[str]
    text_pairs: list[str] | None
    n_texts_with_terms: int = 0


@dataclass
class IdentitySet:
    ref: IdentitySetRef
    es: EvalSet
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)


def _as_membership(values: np.ndarray, threshold: float) -> np.ndarray | None:
    """A boolean membership column when ``values`` are booleans or numbers, else None."""
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        s = str(v).strip().lower()
        if s in _TRUE:
            out[i] = True
            continue
        if s in _FALSE or s == MISSING_GROUP.lower():
            continue
        try:
            out[i] = float(s) >= threshold
        except ValueError:
            return None
    return out


class BiasSuite(Suite):
    """Group fairness, counterfactual invariance, subgroup AUCs, and pruning's effect on each."""

    params: BiasParams

    # -- setup: everything validated and prepared once ----------------------------------------------

    def setup(self, ctx: SuiteContext) -> None:
        self._setup_warnings: list[str] = []
        es = ctx.eval_set
        self.positive = self._positive_index(ctx)
        self.features = self._sensitive_features(es)
        for name, values in self.features.items():
            self._check_groups(f"eval set {es.name!r}, sensitive column {name!r}", values)
        self.cf = self._counterfactuals(es) if self.params.counterfactual.enabled else None
        self.identity_sets = [self._identity_set(ctx, ref) for ref in self.params.identity_sets]
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

    def _warn(self, msg: str) -> None:
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
            self._warn(
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
                self._warn(
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
            self._warn(
                f"{where} has a single group ({str(uniq[0])!r}, n={int(counts[0])}): no between-group comparison "
                "is possible; its values are reported but it has no disparity"
                if len(uniq)
                else f"{where} is empty"
            )
        small = [f"{g} (n={c})" for g, c in zip(uniq, counts, strict=True) if c < self.params.min_group_n]
        if small:
            self._warn(
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

    def _counterfactuals(self, es: EvalSet) -> CounterfactualSet | None:
        cp = self.params.counterfactual
        lex = self._lexicon(strict=cp.strict)
        cats = cp.categories
        n = len(es)
        rows = np.arange(n)
        if cp.max_texts is not None and n > cp.max_texts:
            rows = np.sort(np.random.default_rng(cp.seed).choice(n, size=cp.max_texts, replace=False))
        out_rows, out_cats, out_pairs, out_texts = [], [], [], []
        with_terms = 0
        for r in rows:
            cfs = lex.counterfactuals(es.texts[r], row=int(r), categories=cats)
            if not cfs:
                continue
            with_terms += 1
            if len(cfs) > cp.max_per_text:
                rng = np.random.default_rng([cp.seed, int(r)])
                keep = np.sort(rng.choice(len(cfs), size=cp.max_per_text, replace=False))
                cfs = [cfs[k] for k in keep]
            for c in cfs:
                out_rows.append(c.row)
                out_cats.append(c.category)
                out_pairs.append(c.pair)
                out_texts.append(c.text)
        if not out_texts:
            self._warn(
                f"bias: no identity terms (names, pronouns, identity words) found in the {len(rows)} eval texts: "
                "counterfactual metrics are not reported"
            )
            return None
        log.info("bias: %d counterfactual texts from %d of %d eval texts", len(out_texts), with_terms, len(rows))
        r = np.asarray(out_rows, dtype=np.int64)
        return CounterfactualSet(
            rows=r,
            categories=np.asarray(out_cats, dtype=object),
            pairs=np.asarray(out_pairs, dtype=object),
            texts=out_texts,
            text_pairs=[es.text_pairs[i] for i in r] if es.text_pairs is not None else None,
            n_texts_with_terms=with_terms,
        )

    def _identity_set(self, ctx: SuiteContext, ref: IdentitySetRef) -> IdentitySet:
        es = ctx.load_dataset(ref)
        where = f"identity set {ref.name!r}"
        subgroups: dict[str, np.ndarray] = {}
        for col, values in es.groups.items():
            member = _as_membership(values, ref.identity_threshold)
            if member is not None:
                subgroups[col] = member
                continue
            for g in sorted(set(values.tolist())):
                if str(g).strip().lower() not in _NONE_VALUES:
                    key = str(g) if len(es.groups) == 1 else f"{col}={g}"
                    subgroups[key] = values == g
        if ref.identity_from_text:
            lex = self._lexicon(strict=ref.strict_terms, names=False)
            found = [lex.identities(t, level=ref.identity_level) for t in es.texts]
            for term in sorted(set().union(*found)):
                subgroups.setdefault(term, np.array([term in f for f in found]))
        if not subgroups:
            raise DataError(
                f"{where} has no identity subgroups (no identity column values and no identity terms found)",
                where=f"suites.bias.identity_sets[{ref.name}]",
                hint="name identity columns in columns.groups or set identity_from_text: true",
            )
        y = es.labels == self.positive
        if y.all() or not y.any():
            raise DataError(
                f"{where} has only {'positive' if y.all() else 'negative'} examples for positive class "
                f"{ctx.id2label[self.positive]!r}; AUCs need both",
                where=f"suites.bias.identity_sets[{ref.name}]",
                hint="check label_map and positive_label",
            )
        small, one_class = [], []
        for g, m in subgroups.items():
            if m.sum() < self.params.min_group_n:
                small.append(f"{g} (n={int(m.sum())})")
            if y[m].all() or not y[m].any():
                one_class.append(f"{g} ({int(y[m].sum())} positive / {int((~y[m]).sum())} negative)")
        if small:
            self._warn(
                f"{where}: identity subgroups smaller than min_group_n={self.params.min_group_n} are reported "
                f"with wide CIs and flagged small_n: {', '.join(small)}"
            )
        if one_class:
            self._warn(f"{where}: subgroup AUC is undefined for subgroups with one class: {', '.join(one_class)}")
        log.info("bias: %s has %d identity subgroups", ref.name, len(subgroups))
        return IdentitySet(ref, es, subgroups)

    # -- helpers ---------------------------------------------------------------------------------------

    def _ci_method(self, ctx: SuiteContext, suffix: str = "") -> str | None:
        return stats.ci_method(f"percentile bootstrap, {ctx.n_boot} resamples, {ctx.ci_level:.0%}{suffix}", ctx.n_boot)

    def _rng(self, ctx: SuiteContext, *parts: int) -> np.random.Generator:
        return np.random.default_rng([ctx.seed, 7, *parts])

    def _all_features(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return stats.feature_columns(features, self.params.intersections) if features else {}

    # -- eval-set group metrics ---------------------------------------------------------------------

    def _group_rates(self, ctx: SuiteContext, es: EvalSet, pred: np.ndarray) -> list[Measurement]:
        pos = self.positive
        assert pos is not None
        y = (es.labels == pos).astype(np.int64)
        p = (pred == pos).astype(np.int64)
        return stats.group_measurements(
            suite=self.name,
            dataset=es.name,
            metrics=[
                stats.false_positive_rate_metric(),
                stats.false_negative_rate_metric(),
                stats.selection_rate_metric(),
            ],
            y_true=y,
            y_pred=p,
            groups=self.features,
            n_boot=ctx.n_boot,
            level=ctx.ci_level,
            seed=ctx.seed,
            intersections=self.params.intersections,
            min_group_n=self.params.min_group_n,
        )

    def _disparities(
        self, ctx: SuiteContext, es: EvalSet, pred: np.ndarray, base_pred: np.ndarray | None
    ) -> list[Measurement]:
        pos = self.positive
        assert pos is not None
        y = (es.labels == pos).astype(np.int64)
        by_metric: dict[str, dict[str, Any]] = {"demographic_parity_difference": {}, "equalized_odds_difference": {}}
        singles = set(self.features)
        for k, (feat, values) in enumerate(self._all_features(self.features).items()):
            if len(np.unique(values)) < 2:
                continue
            res = stats.disparity_differences(
                y,
                (pred == pos).astype(np.int64),
                values,
                n_boot=ctx.n_boot,
                level=ctx.ci_level,
                seed=self._rng(ctx, 1, k),
                return_boot=True,
            )
            base = None
            if base_pred is not None:
                base = stats.disparity_differences(
                    y,
                    (base_pred == pos).astype(np.int64),
                    values,
                    n_boot=ctx.n_boot,
                    level=ctx.ci_level,
                    seed=self._rng(ctx, 1, k),
                    return_boot=True,
                )
            for metric, r in res.items():
                boot = r.pop("boot")
                entry: dict[str, Any] = {**r, "intersection": feat not in singles}
                if base is not None:
                    b = base[metric]
                    entry["paired"] = stats.paired_result(
                        baseline=b["value"],
                        value=r["value"],
                        boot_deltas=boot - b["boot"],
                        level=ctx.ci_level,
                        test="paired bootstrap within groups (normal approximation)",
                        n=len(y),
                    )
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
                    suite=self.name,
                    dataset=es.name,
                    metric=metric,
                    value=w["value"],
                    ci_low=w["ci_low"],
                    ci_high=w["ci_high"],
                    ci_method=self._ci_method(ctx, ", within groups"),
                    n=len(y),
                    details={"feature": worst, "by_feature": feats, "positive_class": int(pos)},
                )
            )
        return out

    # -- counterfactual invariance ---------------------------------------------------------------

    def _shift(self, proba_cf: np.ndarray, proba_orig: np.ndarray) -> np.ndarray:
        """Signed change of the positive-class probability (binary) or half the L1 distance."""
        if proba_cf.shape[1] == 2 or self.positive is not None:
            pos = self.positive if self.positive is not None else 1
            return proba_cf[:, pos] - proba_orig[:, pos]
        return 0.5 * np.abs(proba_cf - proba_orig).sum(axis=1)

    def _counterfactual(
        self,
        ctx: SuiteContext,
        variant: Variant,
        proba: np.ndarray,
        base: dict[str, Any] | None,
    ) -> tuple[list[Measurement], dict[str, Any]]:
        cf = self.cf
        assert cf is not None
        es = ctx.eval_set
        proba_cf = ctx.proba(variant, cf.texts, cf.text_pairs)
        flip = proba_cf.argmax(axis=1) != proba[cf.rows].argmax(axis=1)
        signed = self._shift(proba_cf, proba[cf.rows])
        shift = np.abs(signed)
        base_flip = base_shift = None
        if base is not None and "cf_proba" in base:
            bp, bcf = np.asarray(base["proba"]), np.asarray(base["cf_proba"])
            base_flip = bcf.argmax(axis=1) != bp[cf.rows].argmax(axis=1)
            base_shift = np.abs(self._shift(bcf, bp[cf.rows]))
        # texts are the resampling unit (one text gives several counterfactuals)
        uniq_rows, cluster = np.unique(cf.rows, return_inverse=True)
        idx = stats.bootstrap_indices(len(uniq_rows), ctx.n_boot, self._rng(ctx, 2))
        counts = np.bincount(cluster, minlength=len(uniq_rows)).astype(np.float64)

        def cluster_boot(v: np.ndarray) -> np.ndarray:
            sums = np.bincount(cluster, weights=v.astype(np.float64), minlength=len(uniq_rows))
            if len(idx) == 0:
                return np.zeros(0)
            return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)

        out = []
        for metric, values, base_values in (
            ("counterfactual_flip_rate", flip, base_flip),
            ("counterfactual_prob_shift", shift, base_shift),
        ):
            boot = cluster_boot(values)
            lo, hi = stats.percentile_ci(boot, ctx.ci_level)
            groups: dict[str, dict[str, GroupValue]] = {}
            details: dict[str, Any] = {
                "n_texts": int(len(uniq_rows)),
                "n_eval_texts": len(es),
                "resampling": "eval texts (each text's counterfactuals stay together)",
            }
            signed_by_pair: dict[str, dict[str, float]] = {}
            paired_groups: dict[str, dict[str, Any]] = {}
            for cat in sorted(set(cf.categories.tolist())):
                in_cat = cf.categories == cat
                for pair in sorted(set(cf.pairs[in_cat].tolist())):
                    m = in_cat & (cf.pairs == pair)
                    n = int(m.sum())
                    glo, ghi = stats.bootstrap_ci(
                        values[m].astype(np.float64),
                        n_boot=ctx.n_boot,
                        level=ctx.ci_level,
                        seed=ctx.seed,
                    )
                    groups.setdefault(cat, {})[pair] = GroupValue(
                        value=float(values[m].mean()),
                        ci_low=glo,
                        ci_high=ghi,
                        n=n,
                        small_n=n < self.params.min_group_n,
                    )
                    if metric == "counterfactual_prob_shift":
                        signed_by_pair.setdefault(cat, {})[pair] = float(signed[m].mean())
                    elif base_values is not None:
                        # one counterfactual per text and pair (one target per pair): independent units
                        t = stats.mcnemar_exact(~base_values[m], ~values[m])
                        paired_groups.setdefault(cat, {})[pair] = {
                            "baseline": float(base_values[m].mean()),
                            "delta": float(values[m].mean() - base_values[m].mean()),
                            "p_value": t["p_value"],
                            "test": "exact McNemar on flips",
                            "n": n,
                            "newly_flipped": t["lost"],
                            "no_longer_flipped": t["gained"],
                        }
            if signed_by_pair:
                details["signed_shift"] = signed_by_pair
            if base_values is not None:
                if metric == "counterfactual_flip_rate":
                    # one text gives several counterfactuals whose flips are correlated: the test
                    # takes texts as clusters (Obuchowski 1998), not counterfactuals as independent
                    t = stats.clustered_mcnemar(~base_values, ~values, cf.rows)
                    details["paired"] = stats.paired_result(
                        baseline=float(base_values.mean()),
                        value=float(values.mean()),
                        boot_deltas=boot - cluster_boot(base_values),
                        level=ctx.ci_level,
                        test="clustered McNemar on flips, texts as clusters (Obuchowski 1998)",
                        n=len(values),
                        p_value=t["p_value"],
                        n_texts=t["clusters"],
                        newly_flipped=t["lost"],
                        no_longer_flipped=t["gained"],
                    )
                    details["paired_groups"] = paired_groups
                else:
                    details["paired"] = stats.paired_result(
                        baseline=float(base_values.mean()),
                        value=float(values.mean()),
                        boot_deltas=boot - cluster_boot(base_values),
                        level=ctx.ci_level,
                        test="paired cluster bootstrap (normal approximation)",
                        n=len(values),
                    )
            out.append(
                Measurement(
                    suite=self.name,
                    dataset=es.name,
                    metric=metric,
                    value=float(values.mean()),
                    ci_low=lo,
                    ci_high=hi,
                    ci_method=stats.ci_method(
                        f"cluster bootstrap over texts, {ctx.n_boot} resamples, {ctx.ci_level:.0%}", ctx.n_boot
                    ),
                    n=len(values),
                    groups=groups,
                    details=details,
                )
            )
        return out, {"cf_proba": proba_cf}

    # -- pruning-specific: disparate impact and exemplars ------------------------------------------------

    def _disparate_impact(
        self,
        ctx: SuiteContext,
        dataset: str,
        labels: np.ndarray,
        pred: np.ndarray,
        base_pred: np.ndarray,
        features: dict[str, np.ndarray],
        intersections: bool,
    ) -> Measurement | None:
        feats = stats.feature_columns(features, intersections) if features else {}
        if not feats:
            return None
        correct, base_correct = pred == labels, base_pred == labels
        groups: dict[str, dict[str, GroupValue]] = {}
        paired_groups: dict[str, dict[str, Any]] = {}
        overall_gap = float("nan")
        worst, worst_where = None, None
        for k, (feat, values) in enumerate(feats.items()):
            res = stats.pruning_disparate_impact(
                base_correct,
                correct,
                values,
                n_boot=ctx.n_boot,
                level=ctx.ci_level,
                seed=self._rng(ctx, 3, k),
            )
            overall_gap = res["overall_gap"]
            for g, r in res["groups"].items():
                small = r["n"] < self.params.min_group_n
                groups.setdefault(feat, {})[g] = GroupValue(
                    value=r["excess"], ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n"], small_n=small
                )
                t = r["mcnemar"]
                paired_groups.setdefault(feat, {})[g] = {
                    "delta": -r["gap"],
                    "p_value": t["p_value"],
                    "test": "exact McNemar (group accuracy, dense vs variant)",
                    "higher_is_better": True,  # delta is the group's accuracy change
                    "n": r["n"],
                    "lost": t["lost"],
                    "gained": t["gained"],
                }
                if feat in features and not small and (worst is None or r["excess"] > worst):
                    worst, worst_where = r["excess"], f"{feat}={g}"
        if worst is None:  # every group is small: take the largest excess anyway
            for feat, gs in groups.items():
                for g, gv in gs.items():
                    if gv.value is not None and (worst is None or gv.value > worst):
                        worst, worst_where = gv.value, f"{feat}={g}"
        return Measurement(
            suite=self.name,
            dataset=dataset,
            metric="pruning_disparate_impact",
            value=worst,
            ci_low=None,
            ci_high=None,
            ci_method=stats.ci_method("per-group paired bootstrap CIs in groups", ctx.n_boot),
            n=len(labels),
            groups=groups,
            details={
                "worst_group": worst_where,
                "overall_accuracy_change": -overall_gap,
                "min_group_n": self.params.min_group_n,
                "paired_groups": paired_groups,
            },
        )

    def _pie(
        self,
        ctx: SuiteContext,
        es: EvalSet,
        proba: np.ndarray,
        base_proba: np.ndarray,
    ) -> tuple[Measurement, list[dict[str, Any]]]:
        from scipy.stats import chi2_contingency

        pred, base_pred = proba.argmax(axis=1), base_proba.argmax(axis=1)
        changed = pred != base_pred
        lo, hi = stats.bootstrap_ci(changed.astype(float), n_boot=ctx.n_boot, level=ctx.ci_level, seed=ctx.seed)
        groups: dict[str, dict[str, GroupValue]] = {}
        heterogeneity: dict[str, Any] = {}
        for feat, values in self._all_features(self.features).items():
            uniq = sorted(set(values.tolist()))
            table = []
            for g in uniq:
                m = values == g
                n = int(m.sum())
                glo, ghi = stats.bootstrap_ci(
                    changed[m].astype(float), n_boot=ctx.n_boot, level=ctx.ci_level, seed=ctx.seed
                )
                groups.setdefault(feat, {})[g] = GroupValue(
                    value=float(changed[m].mean()), ci_low=glo, ci_high=ghi, n=n, small_n=n < self.params.min_group_n
                )
                table.append([int(changed[m].sum()), int((~changed[m]).sum())])
            if len(uniq) > 1 and changed.any() and not changed.all():
                chi2, p, dof, _ = chi2_contingency(np.asarray(table))
                heterogeneity[feat] = {
                    "p_value": float(p),
                    "test": "chi-square test of independence (group x changed)",
                    "chi2": float(chi2),
                    "dof": int(dof),
                }
        details: dict[str, Any] = {"n_changed": int(changed.sum())}
        if heterogeneity:
            details["heterogeneity"] = heterogeneity
        m = Measurement(
            suite=self.name,
            dataset=es.name,
            metric="pie_rate",
            value=float(changed.mean()),
            ci_low=lo,
            ci_high=hi,
            ci_method=self._ci_method(ctx),
            n=len(es),
            groups=groups,
            details=details,
        )
        examples = []
        k = self.params.n_examples
        if k and changed.any():
            idx = np.flatnonzero(changed)
            if len(idx) > k:
                idx = np.sort(np.random.default_rng(ctx.seed).choice(idx, size=k, replace=False))
            for i in idx:
                row: dict[str, Any] = {
                    "kind": "pruning-identified exemplar",
                    "id": es.ids[i] if es.ids else str(i),
                    "text": _short(es.texts[i]),
                    "label": ctx.id2label.get(int(es.labels[i]), str(es.labels[i])),
                    "dense_prediction": ctx.id2label.get(int(base_pred[i]), str(base_pred[i])),
                    "dense_confidence": round(float(base_proba[i].max()), 4),
                    "prediction": ctx.id2label.get(int(pred[i]), str(pred[i])),
                    "confidence": round(float(proba[i].max()), 4),
                }
                for feat, values in self.features.items():
                    row[feat] = str(values[i])
                examples.append(row)
        return m, examples

    # -- extra sets -----------------------------------------------------------------------------------

    def _identity_metrics(
        self, ctx: SuiteContext, k: int, iset: IdentitySet, scores: np.ndarray, base_scores: np.ndarray | None
    ) -> list[Measurement]:
        es = iset.es
        y = es.labels == self.positive
        name = iset.ref.name
        rng = self._rng(ctx, 4, k)
        boot, _ = stats.bootstrap_auc(scores, y, n_boot=ctx.n_boot, seed=rng)
        lo, hi = stats.percentile_ci(boot, ctx.ci_level)
        details: dict[str, Any] = {"positive_class": int(self.positive or 0), "n_positive": int(y.sum())}
        if base_scores is not None:
            d = stats.delong_paired(base_scores, scores, y)
            details["paired"] = {
                "baseline": d["auc_a"],
                "delta": d["delta"],
                "se": d["se"],
                "p_value": d["p_value"],
                "test": "DeLong (paired ROC AUCs)",
                "n": len(y),
            }
        out = [
            Measurement(
                suite=self.name,
                dataset=name,
                metric="roc_auc",
                value=stats.roc_auc(scores, y),
                ci_low=lo,
                ci_high=hi,
                ci_method=self._ci_method(ctx, ", stratified"),
                n=len(y),
                details=details,
            )
        ]
        for j, metric in enumerate(("subgroup_auc", "bpsn_auc", "bnsp_auc")):
            groups: dict[str, GroupValue] = {}
            paired: dict[str, Any] = {}
            for g, member in iset.subgroups.items():
                if metric == "subgroup_auc":
                    sel = member
                elif metric == "bpsn_auc":
                    sel = (member & ~y) | (~member & y)
                else:
                    sel = (member & y) | (~member & ~y)
                value = stats.roc_auc(scores[sel], y[sel])
                b, _ = stats.bootstrap_auc(scores[sel], y[sel], n_boot=ctx.n_boot, seed=self._rng(ctx, 5, k, j))
                glo, ghi = stats.percentile_ci(b, ctx.ci_level)
                n = int(member.sum())
                groups[g] = GroupValue(value=value, ci_low=glo, ci_high=ghi, n=n, small_n=n < self.params.min_group_n)
                if base_scores is not None:
                    d = stats.delong_paired(base_scores[sel], scores[sel], y[sel])
                    paired[g] = {
                        "baseline": d["auc_a"],
                        "delta": d["delta"],
                        "p_value": d["p_value"],
                        "test": "DeLong (paired ROC AUCs)",
                        "n": int(sel.sum()),
                    }
            # the power mean is pulled to the worst subgroup, so tiny subgroups (an AUC of 0
            # from one pair) would decide it: it uses subgroups of at least min_group_n
            # examples, all of them when none is that large
            defined = {g: gv for g, gv in groups.items() if gv.value is not None}
            large = {g: gv for g, gv in defined.items() if not gv.small_n}
            in_mean = large or defined
            worst = min(in_mean, key=lambda g: in_mean[g].value) if in_mean else None
            over = (
                f"subgroups of at least {self.params.min_group_n} examples"
                if large
                else f"all subgroups (none has {self.params.min_group_n} examples)"
            )
            details = {
                "aggregate": f"generalized mean, p = {GENERALIZED_MEAN_POWER:g} (Borkan et al. 2019), over {over}",
                "subgroups_in_mean": sorted(in_mean),
                "worst_subgroup": worst,
                "n_subgroups": len(groups),
                "identity_source": "text" if iset.ref.identity_from_text else "columns",
            }
            if paired:
                details["paired_groups"] = {"identity": paired}
            out.append(
                Measurement(
                    suite=self.name,
                    dataset=name,
                    metric=metric,
                    value=generalized_mean([gv.value for gv in in_mean.values()]),
                    ci_method=self._ci_method(ctx, ", stratified, per subgroup in groups"),
                    n=len(y),
                    groups={"identity": groups},
                    details=details,
                )
            )
        return out

    def _functional_metrics(
        self, ctx: SuiteContext, k: int, fes: EvalSet, pred: np.ndarray, base_pred: np.ndarray | None
    ) -> list[Measurement]:
        out = stats.group_measurements(
            suite=self.name,
            dataset=fes.name,
            metrics=[stats.accuracy_metric(ctx.num_labels)],
            y_true=fes.labels,
            y_pred=pred,
            groups=fes.groups,
            n_boot=ctx.n_boot,
            level=ctx.ci_level,
            seed=ctx.seed + k,
            intersections=False,
            min_group_n=self.params.min_group_n,
        )
        if base_pred is None:
            return out
        out.append(accuracy_delta_measurement(self.name, fes.name, fes.labels, pred, base_pred, ctx, seed=ctx.seed + k))
        di = self._disparate_impact(ctx, fes.name, fes.labels, pred, base_pred, fes.groups, intersections=False)
        if di is not None:
            out.append(di)
        return out

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
            measurements += self._group_rates(ctx, es, pred)
            measurements += self._disparities(ctx, es, pred, base_pred)
        if self.cf is not None:
            ms, arts = self._counterfactual(ctx, variant, proba, base)
            measurements += ms
            artifacts.update(arts)
        if base_proba is not None and base_pred is not None:
            di = self._disparate_impact(
                ctx, es.name, es.labels, pred, base_pred, self.features, self.params.intersections
            )
            if di is not None:
                measurements.append(di)
            pie, rows = self._pie(ctx, es, proba, base_proba)
            measurements.append(pie)
            examples += rows

        artifacts["identity"] = {}
        for k, iset in enumerate(self.identity_sets):
            scores = ctx.proba(variant, iset.es.texts, iset.es.text_pairs)[:, self.positive]
            artifacts["identity"][iset.ref.name] = scores
            b = np.asarray(base["identity"][iset.ref.name]) if base is not None else None
            measurements += self._identity_metrics(ctx, k, iset, scores, b)
            if iset.es.identity is not None:
                datasets.append(iset.es.identity)
        artifacts["functional"] = {}
        for k, fes in enumerate(self.functional_sets):
            fpred = ctx.proba(variant, fes.texts, fes.text_pairs).argmax(axis=1)
            artifacts["functional"][fes.name] = fpred
            b = np.asarray(base["functional"][fes.name]) if base is not None else None
            measurements += self._functional_metrics(ctx, k, fes, fpred, b)
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
