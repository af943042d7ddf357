"""The lm suite's out-of-distribution side: seeded corruptions of perplexity sets, OOD detection from the NLL.

* Corrupted copies: every document of a perplexity set corrupted with the ood suite's
  :func:`suites.ood.corruptions.corrupt` (same kinds, rates and per-row seeding), scored by
  :mod:`suites.lm.run` as a set of its own (perplexity, nll_delta, perplexity_ratio vs dense).
  Here, per model, ``corruption_perplexity_ratio``: the copy's corpus perplexity over the clean
  set's, the same documents resampled together (paired bootstrap); on a variant its
  ``details["paired"]`` tests the change of that ratio vs dense's on the same resamples.
* OOD detection: each document's mean NLL per token (sum NLL / tokens; higher = out) as the score
  separating ``out`` from ``in``: ``ood_auroc`` (sklearn's ROC AUC through
  :func:`audit.stats.roc_auc`, stratified bootstrap CI); on a variant ``ood_auroc_delta`` with
  DeLong's paired test (:func:`audit.paired.paired_auc`) at ``details["paired"]`` and the CI of the
  paired stratified bootstrap (both models' AUCs on the same resamples). Documents without a
  scored token (empty texts) have no mean and are left out, counted in details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from audit import paired, stats
from audit.data import EvalSet
from audit.results import Measurement
from audit.suite import SuiteContext
from suites.lm import LmParams, OodDetection, PerplexitySet, TextCorruption

_CODE = {"corruption": 1, "detection": 2}


@dataclass
class CorruptedCopy:
    """One corrupted copy of a perplexity set: its dataset id, the corruption, the set with corrupted texts."""

    id: str
    source: str
    corruption: TextCorruption
    es: EvalSet
    changed: int


def corrupted_copies(ref: PerplexitySet, es: EvalSet) -> list[CorruptedCopy]:
    """The configured corruptions of ``es`` (every row, seeded as the ood suite seeds them)."""
    from suites.ood.corruptions import corrupt

    out = []
    for cid, c in zip(ref.corruption_ids(), ref.corruptions, strict=True):
        texts = corrupt(es.texts, c.kind, rate=c.effective_rate, seed=c.seed)
        changed = sum(a != b for a, b in zip(texts, es.texts, strict=True))
        out.append(CorruptedCopy(cid, ref.name, c, es.with_texts(texts, cid), changed))
    return out


def _rng(ctx: SuiteContext, what: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(ctx.seed), _CODE[what], index])


def _method(ctx: SuiteContext, what: str) -> str | None:
    return stats.ci_method(f"{what}, {ctx.n_boot} resamples, {ctx.ci_level:.0%}", ctx.n_boot)


def _arrays(art: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(art["nll"], dtype=np.float64), np.asarray(art["tokens"], dtype=np.float64)


def _log_ratio(clean: tuple[np.ndarray, np.ndarray], bad: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> Any:
    """log(perplexity of the corrupted copy / perplexity of the clean set) on resamples ``idx`` (or all rows)."""
    (n0, t0), (n1, t1) = clean, bad
    with np.errstate(divide="ignore", invalid="ignore"):
        return n1[idx].sum(axis=-1) / t1[idx].sum(axis=-1) - n0[idx].sum(axis=-1) / t0[idx].sum(axis=-1)


def corruption_ratio(
    suite: str,
    copy: CorruptedCopy,
    index: int,
    arts: dict[str, Any],
    base: dict[str, Any] | None,
    ctx: SuiteContext,
) -> Measurement:
    """``corruption_perplexity_ratio`` of one copy on the model whose artifacts are ``arts``."""
    clean, bad = _arrays(arts[copy.source]), _arrays(arts[copy.id])
    n = len(clean[0])
    idx = stats.bootstrap_indices(n, ctx.n_boot, _rng(ctx, "corruption", index))
    everything = np.arange(n)
    value = float(np.exp(_log_ratio(clean, bad, everything)))
    boot = np.exp(_log_ratio(clean, bad, idx)) if len(idx) else np.zeros(0)
    lo, hi = stats.percentile_ci(boot, ctx.ci_level) if len(boot) else (None, None)
    c = copy.corruption
    details: dict[str, Any] = {
        "clean_set": copy.source,
        "kind": c.kind,
        "rate": c.effective_rate,
        "seed": c.seed,
        "changed_documents": copy.changed,
        "clean_perplexity": float(np.exp(clean[0].sum() / clean[1].sum())) if clean[1].sum() else None,
        "corrupted_perplexity": float(np.exp(bad[0].sum() / bad[1].sum())) if bad[1].sum() else None,
    }
    if base is not None:
        b_clean, b_bad = _arrays(base[copy.source]), _arrays(base[copy.id])
        b_boot = np.exp(_log_ratio(b_clean, b_bad, idx)) if len(idx) else np.zeros(0)
        details["paired"] = paired.paired_continuous(
            baseline=float(np.exp(_log_ratio(b_clean, b_bad, everything))),
            value=value,
            boot_deltas=boot - b_boot,
            level=ctx.ci_level,
            test="paired bootstrap over documents (normal approximation)",
            n=n,
            ci_method=_method(ctx, "paired bootstrap over documents") if len(idx) else None,
        ).to_dict()
    return Measurement(
        suite=suite,
        dataset=copy.id,
        metric="corruption_perplexity_ratio",
        value=value,
        ci_low=lo,
        ci_high=hi,
        ci_method=_method(ctx, "paired bootstrap over documents (clean and corrupted together)")
        if lo is not None
        else None,
        n=n,
        details=details,
    )


def mean_nll(art: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Each document's mean NLL per token (documents without a scored token left out) and how many were left out."""
    nll, tokens = _arrays(art)
    keep = tokens > 0
    return nll[keep] / tokens[keep], int((~keep).sum())


def _scores(arts: dict[str, Any], det: OodDetection) -> tuple[np.ndarray, np.ndarray, int]:
    (s_in, e_in), (s_out, e_out) = mean_nll(arts[det.in_]), mean_nll(arts[det.out])
    positive = np.concatenate([np.zeros(len(s_in), bool), np.ones(len(s_out), bool)])
    return np.concatenate([s_in, s_out]), positive, e_in + e_out


def detection(
    suite: str,
    det: OodDetection,
    index: int,
    arts: dict[str, Any],
    base: dict[str, Any] | None,
    ctx: SuiteContext,
) -> list[Measurement]:
    """``ood_auroc`` of one detection on the model whose artifacts are ``arts``; on a variant ``ood_auroc_delta``."""
    scores, positive, empty = _scores(arts, det)
    base_scores = _scores(base, det)[0] if base is not None else None
    boot, base_boot = stats.bootstrap_auc(
        scores, positive, n_boot=ctx.n_boot, seed=_rng(ctx, "detection", index), paired_with=base_scores
    )
    lo, hi = stats.percentile_ci(boot, ctx.ci_level) if len(boot) else (None, None)
    value = stats.roc_auc(scores, positive)
    n_in, n_out = int((~positive).sum()), int(positive.sum())
    details: dict[str, Any] = {
        "score": "mean NLL per token of each document (higher = out of distribution)",
        "positive": "out",
        "in": det.in_,
        "out": det.out,
        "n_in": n_in,
        "n_out": n_out,
        "mean_nll_in": float(scores[~positive].mean()) if n_in else None,
        "mean_nll_out": float(scores[positive].mean()) if n_out else None,
        "empty_documents_left_out": empty,
    }
    method = _method(ctx, "stratified bootstrap (in and out resampled separately)")
    ms = [
        Measurement(
            suite=suite,
            dataset=det.name,
            metric="ood_auroc",
            value=value if np.isfinite(value) else None,
            ci_low=lo,
            ci_high=hi,
            ci_method=method if lo is not None else None,
            n=len(scores),
            details=details,
        )
    ]
    if base_scores is not None:
        rec = paired.paired_auc(base_scores, scores, positive, n_in=n_in, n_out=n_out)
        if base_boot is not None and len(boot):
            d_lo, d_hi = stats.percentile_ci(boot - base_boot, ctx.ci_level)
            rec = rec.replace(
                ci_low=d_lo,
                ci_high=d_hi,
                ci_method=_method(ctx, "paired stratified bootstrap (both models on the same resamples)"),
            )
        ms.append(
            paired.delta_measurement(
                rec, suite=suite, dataset=det.name, metric="ood_auroc_delta", details={"in": det.in_, "out": det.out}
            )
        )
    return ms


def measurements(
    suite: str,
    params: LmParams,
    copies: list[CorruptedCopy],
    arts: dict[str, Any],
    base: dict[str, Any] | None,
    ctx: SuiteContext,
) -> list[Measurement]:
    """The corruption ratios and the detections of one model (``base``: dense's per-set artifacts, on a variant)."""
    ms = [corruption_ratio(suite, c, i, arts, base, ctx) for i, c in enumerate(copies)]
    for i, det in enumerate(params.ood_detection):
        ms.extend(detection(suite, det, i, arts, base, ctx))
    return ms
