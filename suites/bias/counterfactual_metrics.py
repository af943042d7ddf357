"""Counterfactual invariance: identity-term swaps of the eval texts (:mod:`suites.bias.counterfactual`),
the flip rate and probability shift they cause, and their paired tests against the dense model
(texts as clusters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit import paired, stats
from audit.data import EvalSet
from audit.results import GroupValue, Measurement
from audit.suite import SuiteContext, Variant

if TYPE_CHECKING:
    from suites.bias.run import BiasSuite

log = logging.getLogger(__name__)


@dataclass
class CounterfactualSet:
    """Counterfactual texts of the eval set, with the row, category and pair of each."""

    rows: np.ndarray
    categories: np.ndarray
    pairs: np.ndarray
    texts: list[str]
    text_pairs: list[str] | None
    n_texts_with_terms: int = 0


def find_counterfactuals(suite: BiasSuite, es: EvalSet) -> CounterfactualSet | None:
    cp = suite.params.counterfactual
    lex = suite._lexicon(strict=cp.strict)
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
        suite.warn(
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


def prob_shift(suite: BiasSuite, proba_cf: np.ndarray, proba_orig: np.ndarray) -> np.ndarray:
    """Signed change of the positive-class probability (binary) or half the L1 distance."""
    if proba_cf.shape[1] == 2 or suite.positive is not None:
        pos = suite.positive if suite.positive is not None else 1
        return proba_cf[:, pos] - proba_orig[:, pos]
    return 0.5 * np.abs(proba_cf - proba_orig).sum(axis=1)


def counterfactual_metrics(
    suite: BiasSuite,
    ctx: SuiteContext,
    variant: Variant,
    proba: np.ndarray,
    base: dict[str, Any] | None,
) -> tuple[list[Measurement], dict[str, Any]]:
    cf = suite.cf
    assert cf is not None
    es = ctx.eval_set
    proba_cf = ctx.proba(variant, cf.texts, cf.text_pairs)
    flip = proba_cf.argmax(axis=1) != proba[cf.rows].argmax(axis=1)
    signed = prob_shift(suite, proba_cf, proba[cf.rows])
    shift = np.abs(signed)
    base_flip = base_shift = None
    if base is not None and "cf_proba" in base:
        bp, bcf = np.asarray(base["proba"]), np.asarray(base["cf_proba"])
        base_flip = bcf.argmax(axis=1) != bp[cf.rows].argmax(axis=1)
        base_shift = np.abs(prob_shift(suite, bcf, bp[cf.rows]))
    # texts are the resampling unit (one text gives several counterfactuals)
    uniq_rows, cluster = np.unique(cf.rows, return_inverse=True)
    idx = stats.bootstrap_indices(len(uniq_rows), ctx.n_boot, suite.rng(ctx, 2))
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
                    small_n=n < suite.params.min_group_n,
                )
                if metric == "counterfactual_prob_shift":
                    signed_by_pair.setdefault(cat, {})[pair] = float(signed[m].mean())
                elif base_values is not None:
                    # one counterfactual per text and pair (one target per pair): independent units
                    t = paired.paired_binary(
                        base_values[m],
                        values[m],
                        n_boot=ctx.n_boot,
                        level=ctx.ci_level,
                        seed=ctx.seed,
                        test="exact McNemar on flips",
                    )
                    paired_groups.setdefault(cat, {})[pair] = t.replace(
                        extra={"newly_flipped": t.gained, "no_longer_flipped": t.lost}
                    ).to_dict()
        if signed_by_pair:
            details["signed_shift"] = signed_by_pair
        if base_values is not None:
            if metric == "counterfactual_flip_rate":
                # one text gives several counterfactuals whose flips are correlated: the test
                # takes texts as clusters (Obuchowski 1998), not counterfactuals as independent
                t = paired.paired_binary(
                    base_values,
                    values,
                    n_boot=ctx.n_boot,
                    level=ctx.ci_level,
                    clusters=cf.rows,
                    boot_deltas=boot - cluster_boot(base_values),
                    test="clustered McNemar on flips, texts as clusters (Obuchowski 1998)",
                    ci_method=suite.ci_method(ctx, ", texts resampled, paired"),
                )
                details["paired"] = t.replace(extra={"newly_flipped": t.gained, "no_longer_flipped": t.lost}).to_dict()
                details["paired_groups"] = paired_groups
            else:
                details["paired"] = paired.paired_continuous(
                    baseline=float(base_values.mean()),
                    value=float(values.mean()),
                    boot_deltas=boot - cluster_boot(base_values),
                    level=ctx.ci_level,
                    test="paired cluster bootstrap (normal approximation)",
                    n=len(values),
                    ci_method=suite.ci_method(ctx, ", texts resampled, paired"),
                ).to_dict()
        out.append(
            Measurement(
                suite=suite.name,
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
