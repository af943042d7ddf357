"""Implementation of the LM performance suite (see :mod:`suites.lm` for the params and metrics).

Per set, on every variant (dense first), with ``variant.model`` a causal LM and
``ctx.predictor.tokenizer`` its tokenizer:

* perplexity sets (and their seeded corrupted copies, each a set of its own): per-document NLL
  (:func:`audit.models.lm_scoring.document_nll`), corpus perplexity ``exp(sum nll / sum tokens)``
  with a percentile bootstrap CI over documents, per group through fairlearn's ``MetricFrame``;
  on a variant ``nll_delta``: the change of the corpus NLL per token, ``sum(nll_v - nll_d) / sum
  tokens``, with a paired bootstrap over documents (the same resamples for both models;
  :func:`audit.paired.paired_continuous`), and ``perplexity_ratio = exp(nll_delta)``;
* choice tasks: ``acc`` / ``acc_norm`` (:func:`audit.models.lm_scoring.score_choices`) overall and per
  group (:func:`audit.stats.group_measurements`, i.e. ``MetricFrame``); on a variant ``acc_delta``
  with the exact McNemar test on per-example correctness (:func:`audit.paired.paired_binary`);
* prompt sets: on a variant ``greedy_agreement`` and ``greedy_exact_match`` against dense's greedy
  continuations, bootstrap CI over prompts; dense is 1.0 by construction (not computed).

Corruption ratios and OOD detection from the sequence NLL are in :mod:`suites.lm.ood`.
Every comparison with dense is the :class:`audit.paired.PairedComparison` at
``details["paired"]``, so :mod:`audit.analysis` puts it in the run's FDR family.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit import paired, stats
from audit.data import EvalSet, read_ref
from audit.errors import DataError
from audit.models.lm_scoring import (
    document_nll,
    generation_agreement,
    greedy_continuations,
    left_cut,
    score_choices,
)
from audit.results import GroupValue, Measurement
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant, prediction_details
from suites.lm import ChoiceTask, PerplexitySet, PromptSet, template_fields
from suites.lm import ood as lm_ood

log = logging.getLogger(__name__)


@dataclass
class LoadedSet:
    """One configured set, loaded and (for tasks and prompts) rendered through its template."""

    kind: str  # "perplexity" | "choice" | "generation"
    ref: PerplexitySet | ChoiceTask | PromptSet
    es: EvalSet
    inputs: list[str]
    """Texts scored (perplexity) or prompts (choice tasks, prompt sets), one per row."""
    id: str | None = None
    """The dataset id when it is not the ref's name (a corrupted copy of a perplexity set)."""

    @property
    def name(self) -> str:
        return self.id or self.ref.name


def _where(ref: Any) -> str:
    return f"dataset {ref.name} ({ref.path})" if ref.path is not None else f"dataset {ref.name} (hub {ref.hub.name})"


def load_set(ref: Any, ctx: SuiteContext, *, id2label: dict[int, str] | None = None) -> EvalSet:
    """Load ``ref`` through :func:`audit.data.read_ref` (labels only for a choice task: its choices are the classes)."""
    path = ctx.config.paths.dataset(ref.path)
    return read_ref(
        ref,
        path,
        id2label or {},
        seed=ctx.config.seed,
        offline=ctx.config.offline,
        need_label=id2label is not None,
    )


def render(template: str, es: EvalSet, ref: Any) -> list[str]:
    """``template`` filled in for every row of ``es``; a field that names no usable column is a :class:`DataError`."""
    cols = ref.columns
    values: dict[str, list[Any]] = {cols.text: es.texts, **es.groups, **es.columns}
    if cols.id:
        values[cols.id] = es.ids
    for f in template_fields(template):
        if f == cols.label:
            raise DataError(
                f"template field {{{f}}} is the gold column (columns.label): the prompt would give the answer away",
                where=_where(ref),
            )
        if f not in values:
            raise DataError(
                f"template field {{{f}}} names no column; the template can use {sorted(values)}",
                where=_where(ref),
                hint="fix the template or the column map",
            )
    return [
        template.format_map({k: "" if v[i] is None else str(v[i]) for k, v in values.items()}) for i in range(len(es))
    ]


TEXT_CHARS = 200
"""Characters of a prompt or continuation shown in the report's examples."""


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def _choice_metric(name: str, k: int) -> stats.ConfusionMetric:
    base = stats.accuracy_metric(k)
    return stats.ConfusionMetric(name, base.from_counts, k)


def _ppl_of(nll: np.ndarray, tokens: np.ndarray) -> float:
    total = float(np.sum(tokens))
    return float(np.exp(np.sum(nll) / total)) if total else float("nan")


class LmSuite(Suite):
    """Perplexity, zero-shot multiple choice and greedy agreement of a causal LM; paired deltas vs dense."""

    def setup(self, ctx: SuiteContext) -> None:
        p = self.params
        self.sets: list[LoadedSet] = []
        self._setup_warnings: list[str] = []
        self.copies: list[lm_ood.CorruptedCopy] = []
        for ref in p.perplexity:
            es = load_set(ref, ctx)
            self.sets.append(LoadedSet("perplexity", ref, es, list(es.texts)))
            for c in lm_ood.corrupted_copies(ref, es):
                self.copies.append(c)
                self.sets.append(LoadedSet("perplexity", ref, c.es, list(c.es.texts), id=c.id))
                if not c.changed:
                    self._setup_warnings.append(
                        f"{_where(ref)}: corruption {c.id} ({c.corruption.kind}, rate {c.corruption.effective_rate}) "
                        "changed none of the documents"
                    )
        for task in p.choice_tasks:
            es = load_set(task, ctx, id2label={i: c.strip() for i, c in enumerate(task.choices)})
            self.sets.append(LoadedSet("choice", task, es, render(task.template, es, task)))
            self._check_length(self.sets[-1], ctx)
        for ps in p.generation:
            es = load_set(ps, ctx)
            self.sets.append(LoadedSet("generation", ps, es, render(ps.template, es, ps)))

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        base = (ctx.baseline or {}).get("sets", {}) if ctx.baseline is not None else None
        out = SuiteOutput()
        sets_art: dict[str, Any] = {}
        for s in self.sets:
            b = base.get(s.name) if base is not None else None
            if base is not None and b is None:
                raise RuntimeError(f"lm suite: the dense baseline has no artifacts for set {s.name!r}")
            fn = {"perplexity": self._perplexity, "choice": self._choice, "generation": self._generation}[s.kind]
            ms, art = fn(s, variant, ctx, b)
            out.examples.extend(art.pop("_examples", []))
            out.measurements.extend(ms)
            sets_art[s.name] = art
            if s.es.identity is not None:
                out.datasets.append(s.es.identity)
            if variant.is_baseline:
                out.warnings.extend(f"{_where(s.ref)}: {w}" for w in s.es.warnings)
        out.measurements.extend(lm_ood.measurements(self.name, self.params, self.copies, sets_art, base, ctx))
        if variant.is_baseline:
            out.warnings.extend(self._setup_warnings)
        out.artifacts = {"sets": sets_art}
        return out

    # -- helpers ---------------------------------------------------------------------------------

    def _check_length(self, s: LoadedSet, ctx: SuiteContext) -> None:
        """Warn when prompts with a choice exceed ``max_length`` tokens: the scorer cuts them on the left."""
        limit = getattr(ctx.predictor, "max_length", None)
        if not limit:
            return
        task: ChoiceTask = s.ref  # type: ignore[assignment]
        longest = task.delimiter + max(task.choices, key=len)
        cut = left_cut(ctx.predictor.tokenizer, s.inputs, [longest] * len(s.inputs), limit)
        if cut:
            msg = (
                f"{_where(task)}: {cut} of {len(s.inputs)} prompts with their longest choice are longer than "
                f"max_length={limit} tokens and are cut on the left (the model sees only their last tokens)"
            )
            log.warning(msg)
            self._setup_warnings.append(msg)

    def _batch_size(self, ctx: SuiteContext) -> int:
        return int(self.params.batch_size or getattr(ctx.predictor, "batch_size", 8) or 8)

    def _method(self, ctx: SuiteContext, what: str = "percentile bootstrap") -> str | None:
        return stats.ci_method(f"{what}, {ctx.n_boot} resamples, {ctx.ci_level:.0%}", ctx.n_boot)

    # -- perplexity ------------------------------------------------------------------------------

    def _perplexity(
        self, s: LoadedSet, variant: Variant, ctx: SuiteContext, base: dict[str, Any] | None
    ) -> tuple[list[Measurement], dict[str, Any]]:
        tok = ctx.predictor.tokenizer
        max_length = getattr(s.ref, "max_length", None) or getattr(ctx.predictor, "max_length", None)
        d = document_nll(variant.model, tok, s.inputs, batch_size=self._batch_size(ctx), max_length=max_length)
        nll, tokens = d.nll, d.tokens
        n = len(nll)
        rng = np.random.default_rng(ctx.seed)
        idx = stats.bootstrap_indices(n, ctx.n_boot, rng)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = np.exp(nll[idx].sum(axis=1) / tokens[idx].sum(axis=1))
        lo, hi = stats.percentile_ci(boot, ctx.ci_level) if len(idx) else (None, None)
        ppl = Measurement(
            suite=self.name,
            dataset=s.name,
            metric="perplexity",
            value=d.perplexity(),
            ci_low=lo,
            ci_high=hi,
            ci_method=self._method(ctx, "percentile bootstrap over documents") if lo is not None else None,
            n=n,
            details={"tokens": int(tokens.sum()), "nll_per_token": float(nll.sum() / max(int(tokens.sum()), 1))},
        )
        self._perplexity_groups(ppl, s, nll, tokens, ctx, rng)
        ms = [ppl]
        if base is not None:
            b_nll = np.asarray(base["nll"], dtype=np.float64)
            if not np.array_equal(np.asarray(base["tokens"]), tokens):
                raise RuntimeError(f"lm suite, set {s.name!r}: the variant's documents have other token counts")
            total = float(tokens.sum())
            diff = nll - b_nll
            # the same resamples for both models: the paired bootstrap of the change in NLL per token
            boot_d = diff[idx].sum(axis=1) / tokens[idx].sum(axis=1) if len(idx) else np.zeros(0)
            rec = paired.paired_continuous(
                baseline=float(b_nll.sum() / total) if total else None,
                value=float(nll.sum() / total) if total else None,
                boot_deltas=boot_d,
                level=ctx.ci_level,
                test="paired bootstrap over documents (normal approximation)",
                n=n,
                ci_method=self._method(ctx, "paired bootstrap over documents") if len(idx) else None,
                tokens=int(total),
            )
            delta = paired.delta_measurement(rec, suite=self.name, dataset=s.name, metric="nll_delta")
            ms.append(delta)
            ratio = Measurement(
                suite=self.name,
                dataset=s.name,
                metric="perplexity_ratio",
                value=float(np.exp(rec.delta)) if rec.delta is not None else None,
                ci_low=float(np.exp(rec.ci_low)) if rec.ci_low is not None else None,
                ci_high=float(np.exp(rec.ci_high)) if rec.ci_high is not None else None,
                ci_method=rec.ci_method,
                n=n,
                details={
                    "dense_perplexity": _ppl_of(b_nll, tokens),
                    "note": "exp(nll_delta); its test is nll_delta's",
                },
            )
            ms.append(ratio)
        return ms, {"nll": nll.tolist(), "tokens": tokens.tolist()}

    def _perplexity_groups(
        self,
        m: Measurement,
        s: LoadedSet,
        nll: np.ndarray,
        tokens: np.ndarray,
        ctx: SuiteContext,
        rng: np.random.Generator,
    ) -> None:
        """Per-group corpus perplexity (fairlearn ``MetricFrame`` with NLL as y_true and token counts as y_pred)."""
        from fairlearn.metrics import MetricFrame

        for feat_name, feat in stats.feature_columns(s.es.groups, self.params.intersections).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mf = MetricFrame(metrics=_ppl_of, y_true=nll, y_pred=tokens, sensitive_features={feat_name: feat})
            for group, value in mf.by_group.items():
                members = np.flatnonzero(feat == group)
                gi = members[stats.bootstrap_indices(len(members), ctx.n_boot, rng)]
                with np.errstate(divide="ignore", invalid="ignore"):
                    boot = np.exp(nll[gi].sum(axis=1) / tokens[gi].sum(axis=1))
                lo, hi = stats.percentile_ci(boot, ctx.ci_level) if len(gi) else (None, None)
                cnt = len(members)
                m.groups.setdefault(feat_name, {})[str(group)] = GroupValue(
                    value=float(value), ci_low=lo, ci_high=hi, n=cnt, small_n=cnt < stats.SMALL_GROUP_N
                )

    # -- multiple choice -------------------------------------------------------------------------

    def _choice(
        self, s: LoadedSet, variant: Variant, ctx: SuiteContext, base: dict[str, Any] | None
    ) -> tuple[list[Measurement], dict[str, Any]]:
        task: ChoiceTask = s.ref  # type: ignore[assignment]
        k = len(task.choices)
        names = {i: c.strip() for i, c in enumerate(task.choices)}
        sc = score_choices(
            variant.model,
            ctx.predictor.tokenizer,
            s.inputs,
            task.choices,
            delimiter=task.delimiter,
            batch_size=self._batch_size(ctx),
            max_length=getattr(ctx.predictor, "max_length", None),
        )
        gold = s.es.labels
        ms: list[Measurement] = []
        preds = {"acc": sc.pred, "acc_norm": sc.pred_norm}
        for metric, pred in preds.items():
            (m,) = stats.group_measurements(
                suite=self.name,
                dataset=s.name,
                metrics=[_choice_metric(metric, k)],
                y_true=gold,
                y_pred=pred,
                groups=s.es.groups,
                n_boot=ctx.n_boot,
                level=ctx.ci_level,
                seed=ctx.seed,
                intersections=self.params.intersections,
            )
            m.details.update(prediction_details(gold, pred, names))
            ms.append(m)
        if base is not None:
            base_pred = np.asarray(base["pred"], dtype=np.int64)
            rec = paired.paired_binary(
                base_pred == gold, sc.pred == gold, n_boot=ctx.n_boot, level=ctx.ci_level, seed=ctx.seed
            )
            m = paired.delta_measurement(rec, suite=self.name, dataset=s.name, metric="acc_delta")
            m.details.update(prediction_details(gold, sc.pred, names))
            reason = stats.suspicious_gain(gold, sc.pred, base_pred, k, class_names=names)
            if reason is not None:
                m.details["suspicious_gain"] = reason
            ms.append(m)
        art: dict[str, Any] = {"pred": sc.pred.tolist(), "pred_norm": sc.pred_norm.tolist()}
        if base is not None and self.params.n_examples:
            lost = np.flatnonzero((base_pred == gold) & (sc.pred != gold))[: self.params.n_examples]
            art["_examples"] = [
                {
                    "set": s.name,
                    "prompt": _short(s.inputs[i]),
                    "gold": task.choices[gold[i]],
                    "dense": task.choices[base_pred[i]],
                    "variant": task.choices[sc.pred[i]],
                }
                for i in lost
            ]
        return ms, art

    # -- greedy generation -----------------------------------------------------------------------

    def _generation(
        self, s: LoadedSet, variant: Variant, ctx: SuiteContext, base: dict[str, Any] | None
    ) -> tuple[list[Measurement], dict[str, Any]]:
        ps: PromptSet = s.ref  # type: ignore[assignment]
        n = len(s.inputs)
        if base is None:
            # dense is the reference: it agrees with itself by construction (nothing to compute)
            conts = greedy_continuations(
                variant.model,
                ctx.predictor.tokenizer,
                s.inputs,
                max_new_tokens=ps.max_new_tokens,
                batch_size=self._batch_size(ctx),
            )
            ms = [
                Measurement(
                    suite=self.name, dataset=s.name, metric=metric, value=1.0, n=n, details={"by_construction": True}
                )
                for metric in ("greedy_agreement", "greedy_exact_match")
            ]
            return ms, {"continuations": [c.tolist() for c in conts]}
        ref = [np.asarray(c, dtype=np.int64) for c in base["continuations"]]
        conts = greedy_continuations(
            variant.model,
            ctx.predictor.tokenizer,
            s.inputs,
            max_new_tokens=ps.max_new_tokens,
            batch_size=self._batch_size(ctx),
        )
        ag = generation_agreement(ref, conts)
        method = self._method(ctx, "percentile bootstrap over prompts")
        ms = []
        for metric, values in (("greedy_agreement", ag.token), ("greedy_exact_match", ag.exact.astype(np.float64))):
            lo, hi = stats.bootstrap_ci(values, n_boot=ctx.n_boot, level=ctx.ci_level, seed=ctx.seed)
            details: dict[str, Any] = {"max_new_tokens": ps.max_new_tokens}
            if metric == "greedy_agreement":
                details.update(
                    exact_match=float(ag.exact.mean()) if n else None,
                    common_prefix=float(ag.prefix.mean()) if n else None,
                )
            ms.append(
                Measurement(
                    suite=self.name,
                    dataset=s.name,
                    metric=metric,
                    value=float(values.mean()) if n else None,
                    ci_low=lo,
                    ci_high=hi,
                    ci_method=method if lo is not None else None,
                    n=n,
                    details=details,
                )
            )
        art = {"continuations": [c.tolist() for c in conts]}
        if self.params.n_examples:
            tok = ctx.predictor.tokenizer
            worst = [int(i) for i in np.argsort(ag.token, kind="stable")[: self.params.n_examples] if ag.token[i] < 1.0]
            art["_examples"] = [
                {
                    "set": s.name,
                    "prompt": _short(s.inputs[i]),
                    "dense": _short(tok.decode(ref[i], skip_special_tokens=True)),
                    "variant": _short(tok.decode(conts[i], skip_special_tokens=True)),
                    "token_agreement": round(float(ag.token[i]), 3),
                }
                for i in worst
            ]
        return ms, art
