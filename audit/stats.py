"""Statistics shared by the suites: bootstrap CIs and group metrics via fairlearn.

Group metrics are computed with :class:`fairlearn.metrics.MetricFrame` (its own
bootstrap gives the CIs). The dense-vs-variant paired tests and their record are in
:mod:`audit.paired`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from audit.results import GroupValue, Measurement

log = logging.getLogger(__name__)

SMALL_GROUP_N = 30
"""Groups with fewer examples are reported but flagged: their CI is wide."""

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of ``statistic`` over the rows of ``values``."""
    values = np.asarray(values)
    n = len(values)
    if n == 0 or n_boot < 2:  # one resample's value is not an interval
        return None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if statistic is np.mean and values.ndim == 1:
        stats = values[idx].mean(axis=1)
    else:
        stats = np.array([statistic(values[i]) for i in idx])
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def ci_method(text: str, n_boot: int) -> str | None:
    """A measurement's ``ci_method``: ``text``, or None when no resamples were drawn (no CI)."""
    return text if n_boot >= 2 else None


def feature_columns(groups: Mapping[str, np.ndarray], intersections: bool) -> dict[str, np.ndarray]:
    """Sensitive columns as string arrays, plus their intersection (``"a&b"``) when asked."""
    feats = {k: np.asarray(v, dtype=object).astype(str) for k, v in groups.items()}
    if intersections and len(feats) > 1:
        names = sorted(feats)
        key = "&".join(names)
        combo = np.array(["&".join(parts) for parts in zip(*(feats[n] for n in names), strict=True)], dtype=object)
        feats[key] = combo
    return feats


class ConfusionMetric:
    """A metric that is a function of the confusion matrix.

    Called as ``metric(y_true, y_pred)`` it is an ordinary scorer (what fairlearn's
    ``MetricFrame`` takes); :meth:`from_counts` evaluates it on a stack of confusion
    matrices at once, which makes bootstrap CIs cheap (one ``bincount`` per group
    instead of thousands of ``MetricFrame`` evaluations: 2 s → 10 ms for 200
    resamples of 800 examples).
    """

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray], num_classes: int) -> None:
        self.name = name
        self._fn = fn
        self.num_classes = num_classes
        self.__name__ = name

    def from_counts(self, cm: np.ndarray) -> np.ndarray:
        """``cm``: ``[..., C, C]`` counts (rows: true, columns: predicted)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._fn(cm.astype(np.float64))

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(self.from_counts(confusion_counts(y_true, y_pred, self.num_classes)))


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    codes = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def bootstrap_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``[n_boot, C, C]`` confusion matrices of bootstrap resamples."""
    n = len(y_true)
    c2 = num_classes * num_classes
    codes = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    out = np.empty((n_boot, c2), dtype=np.int64)
    chunk = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        offs = (np.arange(stop - start)[:, None] * c2 + codes[idx]).ravel()
        out[start:stop] = np.bincount(offs, minlength=(stop - start) * c2).reshape(stop - start, c2)
    return out.reshape(n_boot, num_classes, num_classes)


def _accuracy(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    present = denom > 0  # sklearn averages over labels seen in y_true or y_pred
    k = present.sum(axis=-1)
    return np.where(k > 0, (f1 * present).sum(axis=-1) / np.maximum(k, 1), np.nan)


def _rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def accuracy_metric(num_classes: int) -> ConfusionMetric:
    return ConfusionMetric("accuracy", _accuracy, num_classes)


def macro_f1_metric(num_classes: int) -> ConfusionMetric:
    return ConfusionMetric("macro_f1", _macro_f1, num_classes)


def false_positive_rate_metric(positive: int = 1) -> ConfusionMetric:
    """FPR of a binary task: FP / (FP + TN) for the ``positive`` class."""

    def fn(cm: np.ndarray) -> np.ndarray:
        neg = 1 - positive
        return _rate(cm[..., neg, positive], cm[..., neg, :].sum(axis=-1))

    return ConfusionMetric("fpr", fn, 2)


def false_negative_rate_metric(positive: int = 1) -> ConfusionMetric:
    """FNR of a binary task: FN / (FN + TP) for the ``positive`` class."""

    def fn(cm: np.ndarray) -> np.ndarray:
        neg = 1 - positive
        return _rate(cm[..., positive, neg], cm[..., positive, :].sum(axis=-1))

    return ConfusionMetric("fnr", fn, 2)


def selection_rate_metric(positive: int = 1, num_classes: int = 2) -> ConfusionMetric:
    """Share of examples predicted as ``positive``."""

    def fn(cm: np.ndarray) -> np.ndarray:
        return _rate(cm[..., :, positive].sum(axis=-1), cm.sum(axis=(-2, -1)))

    return ConfusionMetric("selection_rate", fn, num_classes)


def _ci(stats: np.ndarray, level: float) -> tuple[float | None, float | None]:
    stats = stats[np.isfinite(stats)]
    if len(stats) < 2:  # no resamples (runtime.n_boot: 0), or one: no interval
        return None, None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def group_measurements(
    *,
    suite: str,
    dataset: str,
    metrics: list[ConfusionMetric],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: Mapping[str, np.ndarray],
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    intersections: bool = True,
    details: Mapping[str, dict[str, Any]] | None = None,
    min_group_n: int = SMALL_GROUP_N,
) -> list[Measurement]:
    """One :class:`Measurement` per metric, overall and per group, with bootstrap CIs.

    Point values overall and per group come from fairlearn's ``MetricFrame`` (each
    sensitive column separately, plus their intersection). CIs are percentile
    bootstraps, resampling examples overall and within each group.
    """
    from fairlearn.metrics import MetricFrame

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    rng = np.random.default_rng(seed)
    method = ci_method(f"percentile bootstrap, {n_boot} resamples, {level:.0%}", n_boot)
    scorers = {m.name: m for m in metrics}
    out: dict[str, Measurement] = {}
    boot_all = bootstrap_confusion(y_true, y_pred, metrics[0].num_classes, n_boot, rng) if n_boot and n else None
    for m in metrics:
        value = m(y_true, y_pred) if n else float("nan")
        lo, hi = _ci(m.from_counts(boot_all), level) if boot_all is not None else (None, None)
        out[m.name] = Measurement(
            suite=suite,
            dataset=dataset,
            metric=m.name,
            value=value,
            ci_low=lo,
            ci_high=hi,
            ci_method=method,
            n=n,
            details=dict((details or {}).get(m.name, {})),
        )
    for feat_name, feat in feature_columns(groups, intersections).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf = MetricFrame(metrics=scorers, y_true=y_true, y_pred=y_pred, sensitive_features={feat_name: feat})
        by_group = mf.by_group
        for group in by_group.index:
            members = feat == group
            cnt = int(members.sum())
            boot = (
                bootstrap_confusion(y_true[members], y_pred[members], metrics[0].num_classes, n_boot, rng)
                if n_boot and cnt
                else None
            )
            for m in metrics:
                lo, hi = _ci(m.from_counts(boot), level) if boot is not None else (None, None)
                out[m.name].groups.setdefault(feat_name, {})[str(group)] = GroupValue(
                    value=float(by_group.loc[group, m.name]),
                    ci_low=lo,
                    ci_high=hi,
                    n=cnt,
                    small_n=cnt < min_group_n,
                )
    return list(out.values())


# -- suspicious gains ----------------------------------------------------------------------

COLLAPSE_SHARE = 0.9
"""A model whose most predicted class takes more than this share of its predictions has
collapsed towards it (unless the labels are that skewed too)."""


def class_shares(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of each class ``0..num_classes-1`` among ``values``."""
    values = np.asarray(values, dtype=np.int64)
    counts = np.bincount(values, minlength=num_classes)[:num_classes].astype(np.float64)
    return counts / max(len(values), 1)


def suspicious_gain(
    labels: np.ndarray,
    pred: np.ndarray,
    base_pred: np.ndarray,
    num_classes: int,
    *,
    collapse_share: float = COLLAPSE_SHARE,
    class_names: dict[int, str] | None = None,
) -> str | None:
    """Why an accuracy gain of ``pred`` over ``base_pred`` on ``labels`` may not be real, else None.

    A gain is suspicious when the dense model is below chance on the set (chance: the
    accuracy of always predicting the most common label), so any drift towards that
    label "improves" it, or when the variant's predictions collapse: one class takes
    more than ``collapse_share`` of them while the labels give it no more than that.
    Not a gain (variant accuracy <= dense): None.
    """
    labels = np.asarray(labels, dtype=np.int64)
    pred, base_pred = np.asarray(pred, dtype=np.int64), np.asarray(base_pred, dtype=np.int64)
    if len(labels) == 0:
        return None
    acc, base_acc = float((pred == labels).mean()), float((base_pred == labels).mean())
    if acc <= base_acc:
        return None
    names = class_names or {}
    label_share, pred_share = class_shares(labels, num_classes), class_shares(pred, num_classes)
    chance = float(label_share.max())
    reasons = []
    if base_acc < chance:
        reasons.append(
            f"the dense model is below chance on this set (accuracy {base_acc:.3f} < {chance:.3f}, the share of its "
            f"most common label {names.get(int(label_share.argmax()), str(int(label_share.argmax())))!r})"
        )
    top = int(pred_share.argmax())
    if pred_share[top] > collapse_share and label_share[top] <= collapse_share:
        reasons.append(
            f"the variant's predictions collapse to {names.get(top, str(top))!r} "
            f"({pred_share[top]:.1%} of predictions, {label_share[top]:.1%} of labels)"
        )
    return "; ".join(reasons) if reasons else None


# -- resampling helpers shared by the OOD and bias suites --------------------------------


def bootstrap_indices(n: int, n_boot: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """``[n_boot, n]`` row indices of bootstrap resamples (empty when ``n_boot`` is 0)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if n == 0 or n_boot <= 0:
        return np.zeros((0, n), dtype=np.int64)
    return rng.integers(0, n, size=(n_boot, n))


def percentile_ci(boot: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap statistics (non-finite resamples are dropped)."""
    return _ci(np.asarray(boot, dtype=np.float64), level)


# -- calibration ---------------------------------------------------------------------------


def _ece_parts(proba: np.ndarray, y_true: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    # equal-width bins, right-closed: (0, 1/B], (1/B, 2/B], ... (Guo et al. 2017)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return bins, correct - conf


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (Guo et al. 2017).

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width
    confidence bins; 0 is perfectly calibrated.
    """
    if len(y_true) == 0:
        return float("nan")
    bins, gap = _ece_parts(proba, y_true, n_bins)
    per_bin = np.bincount(bins, weights=gap, minlength=n_bins)
    return float(np.abs(per_bin).sum() / len(gap))


def bootstrap_ece(proba: np.ndarray, y_true: np.ndarray, index: np.ndarray, *, n_bins: int = 15) -> np.ndarray:
    """ECE of each bootstrap resample ``index[b]`` (``[n_boot, n]`` row indices)."""
    bins, gap = _ece_parts(proba, y_true, n_bins)
    if index.size == 0:
        return np.zeros(len(index))
    b, n = index.shape
    codes = (np.arange(b)[:, None] * n_bins + bins[index]).ravel()
    sums = np.bincount(codes, weights=gap[index].ravel(), minlength=b * n_bins).reshape(b, n_bins)
    return np.abs(sums).sum(axis=1) / n


# -- ROC AUC: point values from sklearn, vectorised bootstrap, DeLong's paired test --------------


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` (NaN when one class is absent)."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def auc_from_ranks(scores: np.ndarray, n_pos: int) -> np.ndarray:
    """AUC per row of ``scores [B, n_pos + n_neg]`` whose first ``n_pos`` columns are positives."""
    from scipy.stats import rankdata

    n_neg = scores.shape[1] - n_pos
    ranks = rankdata(scores, axis=1)  # average ranks: ties count one half (Mann-Whitney)
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc(
    scores: np.ndarray,
    positive: np.ndarray,
    *,
    n_boot: int,
    seed: int | np.random.Generator = 0,
    paired_with: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stratified bootstrap of ROC AUC (positives and negatives resampled separately).

    Returns the ``[n_boot]`` AUCs of ``scores`` and, when ``paired_with`` (another
    model's scores on the same rows) is given, that model's AUCs on the same resamples.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    positive = np.asarray(positive, dtype=bool)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    if n_boot <= 0 or len(pos) == 0 or len(neg) == 0:
        return np.zeros(0), (np.zeros(0) if paired_with is not None else None)
    chunk = max(1, 2_000_000 // len(positive))
    out_a, out_b = [], []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = np.concatenate(
            [pos[rng.integers(0, len(pos), size=(b, len(pos)))], neg[rng.integers(0, len(neg), size=(b, len(neg)))]],
            axis=1,
        )
        out_a.append(auc_from_ranks(np.asarray(scores, dtype=np.float64)[idx], len(pos)))
        if paired_with is not None:
            out_b.append(auc_from_ranks(np.asarray(paired_with, dtype=np.float64)[idx], len(pos)))
    return np.concatenate(out_a), (np.concatenate(out_b) if paired_with is not None else None)


def delong_paired(scores_a: np.ndarray, scores_b: np.ndarray, positive: np.ndarray) -> dict[str, float | None]:
    """DeLong's test for two correlated ROC AUCs on the same examples.

    Fast algorithm of Sun & Xu (2014): the AUCs' covariance comes from the placement
    values of positives and negatives. Returns both AUCs, their difference b − a, its
    standard error and the two-sided p-value of "equal AUCs".
    """
    from scipy.stats import norm, rankdata

    positive = np.asarray(positive, dtype=bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        return {"auc_a": None, "auc_b": None, "delta": None, "se": None, "p_value": None}
    s = np.stack([np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)])
    x, y = s[:, positive], s[:, ~positive]
    tx, ty = rankdata(x, axis=1), rankdata(y, axis=1)
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.cov(v01) / m + np.cov(v10) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    delta = float(aucs[1] - aucs[0])
    if var <= 1e-15:
        p = 1.0 if abs(delta) < 1e-12 else 0.0
        se = 0.0
    else:
        se = var**0.5
        p = float(2 * norm.sf(abs(delta) / se))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "delta": delta, "se": se, "p_value": p}


# -- group disparities ----------------------------------------------------------------------------


def _group_codes(feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(np.asarray(feature, dtype=object).astype(str), return_inverse=True)
    return uniq, codes


def disparity_differences(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    feature: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
    return_boot: bool = False,
) -> dict[str, dict[str, Any]]:
    """Demographic-parity and equalized-odds differences of a binary task, with CIs.

    Point values come from one fairlearn ``MetricFrame`` (selection rate, TPR and FPR per
    group), as ``demographic_parity_difference`` and ``equalized_odds_difference`` define
    them: the largest between-group gap in selection rate, and the larger of the TPR and
    FPR gaps. CIs are percentile bootstraps that
    resample examples within each group (group sizes fixed); with the same ``seed`` and
    groups, two models get the same resamples, and ``return_boot`` adds the resampled
    values (``"boot"``) for a paired comparison.
    """
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    feature = np.asarray(feature, dtype=object).astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one frame for both: fairlearn's demographic_parity_difference is the selection-rate
        # difference between groups, its equalized_odds_difference (worst case) the larger of
        # the TPR and FPR differences, each computed from a MetricFrame of its own
        gaps = MetricFrame(
            metrics={"sel": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=feature,
        ).difference(method="between_groups")
        dp = float(gaps["sel"])
        eo = float(max(gaps["tpr"], gaps["fpr"]))
    uniq, codes = _group_codes(feature)
    dp_boot = eo_boot = None
    if n_boot > 0 and len(uniq) > 1:
        sel, tpr, fpr = [], [], []
        for g in range(len(uniq)):
            members = codes == g
            cm = bootstrap_confusion(y_true[members], y_pred[members], 2, n_boot, rng).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                sel.append(cm[:, :, 1].sum(axis=1) / cm.sum(axis=(1, 2)))
                tpr.append(cm[:, 1, 1] / cm[:, 1, :].sum(axis=1))
                fpr.append(cm[:, 0, 1] / cm[:, 0, :].sum(axis=1))

        def spread(rows: list[np.ndarray]) -> np.ndarray:
            a = np.stack(rows, axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmax(a, axis=1) - np.nanmin(a, axis=1)

        dp_boot = spread(sel)
        eo_boot = np.fmax(spread(tpr), spread(fpr))
    out = {}
    for name, value, boot in (
        ("demographic_parity_difference", dp, dp_boot),
        ("equalized_odds_difference", eo, eo_boot),
    ):
        lo, hi = percentile_ci(boot, level) if boot is not None else (None, None)
        out[name] = {"value": value, "ci_low": lo, "ci_high": hi, "n_groups": len(uniq)}
        if return_boot:
            out[name]["boot"] = boot if boot is not None else np.zeros(0)
    return out


def benjamini_hochberg(p_values: np.ndarray, *, method: str = "bh") -> np.ndarray:
    """Adjusted p-values (q-values) controlling the false discovery rate.

    ``method="bh"`` is Benjamini–Hochberg (valid for independent or positively
    dependent tests), ``"by"`` Benjamini–Yekutieli (any dependence); both through
    :func:`scipy.stats.false_discovery_control`. NaNs are passed through.
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = false_discovery_control(np.clip(p[ok], 0.0, 1.0), method=method)
    return q


def confusion_from_index(y_true: np.ndarray, y_pred: np.ndarray, index: np.ndarray, num_classes: int) -> np.ndarray:
    """``[n_boot, C, C]`` confusion matrices of the resamples ``index`` (``[n_boot, n]`` row indices).

    Unlike :func:`bootstrap_confusion` the resamples are given, so two models can be
    compared on exactly the same resamples (paired bootstrap).
    """
    c2 = num_classes * num_classes
    codes = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    b = len(index)
    if b == 0:
        return np.zeros((0, num_classes, num_classes), dtype=np.int64)
    offs = (np.arange(b)[:, None] * c2 + codes[index]).ravel()
    return np.bincount(offs, minlength=b * c2).reshape(b, num_classes, num_classes)
