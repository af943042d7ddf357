"""Dense-vs-variant paired comparisons: one record, one family of builders, the paired tests.

Every suite stores the comparison of a variant's measurement with the dense model's, on
the same examples, as one :class:`PairedComparison` at ``details["paired"]`` (per-group
sub-tests, e.g. ``details["paired_groups"][feature][group]``, have the same shape).
:mod:`audit.analysis` reads only that record: it adjusts ``p_value`` for the false
discovery rate into ``q_value`` and ``significant``; the reports show it.

Builders:

* :func:`paired_binary`: a per-example yes/no outcome (correct, flipped) on dense and on
  the variant: paired bootstrap CI of the change in its rate, and the exact McNemar test
  (or, when the examples come in correlated ``clusters``, the clustered McNemar test of
  Obuchowski 1998);
* :func:`paired_continuous`: any statistic with paired bootstrap deltas (the same
  resamples for both models): their percentile CI, and the dedicated test's p-value when
  there is one (DeLong, a clustered McNemar), else the bootstrap normal approximation;
* :func:`paired_auc`: ROC AUCs compared with DeLong's test.

No library offers these tests for this use (scipy gives the binomial and chi-square
distributions they rest on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit import stats
from audit.results import Measurement

# -- the record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedComparison:
    """A variant's change against the dense model on the same examples, with its test.

    ``delta`` is variant minus dense (``baseline`` is the dense value); ``ci_low`` /
    ``ci_high`` bound the change (None without resamples); ``test`` names the test and
    ``p_value`` is its two-sided p-value of "no change". For a yes/no outcome ``lost``
    counts examples positive on dense only (correct → wrong), ``gained`` positive on the
    variant only, ``discordant`` both together; ``clusters`` is the number of clusters a
    clustered test took as its units. ``higher_is_better`` is set only when the record's
    direction is not its measurement's metric's (a group's accuracy change inside a
    disparity measurement). ``q_value``, ``significant`` and ``regression`` are filled in
    by :func:`audit.analysis.analyze_sweep`. ``extra`` holds test-specific figures (a
    standard error, counts named for the outcome).
    """

    baseline: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str | None
    test: str
    p_value: float | None
    n: int
    lost: int | None = None
    gained: int | None = None
    discordant: int | None = None
    clusters: int | None = None
    higher_is_better: bool | None = None
    q_value: float | None = None
    significant: bool | None = None
    regression: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a measurement's details (every key, None where not applicable)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedComparison:
        """A record from its stored form; keys it does not know go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k != "extra"}
        extra = {**{k: v for k, v in d.items() if k not in names}, **dict(d.get("extra") or {})}
        kw.setdefault("baseline", None)
        kw.setdefault("delta", None)
        kw.setdefault("ci_low", None)
        kw.setdefault("ci_high", None)
        kw.setdefault("ci_method", None)
        kw.setdefault("test", "")
        kw.setdefault("p_value", None)
        kw.setdefault("n", 0)
        return cls(**kw, extra=extra)

    def replace(self, **changes: Any) -> PairedComparison:
        return dataclasses.replace(self, **changes)


RECORD_KEYS = tuple(f.name for f in dataclasses.fields(PairedComparison))
"""The keys of every stored paired record."""


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _boot_ci_method(n_boot: int, level: float, what: str = "paired bootstrap") -> str | None:
    return stats.ci_method(f"{what}, {n_boot} resamples, {level:.0%}", n_boot)


# -- the tests -----------------------------------------------------------------------------------


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar test on paired correctness (two-sided binomial on discordant pairs)."""
    from scipy.stats import binomtest

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    b01 = int(np.sum(a & ~b))  # right before, wrong after
    b10 = int(np.sum(~a & b))  # wrong before, right after
    n_disc = b01 + b10
    p = 1.0 if n_disc == 0 else float(binomtest(b01, n_disc, 0.5).pvalue)
    return {"lost": b01, "gained": b10, "discordant": n_disc, "p_value": p}


def clustered_mcnemar(a: np.ndarray, b: np.ndarray, clusters: np.ndarray) -> dict[str, Any]:
    """McNemar-type test of paired proportions when units come in correlated clusters.

    Obuchowski, N. A. (1998), "On the comparison of correlated proportions for clustered
    data", *Statistics in Medicine* 17(13):1495-1507. With ``K`` clusters, ``n_k`` units
    in cluster ``k`` (``N`` in all), ``x_k`` and ``y_k`` the units of cluster ``k``
    positive under ``a`` and under ``b``, ``p_a = sum x_k / N``, ``p_b = sum y_k / N``::

        var(p_a - p_b) = K / ((K - 1) N^2) * sum_k (d_k - n_k (p_a - p_b))^2,   d_k = x_k - y_k
        X^2 = (p_a - p_b)^2 / var(p_a - p_b)  ~  chi-square, 1 df

    The variance is estimated between clusters, so units of one cluster that move
    together count as one piece of evidence, not ``n_k`` (the naive McNemar test treats
    them as independent and is anti-conservative). ``lost`` counts units positive under
    ``a`` only, ``gained`` under ``b`` only (as :func:`mcnemar_exact`). The p-value is
    None with fewer than two clusters (no between-cluster variance); 1.0 when no unit
    is discordant.
    """
    from scipy.stats import chi2

    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(codes.max()) + 1 if len(codes) else 0
    n_k = np.bincount(codes, minlength=k).astype(np.float64)
    d_k = np.bincount(codes, weights=a.astype(np.float64) - b.astype(np.float64), minlength=k)
    n = float(n_k.sum())
    lost, gained = int(np.sum(a & ~b)), int(np.sum(~a & b))
    out: dict[str, Any] = {"lost": lost, "gained": gained, "discordant": lost + gained, "clusters": k}
    if lost + gained == 0:
        return {**out, "statistic": 0.0, "p_value": 1.0}
    if k < 2:
        return {**out, "statistic": None, "p_value": None}
    diff = (lost - gained) / n
    var = k / ((k - 1) * n * n) * float(np.sum((d_k - n_k * diff) ** 2))
    if var <= 0.0:  # every cluster moved by the same share: no spread to test against
        return {**out, "statistic": None, "p_value": 1.0 if diff == 0 else 0.0}
    x2 = diff * diff / var
    return {**out, "statistic": float(x2), "p_value": float(chi2.sf(x2, 1))}


def paired_bootstrap_delta(
    a_correct: np.ndarray, b_correct: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float | None, float | None]:
    """Accuracy change b − a on the same examples with a paired bootstrap CI.

    With fewer than two resamples there is no interval (one resample's value is not a
    CI): the CI ends are None.
    """
    a = np.asarray(a_correct, dtype=float)
    b = np.asarray(b_correct, dtype=float)
    diff = b - a
    lo, hi = stats.bootstrap_ci(diff, n_boot=n_boot, level=level, seed=seed) if n_boot >= 2 else (None, None)
    return float(diff.mean()) if len(diff) else float("nan"), lo, hi


def bootstrap_p_value(point: float, boot_deltas: np.ndarray) -> float | None:
    """Two-sided p-value of "no change" for a paired bootstrap of a difference.

    Uses the normal approximation ``z = delta / sd(bootstrap deltas)`` so that
    p-values are continuous (a percentile count bottoms out at ``1 / n_boot``,
    which no multiple-testing correction can use).
    """
    from scipy.stats import norm

    d = np.asarray(boot_deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if point is None or not np.isfinite(point) or len(d) < 2:
        return None
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 1.0 if point == 0 else 0.0
    return float(2 * norm.sf(abs(point) / sd))


# -- the builders --------------------------------------------------------------------------------


def paired_binary(
    base: np.ndarray,
    variant: np.ndarray,
    *,
    n_boot: int,
    level: float,
    seed: int = 0,
    clusters: np.ndarray | None = None,
    boot_deltas: np.ndarray | None = None,
    test: str | None = None,
    ci_method: str | None = None,
    higher_is_better: bool | None = None,
    **extra: Any,
) -> PairedComparison:
    """The record of a per-example yes/no outcome (e.g. correct) on dense (``base``) and on the variant.

    ``delta`` is the change in the outcome's rate. The CI is a paired bootstrap of the
    examples (``seed``), or the percentile interval of ``boot_deltas`` when the caller drew
    them (e.g. resampling clusters, or on resamples shared with other figures). The test is
    the exact McNemar test, or with ``clusters`` (one id per example) the clustered
    McNemar test with the clusters as units. ``test`` overrides the test's description.
    """
    a = np.asarray(base, dtype=bool)
    b = np.asarray(variant, dtype=bool)
    n = len(a)
    if boot_deltas is not None:
        lo, hi = stats.percentile_ci(boot_deltas, level) if len(boot_deltas) else (None, None)
        delta = float(b.mean() - a.mean()) if n else float("nan")
        method = ci_method or _boot_ci_method(len(boot_deltas), level)
    else:
        delta, lo, hi = paired_bootstrap_delta(a, b, n_boot=n_boot, level=level, seed=seed)
        method = ci_method or _boot_ci_method(n_boot, level)
    if clusters is not None:
        t = clustered_mcnemar(a, b, clusters)
        name = test or "clustered McNemar (Obuchowski 1998)"
    else:
        t = mcnemar_exact(a, b)
        name = test or "exact McNemar"
    return PairedComparison(
        baseline=_num(a.mean()) if n else None,
        delta=_num(delta),
        ci_low=lo,
        ci_high=hi,
        ci_method=method if lo is not None else None,
        test=name,
        p_value=_num(t["p_value"]) if n else None,
        n=n,
        lost=t["lost"],
        gained=t["gained"],
        discordant=t["discordant"],
        clusters=t.get("clusters"),
        higher_is_better=higher_is_better,
        extra=extra,
    )


def paired_continuous(
    *,
    baseline: float | None,
    value: float | None,
    boot_deltas: np.ndarray | None,
    level: float,
    test: str,
    n: int,
    p_value: float | None = None,
    ci_method: str | None = None,
    **extra: Any,
) -> PairedComparison:
    """The record of a statistic computed on dense (``baseline``) and on the variant (``value``).

    The CI comes from paired bootstrap deltas (variant minus dense on the same
    resamples); the p-value is ``p_value`` when a dedicated test gave one (DeLong, a
    clustered McNemar), else the bootstrap normal approximation.
    """
    base, val = _num(baseline), _num(value)
    delta = val - base if val is not None and base is not None else None
    boot = np.asarray(boot_deltas, dtype=np.float64) if boot_deltas is not None else np.zeros(0)
    lo, hi = stats.percentile_ci(boot, level) if len(boot) else (None, None)
    if p_value is None and len(boot) and delta is not None:
        p_value = bootstrap_p_value(delta, boot)
    return PairedComparison(
        baseline=base,
        delta=delta,
        ci_low=lo,
        ci_high=hi,
        ci_method=(ci_method or _boot_ci_method(len(boot), level)) if lo is not None else None,
        test=test,
        p_value=_num(p_value),
        n=int(n),
        extra=extra,
    )


def paired_auc(base_scores: np.ndarray, scores: np.ndarray, positive: np.ndarray, **extra: Any) -> PairedComparison:
    """ROC AUC of ``scores`` against ``base_scores`` on the same examples: DeLong's test (no bootstrap)."""
    d = stats.delong_paired(base_scores, scores, positive)
    return PairedComparison(
        baseline=_num(d["auc_a"]),
        delta=_num(d["delta"]),
        ci_low=None,
        ci_high=None,
        ci_method=None,
        test="DeLong (paired ROC AUCs)",
        p_value=_num(d["p_value"]),
        n=len(np.asarray(positive)),
        extra={"se": d["se"], **extra},
    )


def delta_measurement(
    rec: PairedComparison, *, suite: str, dataset: str, metric: str, details: dict[str, Any] | None = None
) -> Measurement:
    """A measurement whose value is the paired change itself (``accuracy_delta`` and the like).

    Value, CI and n are the record's; the record goes in ``details["paired"]``.
    """
    return Measurement(
        suite=suite,
        dataset=dataset,
        metric=metric,
        value=rec.delta,
        ci_low=rec.ci_low,
        ci_high=rec.ci_high,
        ci_method=rec.ci_method,
        n=rec.n,
        details={**(details or {}), "paired": rec.to_dict()},
    )


# -- per group -----------------------------------------------------------------------------------


def pruning_disparate_impact(
    base_correct: np.ndarray,
    correct: np.ndarray,
    feature: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> dict[str, Any]:
    """Disparate impact of pruning per group (Tran et al. 2022).

    For each group G, ``gap(G) = acc(dense | G) - acc(pruned | G)`` and its *excess*
    over the overall gap, ``gap(G) - gap(all)``: positive when pruning costs G more
    than the average. CIs come from one paired bootstrap over examples (the same
    resample for dense and pruned, for the group and for the whole set); each group
    also gets the :class:`PairedComparison` of its own accuracy change (``"paired"``:
    exact McNemar test, CI from the same resamples).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    base = np.asarray(base_correct, dtype=np.float64)
    new = np.asarray(correct, dtype=np.float64)
    diff = base - new  # accuracy lost per example: 1 lost, -1 gained
    uniq, codes = np.unique(np.asarray(feature, dtype=object).astype(str), return_inverse=True)
    k = len(uniq)
    n = len(diff)
    gap_all = float(diff.mean()) if n else float("nan")
    counts = np.bincount(codes, minlength=k)
    gap_g = np.bincount(codes, weights=diff, minlength=k) / np.maximum(counts, 1)
    boot_gap = boot_excess = None
    if n_boot > 0 and n:
        idx = stats.bootstrap_indices(n, n_boot, rng)
        b = len(idx)
        cc = (np.arange(b)[:, None] * k + codes[idx]).ravel()
        num = np.bincount(cc, weights=diff[idx].ravel(), minlength=b * k).reshape(b, k)
        den = np.bincount(cc, minlength=b * k).reshape(b, k)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot_gap = num / den
        boot_excess = boot_gap - diff[idx].mean(axis=1)[:, None]
    groups = {}
    for g, name in enumerate(uniq):
        members = codes == g
        lo, hi = stats.percentile_ci(boot_excess[:, g], level) if boot_excess is not None else (None, None)
        groups[str(name)] = {
            "gap": float(gap_g[g]),
            "excess": float(gap_g[g] - gap_all),
            "ci_low": lo,
            "ci_high": hi,
            "n": int(counts[g]),
            "paired": paired_binary(
                base[members] > 0,
                new[members] > 0,
                n_boot=n_boot,
                level=level,
                boot_deltas=-boot_gap[:, g] if boot_gap is not None else np.zeros(0),
            ),
        }
    return {"overall_gap": gap_all, "groups": groups}
