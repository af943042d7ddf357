"""Implementation of the bias QA suite (see :mod:`suites.bbq` for the params and metrics).

Per BBQ set, on every variant (dense first), with ``variant.model`` a causal LM and
``ctx.predictor.tokenizer`` its tokenizer:

* each question's prompt is the template with its context and question; its three answers
  are scored as continuations (``delimiter + answer``) by summed log-likelihood
  (:func:`audit.models.lm_scoring.score_choices`, lm-evaluation-harness's ``multiple_choice``
  scoring; the harness's bbq task also offers ten extra UNKNOWN phrasings as choices, taken
  from HELM; here only the question's own three answers are, as in Parrish et al.); the
  answer with the highest log-likelihood is the model's;
* ``acc``, ``acc_ambig``, ``acc_disambig``: accuracy overall and per context condition, per
  category through fairlearn's ``MetricFrame`` (:func:`audit.stats.group_measurements`) when
  the set mixes categories;
* ``bias_disambig`` / ``bias_ambig``: the BBQ bias scores (:mod:`suites.bbq.scores`), percentile
  bootstrap CIs over the examples of the condition, per category through ``MetricFrame``;
* on a variant: ``acc*_delta`` with the exact McNemar test (:func:`audit.paired.paired_binary`),
  ``bias_*_delta`` with a paired bootstrap (the same resamples for both models;
  :func:`audit.paired.paired_continuous`), each record at ``details["paired"]`` (per category at
  ``details["paired_groups"]["category"]`` when the set mixes categories); the report's
  examples are questions whose answer moved to the biased one.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit import paired, stats
from audit.fingerprint import texts_sha256
from audit.models.lm_scoring import left_cut, score_choices
from audit.results import DatasetIdentity, GroupValue, Measurement
from audit.suite import PredictionSet, Suite, SuiteContext, SuiteOutput, Variant
from suites.bbq import BbqSet
from suites.bbq.data import BbqItem, read_bbq, subsample
from suites.bbq.scores import Answers, boot_scores, score

log = logging.getLogger(__name__)

TEXT_CHARS = 200
CONDITIONS = {"ambig": "acc_ambig", "disambig": "acc_disambig"}
BIAS = {"ambig": "bias_ambig", "disambig": "bias_disambig"}


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


@dataclass
class LoadedBbq:
    ref: BbqSet
    items: list[BbqItem]
    prompts: list[str]
    identity: DatasetIdentity
    warnings: list[str]

    @property
    def name(self) -> str:
        return self.ref.name

    def array(self, attr: str) -> np.ndarray:
        return np.array([getattr(it, attr) for it in self.items])

    @property
    def mixed(self) -> bool:
        return len({it.category for it in self.items}) > 1


def render(template: str, items: list[BbqItem]) -> list[str]:
    return [template.format(context=it.context, question=it.question) for it in items]


def load(ref: BbqSet, template: str, ctx: SuiteContext, delimiter: str = " ") -> LoadedBbq:
    path = ctx.config.paths.dataset(ref.path)
    where = f"dataset {ref.name} ({ref.path})"
    items, warning = subsample(read_bbq(path, where), ref.max_examples, ctx.config.seed)
    prompts = render(template, items)
    identity = DatasetIdentity(
        id=ref.name,
        source=str(path),
        split=None,
        n=len(items),
        fingerprint=texts_sha256(
            [p + "\x1f" + "\x1f".join(it.answers) for p, it in zip(prompts, items, strict=True)],
            [it.label for it in items],
        ),
        columns={"format": "bbq-jsonl", "template": template},
    )
    notes = [f"{where}: {warning}"] if warning else []
    limit, tokenizer = getattr(ctx.predictor, "max_length", None), getattr(ctx.predictor, "tokenizer", None)
    longest = [delimiter + max(it.answers, key=len) for it in items]
    cut = left_cut(tokenizer, prompts, longest, limit) if tokenizer is not None else 0
    if cut:
        notes.append(
            f"{where}: {cut} of {len(prompts)} prompts with their longest answer are longer than "
            f"max_length={limit} tokens and are cut on the left (the model sees only their last tokens)"
        )
        log.warning(notes[-1])
    return LoadedBbq(ref, items, prompts, identity, notes)


class BbqSuite(Suite):
    """BBQ accuracy per context condition and bias scores per category of a causal LM; paired deltas vs dense."""

    def setup(self, ctx: SuiteContext) -> None:
        self.sets = [load(ref, self.params.template, ctx, self.params.delimiter) for ref in self.params.sets]

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        base = (ctx.baseline or {}).get("sets", {}) if ctx.baseline is not None else None
        out = SuiteOutput()
        arts: dict[str, Any] = {}
        for s in self.sets:
            b = base.get(s.name) if base is not None else None
            if base is not None and b is None:
                raise RuntimeError(f"bbq suite: the dense baseline has no artifacts for set {s.name!r}")
            pred = self.predict(s, variant, ctx)
            out.measurements.extend(self.measure(s, pred, ctx, out))
            if b is not None:
                base_pred = np.asarray(b["pred"], dtype=np.int64)
                out.measurements.extend(self.compare(s, base_pred, pred, ctx))
                out.examples.extend(self.examples(s, base_pred, pred))
            arts[s.name] = {"pred": pred.tolist()}
            out.datasets.append(s.identity)
            if variant.is_baseline:
                out.warnings.extend(s.warnings)
        out.artifacts = {"sets": arts}
        return out

    def prediction_sets(self, artifacts: dict[str, Any], ctx: SuiteContext) -> list[PredictionSet]:
        """Each set's chosen answers (0-2) against the gold answers, grouped by category and context condition."""
        sets = artifacts.get("sets", {})
        return [
            PredictionSet(
                s.name,
                np.asarray(sets[s.name]["pred"], dtype=np.int64),
                s.array("label").astype(np.int64),
                {"category": s.array("category").astype(str), "condition": s.array("condition").astype(str)},
            )
            for s in self.sets
            if s.name in sets
        ]

    # -- scoring ---------------------------------------------------------------------------------

    def predict(self, s: LoadedBbq, variant: Variant, ctx: SuiteContext) -> np.ndarray:
        sc = score_choices(
            variant.model,
            ctx.predictor.tokenizer,
            s.prompts,
            [list(it.answers) for it in s.items],
            delimiter=self.params.delimiter,
            batch_size=int(self.params.batch_size or getattr(ctx.predictor, "batch_size", 8) or 8),
            max_length=getattr(ctx.predictor, "max_length", None),
        )
        return sc.pred.astype(np.int64)

    def _answers(self, s: LoadedBbq, pred: np.ndarray) -> Answers:
        return Answers.of(pred, s.array("label"), np.array([it.biased for it in s.items]), s.array("unknown"))

    def _method(self, ctx: SuiteContext, what: str) -> str | None:
        return stats.ci_method(f"{what}, {ctx.n_boot} resamples, {ctx.ci_level:.0%}", ctx.n_boot)

    def measure(self, s: LoadedBbq, pred: np.ndarray, ctx: SuiteContext, out: SuiteOutput) -> list[Measurement]:
        label, cond, cats = s.array("label"), s.array("condition"), s.array("category")
        ms: list[Measurement] = []
        subsets = {"acc": np.ones(len(label), dtype=bool), **{m: cond == c for c, m in CONDITIONS.items()}}
        for metric, mask in subsets.items():
            if not mask.any():
                out.not_applicable[f"{self.name}/{s.name}/{metric}"] = f"the set has no {metric[4:]} examples"
                continue
            (m,) = stats.group_measurements(
                suite=self.name,
                dataset=s.name,
                metrics=[stats.ConfusionMetric(metric, stats.accuracy_metric(3).from_counts, 3)],
                y_true=label[mask],
                y_pred=pred[mask],
                groups={"category": cats[mask]} if s.mixed else {},
                n_boot=ctx.n_boot,
                level=ctx.ci_level,
                seed=ctx.seed,
                intersections=False,
            )
            ms.append(m)
        answers = self._answers(s, pred)
        for c, metric in BIAS.items():
            members = np.flatnonzero(cond == c)
            if not len(members):
                out.not_applicable[f"{self.name}/{s.name}/{metric}"] = f"the set has no {c} examples"
                continue
            ms.append(self._bias(s, metric, answers, members, c == "ambig", cats, ctx))
        return ms

    def _bias(
        self,
        s: LoadedBbq,
        metric: str,
        answers: Answers,
        members: np.ndarray,
        ambiguous: bool,
        cats: np.ndarray,
        ctx: SuiteContext,
    ) -> Measurement:
        from fairlearn.metrics import MetricFrame

        sub = answers.take(members)
        rng = np.random.default_rng(ctx.seed)
        boot = boot_scores(sub, stats.bootstrap_indices(len(members), ctx.n_boot, rng), ambiguous)
        lo, hi = stats.percentile_ci(boot, ctx.ci_level) if len(boot) else (None, None)
        m = Measurement(
            suite=self.name,
            dataset=s.name,
            metric=metric,
            value=score(sub, ambiguous),
            ci_low=lo,
            ci_high=hi,
            ci_method=self._method(ctx, "percentile bootstrap over examples") if lo is not None else None,
            n=len(members),
            details={
                "n_biased_answers": int(sub.is_biased.sum()),
                "n_non_unknown_answers": int(sub.non_unknown.sum()),
                "accuracy": float(sub.correct.mean()),
            },
        )
        if s.mixed:
            # fairlearn's MetricFrame per category: y_true carries each example's position in `sub`
            feat = cats[members]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mf = MetricFrame(
                    metrics=lambda pos, _: score(sub.take(np.asarray(pos, dtype=np.int64)), ambiguous),
                    y_true=np.arange(len(members)),
                    y_pred=np.zeros(len(members)),
                    sensitive_features={"category": feat},
                )
            for group, value in mf.by_group.items():
                own = np.flatnonzero(feat == group)
                gb = boot_scores(sub, own[stats.bootstrap_indices(len(own), ctx.n_boot, rng)], ambiguous)
                glo, ghi = stats.percentile_ci(gb, ctx.ci_level) if len(gb) else (None, None)
                m.groups.setdefault("category", {})[str(group)] = GroupValue(
                    value=float(value), ci_low=glo, ci_high=ghi, n=len(own), small_n=len(own) < stats.SMALL_GROUP_N
                )
        return m

    # -- paired with dense -----------------------------------------------------------------------

    def compare(self, s: LoadedBbq, base_pred: np.ndarray, pred: np.ndarray, ctx: SuiteContext) -> list[Measurement]:
        label, cond = s.array("label"), s.array("condition")
        if len(base_pred) != len(pred):
            raise RuntimeError(f"bbq suite, set {s.name!r}: dense answered {len(base_pred)} questions, not {len(pred)}")
        ms = []
        subsets = {"acc": np.ones(len(label), dtype=bool), **{m: cond == c for c, m in CONDITIONS.items()}}
        for metric, mask in subsets.items():
            if not mask.any():
                continue
            rec = paired.paired_binary(
                base_pred[mask] == label[mask],
                pred[mask] == label[mask],
                n_boot=ctx.n_boot,
                level=ctx.ci_level,
                seed=ctx.seed,
            )
            ms.append(paired.delta_measurement(rec, suite=self.name, dataset=s.name, metric=f"{metric}_delta"))
        dense, var = self._answers(s, base_pred), self._answers(s, pred)
        for c, metric in BIAS.items():
            members = np.flatnonzero(cond == c)
            if not len(members):
                continue
            ambiguous = c == "ambig"
            d, v = dense.take(members), var.take(members)
            # the same resamples for both models (the seed of the dense measurement's CI)
            idx = stats.bootstrap_indices(len(members), ctx.n_boot, np.random.default_rng(ctx.seed))
            rec = paired.paired_continuous(
                baseline=score(d, ambiguous),
                value=score(v, ambiguous),
                boot_deltas=boot_scores(v, idx, ambiguous) - boot_scores(d, idx, ambiguous),
                level=ctx.ci_level,
                test="paired bootstrap over examples (normal approximation)",
                n=len(members),
                ci_method=self._method(ctx, "paired bootstrap over examples") if len(idx) else None,
                towards_stereotype=int(np.sum((v.is_biased == 1) & (d.is_biased == 0))),
                away_from_stereotype=int(np.sum((d.is_biased == 1) & (v.is_biased == 0))),
            )
            m = paired.delta_measurement(rec, suite=self.name, dataset=s.name, metric=f"{metric}_delta")
            if s.mixed:
                m.details["paired_groups"] = {"category": self._category_records(s, members, d, v, ambiguous, ctx)}
            ms.append(m)
        return ms

    def _category_records(
        self, s: LoadedBbq, members: np.ndarray, d: Answers, v: Answers, ambiguous: bool, ctx: SuiteContext
    ) -> dict[str, dict[str, Any]]:
        """Per category, the paired record of the bias score's change (its own resamples, shared by both models)."""
        feat = s.array("category")[members]
        rng = np.random.default_rng(ctx.seed)
        out = {}
        for group in sorted(set(feat.tolist())):
            own = np.flatnonzero(feat == group)
            gi = own[stats.bootstrap_indices(len(own), ctx.n_boot, rng)]
            rec = paired.paired_continuous(
                baseline=score(d.take(own), ambiguous),
                value=score(v.take(own), ambiguous),
                boot_deltas=boot_scores(v, gi, ambiguous) - boot_scores(d, gi, ambiguous),
                level=ctx.ci_level,
                test="paired bootstrap over examples (normal approximation)",
                n=len(own),
                ci_method=self._method(ctx, "paired bootstrap over examples") if len(gi) else None,
            )
            out[str(group)] = rec.to_dict()
        return out

    def examples(self, s: LoadedBbq, base_pred: np.ndarray, pred: np.ndarray) -> list[dict[str, Any]]:
        """Questions whose answer moved to the biased one (dense's was not), in file order."""
        if not self.params.n_examples:
            return []
        rows = []
        for i, it in enumerate(s.items):
            if it.biased[pred[i]] and not it.biased[base_pred[i]]:
                rows.append(
                    {
                        "set": s.name,
                        "category": it.category,
                        "context_condition": it.condition,
                        "question_polarity": it.polarity,
                        "prompt": _short(s.prompts[i]),
                        "gold": it.answers[it.label],
                        "dense": it.answers[base_pred[i]],
                        "variant": it.answers[pred[i]],
                    }
                )
                if len(rows) == self.params.n_examples:
                    break
        return rows
