"""Implementation of the adversarial suite (spec and params in :mod:`suites.adversarial`).

Per run: the resources every chosen recipe needs are checked in :meth:`setup` (before
any pruning or output). On the dense model the suite draws a seeded sample of examples
it classifies correctly, builds one :class:`textattack.Attack` per recipe (they are
reused for every variant: only the victim model behind the wrapper changes, and every
cache TextAttack keeps of model outputs, transformations and constraint checks is
cleared whenever it does), attacks the sample and keeps the adversarial texts as
baseline artifacts. On each variant it attacks the same sample in the same order
(direct) and replays the dense model's adversarial texts (transfer), and compares with
dense on the same examples (paired).

``textfooler_local``'s word neighbours always come from the dense model's input
embeddings: from the baseline when this process ran it, else from the dense model
loaded again from the config (a Ray worker, or a resumed run, may meet a variant
first). The baseline records the embedding's sha256, and a variant checks it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from audit.errors import DataError
from audit.suite import DefiningExamples, Suite, SuiteContext, SuiteOutput, Variant

from . import AdversarialParams
from .engine import FAILED, NOT_ATTACKED, SKIPPED, SUCCESS, AttackRecord
from .metrics import mean_measurement, paired_delta_measurement
from .offline import check_resources, no_downloads

log = logging.getLogger(__name__)

TEXT_LIMIT = 300


def _cut(text: str, limit: int = TEXT_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AdversarialSuite(Suite):
    """TextAttack recipes against the dense model and every variant; transfer from dense."""

    params: AdversarialParams
    keeps_variant_artifacts = True  # a variant's attack records define its accuracy-under-attack regression

    def __init__(self, spec: Any, params: Any) -> None:
        super().__init__(spec, params)
        self._attacks: dict[str, Any] = {}
        self._wrapper: Any = None
        self._embedding: Any = None
        self._embedding_sha256: str | None = None
        self.seed = 0

    # -- set-up ------------------------------------------------------------------------

    def setup(self, ctx: SuiteContext) -> None:
        p = self.params
        check_resources(list(p.recipes), sentence_encoder=p.sentence_encoder)
        if len(ctx.eval_set) == 0:
            raise DataError("the adversarial suite needs a non-empty eval split", where=ctx.eval_set.name)
        self.seed = ctx.seed if p.seed is None else p.seed

    def _ensure_attacks(self, variant: Variant, ctx: SuiteContext) -> None:
        """Point one Attack per recipe (built once per run) at ``variant``'s model, with cleared caches."""
        if self._attacks:
            if "textfooler_local" in self.params.recipes:
                self._dense_embedding(variant, ctx)  # checks the baseline's fingerprint
            self._wrapper.set_model(variant.model)
            for attack in self._attacks.values():
                attack.clear_cache()  # TextAttack's own caches hold the previous model's outputs
            return
        from . import recipes as R

        p = self.params
        # scores as the run's predictor does: a classifier's class logits, or a causal LM's zero-shot
        # choice log-likelihoods (TextAttack's goal function takes their softmax: the choice probabilities)
        predictor = ctx.predictor.derive(batch_size=p.model_batch_size, cache_size=1)
        self._wrapper = R.PredictorModelWrapper(predictor, variant.model)
        encoder = None
        if "textfooler_local" in p.recipes:
            self._dense_embedding(variant, ctx)
            if p.sentence_encoder:
                encoder = R.build_sentence_encoder(p)
        R.warm_up(list(p.recipes))
        with no_downloads():
            for recipe in p.recipes:
                self._attacks[recipe] = R.build_attack(
                    recipe, self._wrapper, p, embedding=self._embedding, sentence_encoder=encoder
                )
        log.debug("built %d attacks: %s", len(self._attacks), ", ".join(self._attacks))

    def _dense_embedding(self, variant: Variant, ctx: SuiteContext) -> Any:
        """The dense model's input embedding (textfooler_local's neighbours), whichever model came first."""
        from . import recipes as R

        if self._embedding is None:
            if variant.is_baseline:
                self._embedding = R.ModelInputEmbedding.from_model(variant.model, ctx.predictor.tokenizer)
            else:
                from audit.model_io import load_model

                log.info("textfooler_local: loading the dense model for its input embeddings")
                dense = load_model(ctx.config).model
                self._embedding = R.ModelInputEmbedding.from_model(dense, ctx.predictor.tokenizer)
                del dense
            self._embedding_sha256 = self._embedding.fingerprint()
        want = (ctx.baseline or {}).get("embedding_sha256")
        if want is not None and want != self._embedding_sha256:
            raise RuntimeError(
                "adversarial/textfooler_local: the dense model's input embeddings differ from those the dense "
                f"baseline was attacked with (sha256 {self._embedding_sha256[:12]} vs {want[:12]}); the word "
                "neighbours would not be the baseline's"
            )
        return self._embedding

    # -- regression attribution ----------------------------------------------------------

    def defining_examples(
        self, metric: str, dataset: str, test: str, ctx: SuiteContext, artifacts: dict[str, Any] | None = None
    ) -> DefiningExamples | None:
        """``accuracy_under_attack_delta`` of recipe ``dataset``: the variant's attacked examples, fixed.

        The rows of the paired test (attacked on dense and on the variant), each as the text the
        attack on the variant ended with: its adversarial text where the attack succeeded, else
        the original. Re-scoring them with layers restored asks which pruned layers make the
        variant's adversarial examples work; the attack itself is not re-run per restored group
        (its gap is dense's accuracy on these texts minus the variant's). None without the
        variant's or dense's attack records (a variant stored before records were kept).
        """
        if metric != "accuracy_under_attack_delta" or test != "paired":
            return None
        records = ((artifacts or {}).get("records") or {}).get(dataset)
        base = ((ctx.baseline or {}).get("records") or {}).get(dataset)
        if not records or not base:
            return None
        dense_attacked = {int(b["index"]) for b in base if b["status"] != NOT_ATTACKED}
        rows = [AttackRecord.from_dict(r) for r in records]
        rows = [r for r in rows if r.attacked and r.index in dense_attacked]
        if not rows:
            return None
        cols = [r.perturbed if r.status == SUCCESS and r.perturbed else r.original for r in rows]
        es = ctx.eval_set
        index = np.array([r.index for r in rows], dtype=np.int64)
        groups = {k: np.asarray(v, dtype=object).astype(str)[index] for k, v in es.groups.items()}
        n_adv = sum(r.status == SUCCESS for r in rows)
        return DefiningExamples(
            dataset=dataset,
            texts=[c[0] for c in cols],
            text_pairs=[c[1] for c in cols] if len(cols[0]) > 1 else None,
            labels=np.array([r.label for r in rows], dtype=np.int64),
            members=np.arange(len(rows)),
            scope=(
                f"the {len(rows)} examples {dataset} attacked on dense and on the variant, as the variant's attack "
                f"left them ({n_adv} adversarial texts, the rest original); fixed: the attack is not re-run per "
                "restored group"
            ),
            groups=groups,
        )

    # -- the sample ----------------------------------------------------------------------

    def _sample(self, variant: Variant, ctx: SuiteContext, warnings: list[str]) -> np.ndarray:
        if ctx.baseline is not None and "sample" in ctx.baseline:
            return np.asarray(ctx.baseline["sample"], dtype=int)
        es = ctx.eval_set
        if not variant.is_baseline:
            warnings.append("adversarial: no dense-model results were available; the sample was drawn on this variant")
        pred = ctx.proba(variant, es.texts, es.text_pairs).argmax(axis=1)
        correct = np.flatnonzero(pred == es.labels)
        rng = np.random.default_rng(self.seed)
        sample = rng.permutation(correct)[: self.params.n_examples]
        if len(sample) < self.params.n_examples:
            warnings.append(
                f"adversarial: only {len(sample)} eval examples are classified correctly by the dense model; "
                f"attacking those instead of n_examples={self.params.n_examples}"
            )
        return sample

    # -- run -------------------------------------------------------------------------------

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        from .engine import attack_examples

        p = self.params
        es = ctx.eval_set
        out = SuiteOutput()
        sample = self._sample(variant, ctx, out.warnings)
        texts = [es.texts[i] for i in sample]
        pairs = [es.text_pairs[i] for i in sample] if es.text_pairs is not None else None
        labels = es.labels[sample]
        groups = {k: v[sample] for k, v in es.groups.items()}
        base_records: dict[str, list[dict[str, Any]]] = (ctx.baseline or {}).get("records", {})
        direct = variant.is_baseline or p.attack_variants
        records_out: dict[str, list[dict[str, Any]]] = {}
        transfer_out: dict[str, list[dict[str, Any]]] = {}
        timing: dict[str, float] = {}
        capped: dict[str, tuple[int, int]] = {}

        if direct and len(sample):
            self._ensure_attacks(variant, ctx)
        t_start = time.monotonic()
        deadline = t_start + p.time_budget_s if p.time_budget_s is not None else None
        for k, recipe in enumerate(p.recipes):
            records: list[AttackRecord] = []
            if direct:
                share = None
                if deadline is not None:  # what is left, shared by the recipes still to run
                    now = time.monotonic()
                    share = now + max(0.0, deadline - now) / (len(p.recipes) - k)
                t0 = time.perf_counter()
                with no_downloads():
                    records = attack_examples(
                        self._attacks[recipe],
                        recipe=recipe,
                        indices=[int(i) for i in sample],
                        texts=texts,
                        labels=[int(y) for y in labels],
                        pairs=pairs,
                        seed=self.seed,
                        deadline=share,
                    )
                timing[recipe] = time.perf_counter() - t0
                records_out[recipe] = [r.to_dict() for r in records]
                out.measurements.extend(self._direct_measurements(recipe, records, groups, ctx, timing[recipe]))
                out.examples.extend(self._examples(recipe, "direct", records, ctx))
                not_attacked = sum(r.status == NOT_ATTACKED for r in records)
                if not_attacked:
                    capped[recipe] = (not_attacked, len(records))
                if not variant.is_baseline and recipe in base_records:
                    base = [AttackRecord.from_dict(d) for d in base_records[recipe]]
                    out.measurements.append(self._paired(recipe, base, records, ctx))
            if p.transfer:
                source = (
                    records
                    if variant.is_baseline
                    else [AttackRecord.from_dict(d) for d in base_records.get(recipe, [])]
                )
                if source:
                    ms, rows, ex = self._transfer(recipe, source, groups, variant, ctx)
                    out.measurements.extend(ms)
                    transfer_out[recipe] = rows
                    out.examples.extend(ex)
        if capped:
            what = ", ".join(f"{r} {k} of {n}" for r, (k, n) in capped.items())
            out.warnings.append(
                f"adversarial on {variant.id}: the wall-clock cap (time_budget_s={p.time_budget_s:g} s) cut the "
                f"attacks short, examples not attacked: {what}; these results depend on machine load and rest on "
                "fewer examples"
            )
        if out.warnings:
            for w in out.warnings:
                log.warning("%s", w)
        out.artifacts = {
            "sample": [int(i) for i in sample],
            "records": records_out,
            "transfer": transfer_out,
            "seconds": timing,
            "wrapper": self._wrapper_stats(),
        }
        if variant.is_baseline and self._embedding_sha256 is not None:
            out.artifacts["embedding_sha256"] = self._embedding_sha256
        return out

    def _wrapper_stats(self) -> dict[str, int]:
        if self._wrapper is None:
            return {}
        return {"queries": self._wrapper.queries, "forwarded": self._wrapper.forwarded}

    # -- measurements ------------------------------------------------------------------------

    def _direct_measurements(
        self,
        recipe: str,
        records: list[AttackRecord],
        groups: dict[str, np.ndarray],
        ctx: SuiteContext,
        seconds: float,
    ) -> list[Any]:
        p = self.params
        status = np.array([r.status for r in records], dtype=object)
        attacked = status != NOT_ATTACKED
        tried = (status == SUCCESS) | (status == FAILED)
        success = status == SUCCESS
        counts = {s: int((status == s).sum()) for s in (SUCCESS, FAILED, SKIPPED, NOT_ATTACKED)}
        common: dict[str, Any] = {
            "recipe": recipe,
            "eval_dataset": ctx.eval_set.name,
            "counts": counts,
            "n_sampled": len(records),
            "query_budget": p.query_budget,
            "seed": self.seed,
            "seconds": round(seconds, 3),
            "attacks_per_minute": round(60.0 * int(attacked.sum()) / seconds, 2) if seconds > 0 else None,
        }
        if counts[NOT_ATTACKED]:
            common["time_capped"] = counts[NOT_ATTACKED]
        n_attacked = int(attacked.sum())
        if n_attacked < p.min_paired_n:
            common["insufficient"] = self._too_few(n_attacked, "attacked examples", capped=bool(counts[NOT_ATTACKED]))
        kw = {"n_boot": ctx.n_boot, "level": ctx.ci_level, "seed": self.seed}

        def sub(mask: np.ndarray) -> dict[str, np.ndarray]:
            return {k: v[mask] for k, v in groups.items()}

        queries = np.array([r.num_queries for r in records], dtype=float)
        pct = np.array([r.perturbed_pct for r in records], dtype=float)
        return [
            mean_measurement(
                recipe=recipe,
                metric="success_rate",
                values=success[tried].astype(float),
                groups=sub(tried),
                details=common,
                **kw,
            ),
            mean_measurement(
                recipe=recipe,
                metric="accuracy_under_attack",
                values=(status[attacked] == FAILED).astype(float),
                groups=sub(attacked),
                details={**common, "clean_accuracy": float(tried.sum() / max(attacked.sum(), 1))},
                **kw,
            ),
            mean_measurement(
                recipe=recipe,
                metric="perturbed_words_pct",
                values=pct[success],
                groups=sub(success),
                details=common,
                **kw,
            ),
            mean_measurement(
                recipe=recipe, metric="avg_queries", values=queries[tried], groups=sub(tried), details=common, **kw
            ),
        ]

    def _paired(self, recipe: str, base: list[AttackRecord], records: list[AttackRecord], ctx: SuiteContext) -> Any:
        by_index = {r.index: r for r in base}
        pairs = [
            (by_index[r.index], r) for r in records if r.attacked and r.index in by_index and by_index[r.index].attacked
        ]
        details: dict[str, Any] = {"recipe": recipe, "n_excluded_not_attacked": len(records) - len(pairs)}
        if len(pairs) < self.params.min_paired_n:
            details["insufficient"] = self._too_few(
                len(pairs), "paired examples (attacked on dense and variant)", capped=len(pairs) < len(records)
            )
        return paired_delta_measurement(
            recipe=recipe,
            metric="accuracy_under_attack_delta",
            base=np.array([b.robust for b, _ in pairs], dtype=bool),
            variant=np.array([v.robust for _, v in pairs], dtype=bool),
            n_boot=ctx.n_boot,
            level=ctx.ci_level,
            seed=self.seed,
            details=details,
        )

    def _too_few(self, n: int, what: str, *, capped: bool) -> str:
        why = "the time_budget_s cap cut the attacks short" if capped else "raise n_examples"
        return f"{n} {what}, fewer than min_paired_n={self.params.min_paired_n} ({why})"

    def _transfer(
        self,
        recipe: str,
        source: list[AttackRecord],
        groups: dict[str, np.ndarray],
        variant: Variant,
        ctx: SuiteContext,
    ) -> tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """Replay the dense model's adversarial set on ``variant``."""
        attacked = np.array([r.attacked for r in source], dtype=bool)
        kept = [r for r in source if r.attacked]
        if not kept:
            return [], [], []
        adv_cols = [r.perturbed if r.status == SUCCESS and r.perturbed else r.original for r in kept]
        orig_cols = [r.original for r in kept]
        has_pair = len(kept[0].original) > 1

        def proba(cols: list[list[str]]) -> np.ndarray:
            return ctx.proba(variant, [c[0] for c in cols], [c[1] for c in cols] if has_pair else None)

        p_adv = proba(adv_cols)
        p_orig = proba(orig_cols)
        labels = np.array([r.label for r in kept])
        adv_pred = p_adv.argmax(axis=1)
        orig_pred = p_orig.argmax(axis=1)
        dense_success = np.array([r.status == SUCCESS for r in kept], dtype=bool)
        kw = {"n_boot": ctx.n_boot, "level": ctx.ci_level, "seed": self.seed}
        sub_groups = {k: v[attacked] for k, v in groups.items()}
        details = {
            "recipe": recipe,
            "dense_adversarial_examples": int(dense_success.sum()),
            "n_attacked_on_dense": len(kept),
        }
        ms = [
            mean_measurement(
                recipe=recipe,
                metric="transfer_accuracy",
                values=(adv_pred == labels).astype(float),
                groups=sub_groups,
                details=details,
                **kw,
            )
        ]
        eligible = dense_success & (orig_pred == labels)
        if not variant.is_baseline:
            ms.append(
                mean_measurement(
                    recipe=recipe,
                    metric="transfer_success_rate",
                    values=(adv_pred[eligible] != labels[eligible]).astype(float),
                    groups={k: v[eligible] for k, v in sub_groups.items()},
                    details={**details, "n_eligible": int(eligible.sum())},
                    **kw,
                )
            )
        rows = [
            {
                "index": r.index,
                "dense_success": bool(ok),
                "orig_pred": int(op),
                "adv_pred": int(ap),
                "adv_proba": [float(x) for x in pa],
            }
            for r, ok, op, ap, pa in zip(kept, dense_success, orig_pred, adv_pred, p_adv, strict=True)
        ]
        examples = []
        if not variant.is_baseline and self.params.n_report_examples:
            fooled = [i for i in np.flatnonzero(eligible) if adv_pred[i] != labels[i]]
            for i in fooled[: self.params.n_report_examples]:
                r = kept[i]
                examples.append(
                    self._example_row(recipe, "transfer", r, ctx, adv_cols[i], int(adv_pred[i]), float(p_adv[i].max()))
                )
        return ms, rows, examples

    # -- examples for the report -------------------------------------------------------------

    def _example_row(
        self,
        recipe: str,
        kind: str,
        r: AttackRecord,
        ctx: SuiteContext,
        perturbed: list[str],
        pred: int,
        conf: float,
    ) -> dict[str, Any]:
        name = ctx.id2label
        orig_conf = max(r.orig_proba) if r.orig_proba else float("nan")
        orig_pred = r.orig_pred if r.orig_pred is not None else r.label
        return {
            "recipe": recipe,
            "kind": kind,
            "label": name.get(r.label, str(r.label)),
            "original": _cut(" || ".join(r.original)),
            "perturbed": _cut(" || ".join(perturbed)),
            "prediction": f"{name.get(orig_pred, orig_pred)} ({orig_conf:.2f}) -> {name.get(pred, pred)} ({conf:.2f})",
            "words_changed": str(r.words_changed) if kind == "direct" else "",
            "queries": str(r.num_queries) if kind == "direct" else "",
        }

    def _examples(self, recipe: str, kind: str, records: list[AttackRecord], ctx: SuiteContext) -> list[dict[str, Any]]:
        rows = []
        for r in records:
            if len(rows) >= self.params.n_report_examples:
                break
            if r.status == SUCCESS and r.perturbed and r.pert_pred is not None:
                rows.append(self._example_row(recipe, kind, r, ctx, r.perturbed, r.pert_pred, max(r.pert_proba)))
        return rows
