"""Implementation of the OOD suite.

For the in-distribution (ID) eval set and every shifted set (other-domain datasets and
seeded corruptions of the ID texts) it reports accuracy, macro-F1, ECE, the drop from
ID and the max-softmax OOD-detection AUROC, each with a percentile-bootstrap CI. On
pruned variants every metric also carries a paired comparison with the dense model
(``details["paired"]``): the same bootstrap resamples are drawn for both models (the
generators are seeded by run seed, set and metric), so the CI of the change is paired.

A shifted set that names its counterpart (``paired_with``: a contrast set and its
originals, row by row) also gets ``paired_set_gap``: its accuracy minus the counterpart's,
pair by pair, and on variants the change of that gap against dense.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit import paired, stats
from audit.data import EvalSet
from audit.errors import DataError
from audit.results import DatasetIdentity, Measurement
from audit.suite import (
    DefiningExamples,
    Suite,
    SuiteContext,
    SuiteOutput,
    Variant,
    accuracy_delta_measurement,
    add_prediction_details,
)
from suites.ood import Corruption, OodParams

log = logging.getLogger(__name__)

_METRIC_CODE = {"acc": 1, "f1": 2, "ece": 3, "drop": 4, "auroc": 5, "gap": 6}
TEXT_CHARS = 300


@dataclass
class ShiftedSet:
    """One shifted set: an other-domain dataset, or a corruption of ID rows."""

    name: str
    kind: str  # "dataset" or the corruption kind
    es: EvalSet
    rows: np.ndarray | None = None
    """For corruptions: the ID rows the set was made from (same order)."""
    changed_share: float | None = None
    originals: list[str] | None = None

    @property
    def paired_with_id(self) -> bool:
        return self.rows is not None


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


class OodSuite(Suite):
    """Shifted sets and corruptions vs in-distribution, and vs the dense model."""

    params: OodParams

    def setup(self, ctx: SuiteContext) -> None:
        from suites.ood.corruptions import corrupt

        es = ctx.eval_set
        self._setup_warnings: list[str] = []
        self.sets: list[ShiftedSet] = []
        for ref in self.params.shifted:
            if ref.name == es.name:
                raise DataError(
                    f"shifted set {ref.name!r} has the same name as the in-distribution eval set",
                    where=f"suites.ood.shifted[{ref.name}]",
                    hint="give the shifted set another name",
                )
            shifted = ctx.load_dataset(ref)
            self.sets.append(ShiftedSet(ref.name, "dataset", shifted))
        self.pairs = self._pairs()
        taken = {es.name, *(s.name for s in self.sets)}
        for c in self.params.corruptions:
            name = self._corruption_name(c, es.name)
            if name in taken:
                raise DataError(
                    f"corruption name {name!r} is already used by another set",
                    where="suites.ood.corruptions",
                    hint="set `name:` on the corruption",
                )
            taken.add(name)
            texts = corrupt(es.texts, c.kind, rate=c.effective_rate, seed=c.seed)
            changed = np.array([a != b for a, b in zip(texts, es.texts, strict=True)])
            share = float(changed.mean()) if len(changed) else 0.0
            rows = np.flatnonzero(changed) if c.only_changed else np.arange(len(es))
            if len(rows) == 0:
                msg = (
                    f"corruption {name} ({c.kind}, rate {c.effective_rate}) changed none of the "
                    f"{len(es)} eval texts; it is not evaluated"
                )
                log.warning(msg)
                self._setup_warnings.append(msg)
                continue
            sub = es.subset(rows, name=es.name).with_texts([texts[i] for i in rows], name)
            ctx.record_truncation(sub)  # a corruption can push a text over max_length
            self.sets.append(
                ShiftedSet(name, c.kind, sub, rows=rows, changed_share=share, originals=[es.texts[i] for i in rows])
            )
            log.info("ood: %s changed %.0f%% of %d texts", name, 100 * share, len(es))

    def _pairs(self) -> list[tuple[int, int]]:
        """``(set, counterpart)`` indices into :attr:`sets` of every ``paired_with``, checked row by row."""
        index = {s.name: i for i, s in enumerate(self.sets)}
        out = []
        for ref in self.params.shifted:
            if ref.paired_with is None:
                continue
            i, j = index[ref.name], index[ref.paired_with]
            a, b = self.sets[i].es, self.sets[j].es
            where = f"suites.ood.shifted[{ref.name}].paired_with"
            if len(a) != len(b):
                raise DataError(
                    f"shifted set {ref.name!r} has {len(a)} rows but its counterpart {ref.paired_with!r} has "
                    f"{len(b)}; paired sets need one row per pair, in the same order",
                    where=where,
                    hint="give both sets the same rows (and the same max_examples), or drop paired_with",
                )
            other = next(r for r in self.params.shifted if r.name == ref.paired_with)
            if ref.columns.id and other.columns.id and a.ids != b.ids:
                k = next(k for k, (x, y) in enumerate(zip(a.ids, b.ids, strict=True)) if x != y)
                raise DataError(
                    f"shifted set {ref.name!r} and its counterpart {ref.paired_with!r} are not in the same order: "
                    f"row {k + 1} has id {a.ids[k]!r} in one and {b.ids[k]!r} in the other",
                    where=where,
                    hint="sort both files by the id column",
                )
            out.append((i, j))
        return out

    @staticmethod
    def _corruption_name(c: Corruption, eval_name: str) -> str:
        return c.name or f"{eval_name}-{c.kind}"

    def defining_examples(self, metric: str, dataset: str, test: str, ctx: SuiteContext) -> DefiningExamples | None:
        """Accuracy and its paired change on one set (a shifted set, a corruption, or the ID set): its examples."""
        if metric not in ("accuracy", "accuracy_delta") or test != "paired":
            return None
        sets = [s.es for s in getattr(self, "sets", []) if s.name == dataset]
        es = sets[0] if sets else (ctx.eval_set if dataset == ctx.eval_set.name else None)
        if es is None:
            return None
        return DefiningExamples.of(es)

    def _rng(self, ctx: SuiteContext, set_index: int, metric: str) -> np.random.Generator:
        return np.random.default_rng([ctx.seed, set_index + 1, _METRIC_CODE[metric]])

    # -- metrics ------------------------------------------------------------------------------

    def _ece(
        self,
        ctx: SuiteContext,
        dataset: str,
        set_index: int,
        proba: np.ndarray,
        labels: np.ndarray,
        base_proba: np.ndarray | None,
    ) -> Measurement:
        bins = self.params.ece_bins
        value = stats.expected_calibration_error(proba, labels, n_bins=bins)
        idx = stats.bootstrap_indices(len(labels), ctx.n_boot, self._rng(ctx, set_index, "ece"))
        boot = stats.bootstrap_ece(proba, labels, idx, n_bins=bins)
        lo, hi = stats.percentile_ci(boot, ctx.ci_level)
        details: dict[str, Any] = {"bins": bins}
        if base_proba is not None:
            base_boot = stats.bootstrap_ece(base_proba, labels, idx, n_bins=bins)
            details["paired"] = paired.paired_continuous(
                baseline=stats.expected_calibration_error(base_proba, labels, n_bins=bins),
                value=value,
                boot_deltas=boot - base_boot,
                level=ctx.ci_level,
                test="paired bootstrap (normal approximation)",
                n=len(labels),
            ).to_dict()
        return Measurement(
            suite=self.name,
            dataset=dataset,
            metric="ece",
            value=value,
            ci_low=lo,
            ci_high=hi,
            ci_method=self._ci_method(ctx),
            n=len(labels),
            details=details,
        )

    def _ci_method(self, ctx: SuiteContext, suffix: str = "") -> str | None:
        return stats.ci_method(f"percentile bootstrap, {ctx.n_boot} resamples, {ctx.ci_level:.0%}{suffix}", ctx.n_boot)

    def _classification(
        self,
        ctx: SuiteContext,
        s: ShiftedSet,
        set_index: int,
        pred: np.ndarray,
        base_pred: np.ndarray | None,
    ) -> list[Measurement]:
        es = s.es
        acc_m, f1_m = stats.accuracy_metric(ctx.num_labels), stats.macro_f1_metric(ctx.num_labels)
        ms = stats.group_measurements(
            suite=self.name,
            dataset=s.name,
            metrics=[acc_m, f1_m],
            y_true=es.labels,
            y_pred=pred,
            groups=es.groups,
            n_boot=ctx.n_boot,
            level=ctx.ci_level,
            seed=ctx.seed + set_index,
        )
        add_prediction_details(ms, es.labels, pred, ctx)
        if base_pred is None:
            return ms
        idx = stats.bootstrap_indices(len(es), ctx.n_boot, self._rng(ctx, set_index, "f1"))
        cm = stats.confusion_from_index(es.labels, pred, idx, ctx.num_labels)
        cm_base = stats.confusion_from_index(es.labels, base_pred, idx, ctx.num_labels)
        f1 = next(m for m in ms if m.metric == "macro_f1")
        f1.details["paired"] = paired.paired_continuous(
            baseline=f1_m(es.labels, base_pred),
            value=f1.value if f1.value is not None else float("nan"),
            boot_deltas=f1_m.from_counts(cm) - f1_m.from_counts(cm_base),
            level=ctx.ci_level,
            test="paired bootstrap (normal approximation)",
            n=len(es),
        ).to_dict()
        ms.append(
            accuracy_delta_measurement(self.name, s.name, es.labels, pred, base_pred, ctx, seed=ctx.seed + set_index)
        )
        return ms

    def _drop(
        self,
        ctx: SuiteContext,
        s: ShiftedSet,
        set_index: int,
        id_correct: np.ndarray,
        correct: np.ndarray,
        base: tuple[np.ndarray, np.ndarray] | None,
    ) -> Measurement:
        rng = self._rng(ctx, set_index, "drop")
        if s.paired_with_id:
            ref = id_correct[s.rows]
            idx = stats.bootstrap_indices(len(correct), ctx.n_boot, rng)
            idx_id = idx
        else:
            ref = id_correct
            idx_id = stats.bootstrap_indices(len(ref), ctx.n_boot, rng)
            idx = stats.bootstrap_indices(len(correct), ctx.n_boot, rng)

        def drop_boot(ref_c: np.ndarray, sh_c: np.ndarray) -> np.ndarray:
            if len(idx) == 0:
                return np.zeros(0)
            return ref_c.astype(float)[idx_id].mean(axis=1) - sh_c.astype(float)[idx].mean(axis=1)

        value = float(ref.mean() - correct.mean())
        boot = drop_boot(ref, correct)
        lo, hi = stats.percentile_ci(boot, ctx.ci_level)
        details: dict[str, Any] = {
            "reference": "the same rows uncorrupted" if s.paired_with_id else "the whole in-distribution set",
            "in_distribution_accuracy": float(ref.mean()),
            "shifted_accuracy": float(correct.mean()),
        }
        if base is not None:
            b_id, b_sh = base
            b_ref = b_id[s.rows] if s.paired_with_id else b_id
            details["paired"] = paired.paired_continuous(
                baseline=float(b_ref.mean() - b_sh.mean()),
                value=value,
                boot_deltas=boot - drop_boot(b_ref, b_sh),
                level=ctx.ci_level,
                test="paired bootstrap (normal approximation)",
                n=len(correct),
            ).to_dict()
        return Measurement(
            suite=self.name,
            dataset=s.name,
            metric="accuracy_drop",
            value=value,
            ci_low=lo,
            ci_high=hi,
            ci_method=self._ci_method(ctx, ", paired rows" if s.paired_with_id else ", sets resampled separately"),
            n=len(correct),
            details=details,
        )

    def _auroc(
        self,
        ctx: SuiteContext,
        s: ShiftedSet,
        set_index: int,
        id_msp: np.ndarray,
        msp: np.ndarray,
        base: tuple[np.ndarray, np.ndarray] | None,
    ) -> Measurement:
        rng = self._rng(ctx, set_index, "auroc")
        ref = id_msp[s.rows] if s.paired_with_id else id_msp
        scores = np.concatenate([ref, msp])
        positive = np.concatenate([np.ones(len(ref), bool), np.zeros(len(msp), bool)])
        value = stats.roc_auc(scores, positive)
        base_scores = None
        if base is not None:
            b_id, b_sh = base
            base_scores = np.concatenate([b_id[s.rows] if s.paired_with_id else b_id, b_sh])
        if s.paired_with_id:
            # the corrupted rows are the uncorrupted rows: resample row pairs together
            idx = stats.bootstrap_indices(len(msp), ctx.n_boot, rng)
            n = len(msp)

            def boot_of(sc: np.ndarray) -> np.ndarray:
                if len(idx) == 0:
                    return np.zeros(0)
                return stats.auc_from_ranks(np.concatenate([sc[:n][idx], sc[n:][idx]], axis=1), n)

            boot = boot_of(scores)
            base_boot = boot_of(base_scores) if base_scores is not None else None
        else:
            boot, base_boot = stats.bootstrap_auc(
                scores, positive, n_boot=ctx.n_boot, seed=rng, paired_with=base_scores
            )
        lo, hi = stats.percentile_ci(boot, ctx.ci_level)
        details: dict[str, Any] = {
            "score": "max softmax probability",
            "positive": "in-distribution",
            "n_in": int(len(ref)),
            "n_shifted": int(len(msp)),
            "mean_confidence_in": float(ref.mean()) if len(ref) else None,
            "mean_confidence_shifted": float(msp.mean()) if len(msp) else None,
        }
        if base_scores is not None and base_boot is not None:
            details["paired"] = paired.paired_continuous(
                baseline=stats.roc_auc(base_scores, positive),
                value=value,
                boot_deltas=boot - base_boot,
                level=ctx.ci_level,
                test="paired bootstrap (normal approximation)",
                n=len(scores),
            ).to_dict()
        return Measurement(
            suite=self.name,
            dataset=s.name,
            metric="detection_auroc",
            value=value,
            ci_low=lo,
            ci_high=hi,
            ci_method=self._ci_method(
                ctx, ", paired rows" if s.paired_with_id else ", stratified (in and shifted resampled separately)"
            ),
            n=len(scores),
            details=details,
        )

    def _gap(
        self,
        ctx: SuiteContext,
        pair: tuple[int, int],
        correct: dict[str, np.ndarray],
        base_correct: dict[str, np.ndarray] | None,
    ) -> Measurement:
        """``ood/<set>/paired_set_gap``: accuracy on the set minus on its counterpart, pair by pair."""
        s, cp = self.sets[pair[0]], self.sets[pair[1]]
        a, b = correct[s.name], correct[cp.name]
        d = a.astype(float) - b.astype(float)
        idx = stats.bootstrap_indices(len(d), ctx.n_boot, self._rng(ctx, pair[0], "gap"))

        def boot_of(x: np.ndarray) -> np.ndarray:
            return x[idx].mean(axis=1) if len(idx) else np.zeros(0)

        boot = boot_of(d)
        lo, hi = stats.percentile_ci(boot, ctx.ci_level)
        value = float(d.mean()) if len(d) else None
        details: dict[str, Any] = {
            "paired_with": cp.name,
            "shift": "dataset",
            "accuracy": float(a.mean()) if len(a) else None,
            "counterpart_accuracy": float(b.mean()) if len(b) else None,
            "only_this_right": int((a & ~b).sum()),
            "only_counterpart_right": int((~a & b).sum()),
        }
        if base_correct is not None:
            bd = base_correct[s.name].astype(float) - base_correct[cp.name].astype(float)
            details["paired"] = paired.paired_continuous(
                baseline=float(bd.mean()) if len(bd) else None,
                value=value,
                boot_deltas=boot - boot_of(bd),
                level=ctx.ci_level,
                test="paired bootstrap over example pairs (normal approximation)",
                n=len(d),
            ).to_dict()
        return Measurement(
            suite=self.name,
            dataset=s.name,
            metric="paired_set_gap",
            value=value,
            ci_low=lo,
            ci_high=hi,
            ci_method=self._ci_method(ctx, ", example pairs"),
            n=len(d),
            details=details,
        )

    # -- the suite --------------------------------------------------------------------------------

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        es = ctx.eval_set
        base = ctx.baseline
        id_proba = ctx.proba(variant, es.texts, es.text_pairs)
        id_pred = id_proba.argmax(axis=1)
        id_correct = id_pred == es.labels
        id_msp = id_proba.max(axis=1)
        base_id = np.asarray(base["id_proba"]) if base is not None else None
        base_id_correct = base_id.argmax(axis=1) == es.labels if base_id is not None else None
        measurements = [self._ece(ctx, es.name, -1, id_proba, es.labels, base_id)]
        artifacts: dict[str, Any] = {"id_proba": id_proba, "sets": {}}
        examples: list[dict[str, Any]] = []
        datasets: list[DatasetIdentity] = []
        correct_of: dict[str, np.ndarray] = {}
        base_correct_of: dict[str, np.ndarray] = {}
        for i, s in enumerate(self.sets):
            proba = ctx.proba(variant, s.es.texts, s.es.text_pairs)
            pred = proba.argmax(axis=1)
            correct = pred == s.es.labels
            msp = proba.max(axis=1)
            artifacts["sets"][s.name] = proba
            b_proba = np.asarray(base["sets"][s.name]) if base is not None and s.name in base["sets"] else None
            b_pred = b_proba.argmax(axis=1) if b_proba is not None else None
            correct_of[s.name] = correct
            if b_pred is not None:
                base_correct_of[s.name] = b_pred == s.es.labels
            ms = self._classification(ctx, s, i, pred, b_pred)
            ms.append(self._ece(ctx, s.name, i, proba, s.es.labels, b_proba))
            ms.append(
                self._drop(
                    ctx,
                    s,
                    i,
                    id_correct,
                    correct,
                    (base_id_correct, b_pred == s.es.labels)
                    if b_pred is not None and base_id_correct is not None
                    else None,
                )
            )
            if self.params.detection:
                ms.append(
                    self._auroc(
                        ctx,
                        s,
                        i,
                        id_msp,
                        msp,
                        (base_id.max(axis=1), b_proba.max(axis=1))
                        if b_proba is not None and base_id is not None
                        else None,
                    )
                )
            for m in ms:
                m.details.setdefault("shift", "corruption" if s.paired_with_id else "dataset")
                if s.changed_share is not None:
                    m.details.setdefault("kind", s.kind)
                    m.details.setdefault("changed_share", s.changed_share)
            measurements.extend(ms)
            examples.extend(self._examples(s, pred, b_pred, id_pred))
            if s.es.identity is not None:
                datasets.append(s.es.identity)
        for pair in self.pairs:
            both = all(self.sets[k].name in base_correct_of for k in pair)
            measurements.append(self._gap(ctx, pair, correct_of, base_correct_of if both else None))
        warnings = list(self._setup_warnings) if variant.is_baseline else []
        return SuiteOutput(
            measurements=measurements, artifacts=artifacts, examples=examples, warnings=warnings, datasets=datasets
        )

    def _examples(
        self, s: ShiftedSet, pred: np.ndarray, base_pred: np.ndarray | None, id_pred: np.ndarray
    ) -> list[dict[str, Any]]:
        """A few rows for the report.

        On the dense model: shifted inputs it gets wrong (with the original text for
        corruptions); on a variant: rows the dense model got right and the variant gets wrong.
        """
        k = self.params.n_examples
        if k == 0:
            return []
        labels = s.es.labels
        if base_pred is None:
            pick = np.flatnonzero(pred != labels)[:k]
        else:
            pick = np.flatnonzero((base_pred == labels) & (pred != labels))[:k]
        rows = []
        for j in pick:
            row: dict[str, Any] = {
                "set": s.name,
                "text": _short(s.es.texts[j]),
                "label": int(labels[j]),
                "prediction": int(pred[j]),
            }
            if base_pred is not None:
                row["dense_prediction"] = int(base_pred[j])
            if s.originals is not None and s.rows is not None:
                row["original"] = _short(s.originals[j])
                row["prediction_on_original"] = int(id_pred[s.rows[j]])
            rows.append(row)
        return rows
