"""Implementation of the compute suite (see :mod:`suites.compute`).

Each dataset's texts go through the deployed model once more, in the predictor's own batches
(:meth:`audit.inference.Predictor.encode`), with forward hooks on every Linear layer. Per input:

* a gated layer (:mod:`audit.deploy.activation`) reads, per token, the inputs its gate lets through:
  ``2 x out x active`` FLOPs;
* any other layer does ``2 x out x in`` per token, or ``2 x non-zeros`` when it is deployed in a sparse
  format that skips zero weights;

summed over the input's real tokens (padding excluded through the attention mask). The dense
model's FLOPs on the same input (the baseline's artifacts) make ``relative_compute`` a paired ratio.
These are estimates of the work a kernel that skips zeros does; the deployed prefill path of a gated
layer runs a GEMM on the gated input (:class:`~audit.deploy.activation.ActSparseLinear`), whose speed
the deployment record measures.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from audit import stats
from audit.data import EvalSet
from audit.deploy.activation import ActSparseLinear, ActSparseReferenceLinear, active_inputs
from audit.deploy.formats import DENSE
from audit.deploy.modules import DeployedLinear, top_level_linears
from audit.inference import Predictor
from audit.results import GroupValue, Measurement
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant


@dataclass
class PerInput:
    """What each input of one dataset cost (arrays in the dataset's row order)."""

    flops: np.ndarray
    active: np.ndarray
    """Inputs read by gated layers, summed over layers and tokens (0 without gated layers)."""
    gated: np.ndarray
    """Inputs the gated layers could have read (in_features x tokens, summed); 0 without gated layers."""
    tokens: np.ndarray

    @property
    def active_fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.gated > 0, self.active / np.maximum(self.gated, 1), 1.0)


def _static_cost(module: nn.Module) -> float:
    """Multiply-adds per token of a layer that is not gated."""
    if isinstance(module, DeployedLinear) and module.format != DENSE:
        return float(module.nnz)
    return float(module.in_features * module.out_features)


def measure_inputs(model: nn.Module, predictor: Predictor, texts: list[str], pairs: list[str] | None) -> PerInput:
    """Run ``texts`` through ``model`` with every Linear layer metered (see the module docstring)."""
    enc = Predictor.encode(predictor, texts, pairs)
    n = enc.n
    flops = np.zeros(n)
    active = np.zeros(n)
    gated = np.zeros(n)
    tokens = np.zeros(n)
    layers = top_level_linears(model)
    gated_types = (ActSparseLinear, ActSparseReferenceLinear)
    static = sum(_static_cost(m) for _, m in layers if not isinstance(m, gated_types))
    state: dict[str, Any] = {}

    def hook(module: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
        x = inp[0]
        counts = active_inputs(module, x)
        if counts is None:
            return
        mask = state["mask"]
        counts = counts.reshape(mask.shape).double() * mask  # [batch, tokens], padding dropped
        per_row = counts.sum(dim=1).numpy()
        state["active"] += per_row
        state["gated"] += module.in_features * state["tokens"]
        state["flops"] += 2.0 * module.out_features * per_row

    handles = [m.register_forward_hook(hook) for _, m in layers]
    offset = 0
    try:
        with torch.inference_mode():
            for batch in enc.batches:
                b = int(batch["input_ids"].shape[0])
                mask = batch["attention_mask"].double()
                tok = mask.sum(dim=1).numpy()
                state.update(mask=mask, tokens=tok, active=np.zeros(b), gated=np.zeros(b), flops=2.0 * static * tok)
                model(**{k: v.to(predictor.device) for k, v in batch.items()})
                rows = enc.order[offset : offset + b]
                flops[rows], active[rows], gated[rows], tokens[rows] = (
                    state["flops"], state["active"], state["gated"], tok,
                )  # fmt: skip
                offset += b
    finally:
        for h in handles:
            h.remove()
    return PerInput(flops=flops, active=active, gated=gated, tokens=tokens)


def _mean_groups(
    values: np.ndarray, features: dict[str, np.ndarray], ctx: SuiteContext, seed: int
) -> dict[str, dict[str, GroupValue]]:
    """Per group of each feature: fairlearn ``MetricFrame`` means, with bootstrap CIs."""
    from fairlearn.metrics import MetricFrame

    out: dict[str, dict[str, GroupValue]] = {}
    for feat, col in features.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf = MetricFrame(
                metrics=lambda _t, v: float(np.mean(v)), y_true=np.zeros(len(values)), y_pred=values,
                sensitive_features={feat: col},
            )  # fmt: skip
        for group, value in mf.by_group.items():
            members = values[col == group]
            lo, hi = stats.bootstrap_ci(members, n_boot=ctx.n_boot, level=ctx.ci_level, seed=seed)
            out.setdefault(feat, {})[str(group)] = GroupValue(
                value=float(value), ci_low=lo, ci_high=hi, n=len(members), small_n=len(members) < stats.SMALL_GROUP_N
            )
    return out


def _disparity(values: np.ndarray, col: np.ndarray, ctx: SuiteContext, seed: int) -> tuple[float, Any, Any, np.ndarray]:
    """Highest minus lowest group mean of ``values``, a bootstrap CI resampling within each group, the resamples."""
    groups = [values[col == g] for g in np.unique(col)]
    point = max(float(g.mean()) for g in groups) - min(float(g.mean()) for g in groups)
    if ctx.n_boot < 2:
        return point, None, None, np.zeros(0)
    rng = np.random.default_rng(seed)
    boot = np.empty(ctx.n_boot)
    for i in range(ctx.n_boot):
        means = [g[rng.integers(0, len(g), len(g))].mean() for g in groups]
        boot[i] = max(means) - min(means)
    alpha = (1 - ctx.ci_level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return point, float(lo), float(hi), boot


def group_test(values: np.ndarray, col: np.ndarray) -> float | None:
    """Kruskal-Wallis p-value of "``values`` do not depend on the group" (1.0 when nothing varies; None: < 2 groups)."""
    from scipy.stats import kruskal

    groups = [values[col == g] for g in np.unique(col)]
    if len(groups) < 2:
        return None
    if np.ptp(values) == 0:
        return 1.0
    return float(kruskal(*groups).pvalue)


def _shift(a: np.ndarray, b: np.ndarray, ctx: SuiteContext, seed: int) -> tuple[float, Any, Any]:
    """mean(a) - mean(b) with a bootstrap CI resampling both (independent sets)."""
    point = float(a.mean() - b.mean())
    if ctx.n_boot < 2 or not len(a) or not len(b):
        return point, None, None
    rng = np.random.default_rng(seed)
    boot = a[rng.integers(0, len(a), (ctx.n_boot, len(a)))].mean(1) - b[
        rng.integers(0, len(b), (ctx.n_boot, len(b)))
    ].mean(1)
    alpha = (1 - ctx.ci_level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return point, float(lo), float(hi)


class ComputeSuite(Suite):
    """Per-input compute, its group disparity paired with accuracy, density shift, highest-compute inputs."""

    def setup(self, ctx: SuiteContext) -> None:
        self._extra = [ctx.load_dataset(ref, need_label=ref.columns.label is not None) for ref in self.params.datasets]
        self._unlabelled = {ref.name for ref in self.params.datasets if ref.columns.label is None}

    def _subset(self, es: EvalSet) -> EvalSet:
        k = self.params.max_examples
        return es if k is None or len(es) <= k else es.subset(np.arange(k))

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        es = self._subset(ctx.eval_set)
        sets = [es, *(self._subset(x) for x in self._extra)]
        method = stats.ci_method(f"percentile bootstrap, {ctx.n_boot} resamples, {ctx.ci_level:.0%}", ctx.n_boot)
        measurements: list[Measurement] = []
        artifacts: dict[str, Any] = {"flops": {}}
        examples: list[dict[str, Any]] = []
        fractions: dict[str, np.ndarray] = {}
        for i, s in enumerate(sets):
            per = measure_inputs(variant.model, ctx.predictor, list(s.texts), s.text_pairs)
            base = np.asarray(ctx.baseline["flops"][s.name]) if ctx.baseline is not None else per.flops
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(base > 0, per.flops / np.maximum(base, 1e-30), 1.0)
            frac = per.active_fraction
            fractions[s.name] = frac
            artifacts["flops"][s.name] = per.flops.tolist()
            features = stats.feature_columns(s.groups, self.params.intersections) if s.groups else {}
            seed = ctx.seed + i
            for metric, values in (
                ("active_fraction", frac),
                ("relative_compute", rel),
                ("gflops_per_input", per.flops / 1e9),
            ):
                lo, hi = stats.bootstrap_ci(values, n_boot=ctx.n_boot, level=ctx.ci_level, seed=seed)
                measurements.append(
                    Measurement(
                        suite=self.name, dataset=s.name, metric=metric,
                        value=float(values.mean()) if len(values) else None, ci_low=lo, ci_high=hi, ci_method=method,
                        n=len(values),
                        groups=_mean_groups(values, features, ctx, seed) if features else {},
                    )
                )  # fmt: skip
            top = self._highest(s, per, rel)
            measurements[-2].details["highest_compute"] = top
            examples.extend({"dataset": s.name, **row} for row in top)
            if features:
                m, pred = self._disparity_measurement(s, rel, frac, features, variant, ctx, method)
                measurements.append(m)
                if pred is not None:
                    artifacts.setdefault("pred", {})[s.name] = pred.tolist()
            if i > 0:
                lo_hi = _shift(frac, fractions[es.name], ctx, seed)
                measurements.append(
                    Measurement(
                        suite=self.name, dataset=s.name, metric="density_shift", value=lo_hi[0], ci_low=lo_hi[1],
                        ci_high=lo_hi[2], ci_method=method, n=len(frac),
                        details={"eval_active_fraction": float(fractions[es.name].mean()), "against": es.name},
                    )
                )  # fmt: skip
        return SuiteOutput(measurements=measurements, artifacts=artifacts, examples=examples)

    def _highest(self, s: EvalSet, per: PerInput, rel: np.ndarray) -> list[dict[str, Any]]:
        """The ``top_k`` inputs with the highest relative compute (ties: more tokens first), for review."""
        k = min(self.params.top_k, len(rel))
        order = np.lexsort((-per.tokens, -rel))[:k]
        frac = per.active_fraction
        return [
            {
                "row": int(j), "text": str(s.texts[j])[:300], "tokens": int(per.tokens[j]),
                "relative_compute": round(float(rel[j]), 4), "active_fraction": round(float(frac[j]), 4),
                "gflops": round(float(per.flops[j]) / 1e9, 6),
            }
            for j in order
        ]  # fmt: skip

    def _disparity_measurement(
        self,
        s: EvalSet,
        rel: np.ndarray,
        frac: np.ndarray,
        features: dict[str, np.ndarray],
        variant: Variant,
        ctx: SuiteContext,
        method: str | None,
    ) -> tuple[Measurement, np.ndarray]:
        """``compute_disparity``: the largest group gap of relative compute, each group paired with its accuracy."""
        pred, why = self._predictions(s, variant, ctx)
        correct = None if pred is None else pred == np.asarray(s.labels)
        base_correct = None
        if correct is not None and ctx.baseline is not None and s.name in ctx.baseline.get("pred", {}):
            base_correct = np.asarray(ctx.baseline["pred"][s.name]) == np.asarray(s.labels)
        per_feature: dict[str, Any] = {}
        best: tuple[Any, ...] | None = None
        for j, (feat, col) in enumerate(sorted(features.items())):
            value, lo, hi, boot = _disparity(rel, col, ctx, ctx.seed + 100 + j)
            rows = {}
            for g in np.unique(col):
                m = col == g
                acc = None if correct is None else float(correct[m].mean())
                delta = None if base_correct is None or acc is None else acc - float(base_correct[m].mean())
                rows[str(g)] = {
                    "n": int(m.sum()), "relative_compute": float(rel[m].mean()),
                    "active_fraction": float(frac[m].mean()), "accuracy": acc, "accuracy_delta": delta,
                }  # fmt: skip
            per_feature[feat] = {"disparity": value, "ci_low": lo, "ci_high": hi, "groups": rows}
            if best is None or value > best[0]:
                best = (value, lo, hi, feat, boot, group_test(rel, col))
        assert best is not None
        m = Measurement(
            suite=self.name, dataset=s.name, metric="compute_disparity", value=best[0], ci_low=best[1], ci_high=best[2],
            ci_method=method, n=len(rel), details={"feature": best[3], "features": per_feature},
        )  # fmt: skip
        if why:
            m.details["accuracy_not_paired"] = why
        if ctx.baseline is not None:  # dense: relative compute 1 on every input, disparity 0 by construction
            from audit.paired import paired_continuous

            m.details["paired"] = paired_continuous(
                baseline=0.0, value=best[0], boot_deltas=best[4], level=ctx.ci_level, n=len(rel), p_value=best[5],
                test=f"Kruskal-Wallis H test: relative compute across {best[3]} groups",
            ).to_dict()  # fmt: skip
        return m, pred

    def _predictions(self, s: EvalSet, variant: Variant, ctx: SuiteContext) -> tuple[np.ndarray | None, str]:
        """The variant's predicted classes on ``s`` (None, and why, when they cannot be paired with compute)."""
        from audit.errors import UsageError

        if s.name in self._unlabelled:
            return None, f"{s.name} has no label column"
        try:
            return ctx.proba(variant, list(s.texts), s.text_pairs).argmax(axis=1), ""
        except UsageError as exc:  # a causal LM without model.zero_shot has no class predictions
            return None, str(exc)
