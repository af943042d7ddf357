"""Pruning's effect per group: the disparate impact of pruning (Tran et al. 2022) with an exact
McNemar test per group, and pruning-identified exemplars (Hooker et al. 2019) with a test of
their spread over groups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from audit import paired, stats
from audit.data import EvalSet
from audit.results import GroupValue, Measurement
from audit.suite import SuiteContext

if TYPE_CHECKING:
    from suites.bias.run import BiasSuite


TEXT_CHARS = 300


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def disparate_impact(
    suite: BiasSuite,
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
        res = paired.pruning_disparate_impact(
            base_correct,
            correct,
            values,
            n_boot=ctx.n_boot,
            level=ctx.ci_level,
            seed=suite.rng(ctx, 3, k),
        )
        overall_gap = res["overall_gap"]
        for g, r in res["groups"].items():
            small = r["n"] < suite.params.min_group_n
            groups.setdefault(feat, {})[g] = GroupValue(
                value=r["excess"], ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n"], small_n=small
            )
            paired_groups.setdefault(feat, {})[g] = (
                r["paired"]
                .replace(
                    test="exact McNemar (group accuracy, dense vs variant)",
                    higher_is_better=True,  # delta is the group's accuracy change
                )
                .to_dict()
            )
            if feat in features and not small and (worst is None or r["excess"] > worst):
                worst, worst_where = r["excess"], f"{feat}={g}"
    if worst is None:  # every group is small: take the largest excess anyway
        for feat, gs in groups.items():
            for g, gv in gs.items():
                if gv.value is not None and (worst is None or gv.value > worst):
                    worst, worst_where = gv.value, f"{feat}={g}"
    return Measurement(
        suite=suite.name,
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
            "min_group_n": suite.params.min_group_n,
            "paired_groups": paired_groups,
        },
    )


def pie(
    suite: BiasSuite,
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
    for feat, values in suite.all_features(suite.features).items():
        uniq = sorted(set(values.tolist()))
        table = []
        for g in uniq:
            m = values == g
            n = int(m.sum())
            glo, ghi = stats.bootstrap_ci(
                changed[m].astype(float), n_boot=ctx.n_boot, level=ctx.ci_level, seed=ctx.seed
            )
            groups.setdefault(feat, {})[g] = GroupValue(
                value=float(changed[m].mean()), ci_low=glo, ci_high=ghi, n=n, small_n=n < suite.params.min_group_n
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
        suite=suite.name,
        dataset=es.name,
        metric="pie_rate",
        value=float(changed.mean()),
        ci_low=lo,
        ci_high=hi,
        ci_method=suite.ci_method(ctx),
        n=len(es),
        groups=groups,
        details=details,
    )
    examples = []
    k = suite.params.n_examples
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
            for feat, values in suite.features.items():
                row[feat] = str(values[i])
            examples.append(row)
    return m, examples
