"""Identity-subgroup AUCs on toxicity-style sets (Borkan et al. 2019): subgroup, BPSN and BNSP AUCs
per identity subgroup, their generalized mean, and DeLong tests against the dense model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from audit import stats
from audit.data import MISSING_GROUP, EvalSet
from audit.errors import DataError
from audit.paired import paired_auc
from audit.results import GroupValue, Measurement
from audit.suite import SuiteContext
from suites.bias import IdentitySetRef

if TYPE_CHECKING:
    from suites.bias.run import BiasSuite

log = logging.getLogger(__name__)


GENERALIZED_MEAN_POWER = -5.0
_NONE_VALUES = {"", "none", "null", "nan", "no", "false", "0", MISSING_GROUP.lower()}
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0", ""}


def generalized_mean(values: list[float], p: float = GENERALIZED_MEAN_POWER) -> float:
    """Power mean ``(mean(v**p))**(1/p)`` of the finite values (Borkan et al. 2019 use p = −5)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan")
    if (v <= 0).any():
        return float(v.min())
    return float(np.mean(v**p) ** (1.0 / p))


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


def load_identity_set(suite: BiasSuite, ctx: SuiteContext, ref: IdentitySetRef) -> IdentitySet:
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
        lex = suite._lexicon(strict=ref.strict_terms, names=False)
        found = [lex.identities(t, level=ref.identity_level) for t in es.texts]
        for term in sorted(set().union(*found)):
            subgroups.setdefault(term, np.array([term in f for f in found]))
    if not subgroups:
        raise DataError(
            f"{where} has no identity subgroups (no identity column values and no identity terms found)",
            where=f"suites.bias.identity_sets[{ref.name}]",
            hint="name identity columns in columns.groups or set identity_from_text: true",
        )
    y = es.labels == suite.positive
    if y.all() or not y.any():
        raise DataError(
            f"{where} has only {'positive' if y.all() else 'negative'} examples for positive class "
            f"{ctx.id2label[suite.positive]!r}; AUCs need both",
            where=f"suites.bias.identity_sets[{ref.name}]",
            hint="check label_map and positive_label",
        )
    small, one_class = [], []
    for g, m in subgroups.items():
        if m.sum() < suite.params.min_group_n:
            small.append(f"{g} (n={int(m.sum())})")
        if y[m].all() or not y[m].any():
            one_class.append(f"{g} ({int(y[m].sum())} positive / {int((~y[m]).sum())} negative)")
    if small:
        suite.warn(
            f"{where}: identity subgroups smaller than min_group_n={suite.params.min_group_n} are reported "
            f"with wide CIs and flagged small_n: {', '.join(small)}"
        )
    if one_class:
        suite.warn(f"{where}: subgroup AUC is undefined for subgroups with one class: {', '.join(one_class)}")
    log.info("bias: %s has %d identity subgroups", ref.name, len(subgroups))
    return IdentitySet(ref, es, subgroups)


def identity_metrics(
    suite: BiasSuite, ctx: SuiteContext, k: int, iset: IdentitySet, scores: np.ndarray, base_scores: np.ndarray | None
) -> list[Measurement]:
    es = iset.es
    y = es.labels == suite.positive
    name = iset.ref.name
    rng = suite.rng(ctx, 4, k)
    boot, _ = stats.bootstrap_auc(scores, y, n_boot=ctx.n_boot, seed=rng)
    lo, hi = stats.percentile_ci(boot, ctx.ci_level)
    details: dict[str, Any] = {"positive_class": int(suite.positive or 0), "n_positive": int(y.sum())}
    if base_scores is not None:
        details["paired"] = paired_auc(base_scores, scores, y).to_dict()
    out = [
        Measurement(
            suite=suite.name,
            dataset=name,
            metric="roc_auc",
            value=stats.roc_auc(scores, y),
            ci_low=lo,
            ci_high=hi,
            ci_method=suite.ci_method(ctx, ", stratified"),
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
            b, _ = stats.bootstrap_auc(scores[sel], y[sel], n_boot=ctx.n_boot, seed=suite.rng(ctx, 5, k, j))
            glo, ghi = stats.percentile_ci(b, ctx.ci_level)
            n = int(member.sum())
            groups[g] = GroupValue(value=value, ci_low=glo, ci_high=ghi, n=n, small_n=n < suite.params.min_group_n)
            if base_scores is not None:
                paired[g] = paired_auc(base_scores[sel], scores[sel], y[sel]).to_dict()
        # the power mean is pulled to the worst subgroup, so tiny subgroups (an AUC of 0
        # from one pair) would decide it: it uses subgroups of at least min_group_n
        # examples, all of them when none is that large
        defined = {g: gv for g, gv in groups.items() if gv.value is not None}
        large = {g: gv for g, gv in defined.items() if not gv.small_n}
        in_mean = large or defined
        worst = min(in_mean, key=lambda g: in_mean[g].value) if in_mean else None
        over = (
            f"subgroups of at least {suite.params.min_group_n} examples"
            if large
            else f"all subgroups (none has {suite.params.min_group_n} examples)"
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
                suite=suite.name,
                dataset=name,
                metric=metric,
                value=generalized_mean([gv.value for gv in in_mean.values()]),
                ci_method=suite.ci_method(ctx, ", stratified, per subgroup in groups"),
                n=len(y),
                groups={"identity": groups},
                details=details,
            )
        )
    return out
