"""The budgeted search: restore groups of layers one at a time and re-measure (see :mod:`audit.attribution`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit import stats
from audit.attribution._diagnostics import diagnostics
from audit.attribution._layers import fresh_predictor, restorable_layers, restored
from audit.results import AttributionGroup, AttributionHoldout, HoldoutCheck, RegressionAttribution

if TYPE_CHECKING:
    from audit.suite import DefiningExamples


HOLDOUT_STREAM = 104729
"""Last entry of the held-out split's seed (``[*search seed, HOLDOUT_STREAM]``)."""

MEASURES = ("accuracy", "counterfactual_consistency")
"""What the search re-measures per defining example (:class:`audit.suite.DefiningExamples.measure`)."""

CHECK_LEVELS = ("block", "type", "layer")
"""The levels whose best group is re-measured on the held-out examples."""


@dataclass
class _Rows:
    """Some of the defining examples: their texts, pairs, labels and (counterfactual measure) counterparts."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray
    counterparts: list[str] | None = None

    @classmethod
    def of(cls, ex: DefiningExamples, rows: np.ndarray) -> _Rows:
        pairs = None if ex.text_pairs is None else [ex.text_pairs[i] for i in rows]
        other = None if ex.counterparts is None else [ex.counterparts[i] for i in rows]
        return cls([ex.texts[i] for i in rows], pairs, np.asarray(ex.labels)[rows], other)

    def __len__(self) -> int:
        return len(self.texts)


def split_holdout(members: np.ndarray, fraction: float, seed: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(selection rows, held-out rows) of ``members``: a seeded draw of ``round(fraction * n)`` rows is held out.

    Both parts keep the members' order. With fewer than 2 members, or a fraction that rounds to
    no row or every row, nothing is held out.
    """
    members = np.asarray(members, dtype=np.int64)
    n_held = int(round(fraction * len(members)))
    if fraction <= 0 or n_held < 1 or n_held >= len(members):
        return members, members[:0]
    base = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
    held = np.zeros(len(members), dtype=bool)
    held[np.random.default_rng([*base, HOLDOUT_STREAM]).permutation(len(members))[:n_held]] = True
    return members[~held], members[held]


@dataclass
class _Candidate:
    name: str
    level: str
    block: int | None
    kind: str | None
    layers: tuple[str, ...]
    parent: str | None = None


def _plan(groups: list[Any], changed: set[str]) -> tuple[list[_Candidate], list[_Candidate], list[_Candidate]]:
    """Block, type and layer candidates over the changed layers (empty groups dropped)."""
    blocks: dict[str, list[Any]] = {}
    order: list[str] = []
    for g in groups:
        layers = tuple(n for n in g.linears if n in changed)
        if not layers:
            continue
        if g.block_name not in blocks:
            order.append(g.block_name)
        blocks.setdefault(g.block_name, []).append((g, layers))
    placed = {n for gs in blocks.values() for _, ls in gs for n in ls}
    rest = tuple(n for n in sorted(changed) if n not in placed)
    block_c, type_c, layer_c = [], [], []
    for bname in order:
        gs = blocks[bname]
        layers = tuple(n for _, ls in gs for n in ls)
        kinds = [g.kind for g, _ in gs]
        block_c.append(_Candidate(bname, "block", gs[0][0].block, kinds[0] if len(set(kinds)) == 1 else None, layers))
        for g, ls in gs:
            parent_of_layers = bname
            if len(gs) > 1:
                type_c.append(_Candidate(f"{bname}:{g.kind}", "type", g.block, g.kind, ls, parent=bname))
                parent_of_layers = f"{bname}:{g.kind}"
            if len(ls) > 1:
                layer_c.extend(_Candidate(n, "layer", g.block, g.kind, (n,), parent=parent_of_layers) for n in ls)
    if rest:
        block_c.append(_Candidate("unplaced layers", "block", None, "other", rest))
        if len(rest) > 1:
            layer_c.extend(_Candidate(n, "layer", None, "other", (n,), parent="unplaced layers") for n in rest)
    return block_c, type_c, layer_c


class Search:
    """The budgeted search over one regression's defining examples (see the module docstring)."""

    def __init__(
        self,
        *,
        dense: Any,
        variant: Any,
        adapter: Any,
        predictor: Any,
        examples: DefiningExamples,
        budget: int,
        granularity: str = "layer",
        n_boot: int = 1000,
        level: float = 0.95,
        seed: int | list[int] = 0,
        holdout: float = 0.0,
    ) -> None:
        self.dense, self.variant, self.adapter = dense, variant, adapter
        self.predictor = fresh_predictor(predictor)
        self.ex = examples
        self.budget = int(budget)
        self.granularity = granularity
        self.level = level
        self.n_boot = n_boot
        self.holdout = float(holdout)
        members = np.asarray(examples.members, dtype=np.int64)
        self.n_all = len(members)
        chosen, held = split_holdout(members, self.holdout, seed)
        self.sel, self.held = _Rows.of(examples, chosen), _Rows.of(examples, held)
        self.n = len(self.sel)
        self.k = 2 if examples.counterparts is not None else 1
        """Forward passes per defining example and evaluation (a counterfactual pair scores both its texts)."""
        # 2 + one per checked level: the variant, dense and each level's best group on the held-out rows
        levels = CHECK_LEVELS.index(granularity) + 1 if granularity in CHECK_LEVELS else 1
        self.reserve = len(self.held) * (2 + levels) * self.k if len(self.held) else 0
        rng = np.random.default_rng(seed)
        self.index = stats.bootstrap_indices(self.n, n_boot, rng)
        self.held_index = stats.bootstrap_indices(len(self.held), n_boot, rng) if len(self.held) else self.index[:0]
        self.spent = 0

    def _correct(self, model: Any, rows: _Rows | None = None) -> np.ndarray:
        """Per example 1 or 0: right (``accuracy``), or the same class on the text and its counterfactual
        (``counterfactual_consistency``, one minus the flip).
        """
        rows = self.sel if rows is None else rows
        pred = self.predictor.proba(model, rows.texts, rows.pairs).argmax(axis=1)
        self.spent += self.k * len(rows)
        if rows.counterparts is not None:
            other = self.predictor.proba(model, rows.counterparts, rows.pairs).argmax(axis=1)
            return (pred == other).astype(np.float64)
        return (pred == rows.labels).astype(np.float64)

    def _fits(self) -> bool:
        return self.spent + self.n * self.k + self.reserve <= self.budget

    def run(self, record: RegressionAttribution) -> RegressionAttribution:
        """Fill ``record`` (its regression fields already set) with the search's findings."""
        record.n_examples, record.budget_forward_passes, record.granularity = self.n, self.budget, self.granularity
        record.measure, record.scope, record.dataset = self.ex.measure, self.ex.scope, self.ex.dataset
        if self.ex.measure not in MEASURES:
            return refuse(record, f"measure {self.ex.measure!r} cannot be re-measured (only {', '.join(MEASURES)})")
        if (self.ex.measure == "counterfactual_consistency") != (self.ex.counterparts is not None):
            return refuse(record, "counterfactual_consistency needs counterpart texts, and only it uses them")
        if self.n == 0:
            return refuse(record, "no defining examples")
        layers, notes, refusal = restorable_layers(self.dense, self.variant, self.adapter)
        record.notes.extend(notes)
        if refusal is not None:
            return refuse(record, refusal)
        if not layers:
            return refuse(record, "no Linear layer of the variant differs from dense")
        if 2 * self.n * self.k + self.reserve > self.budget:
            held = (
                f" and the {self.reserve} of the held-out check on {len(self.held)} held-out examples"
                if self.reserve
                else ""
            )
            return refuse(
                record,
                f"budget_forward_passes {self.budget} is below the {2 * self.n * self.k + self.reserve} forward passes "
                "of the "
                f"variant and dense on the {self.n} defining examples the search runs on{held}",
            )
        c_var = self._correct(self.variant)
        c_dense = self._correct(self.dense)
        v, d = float(c_var.mean()), float(c_dense.mean())
        record.variant_value, record.dense_value, record.gap = v, d, d - v
        record.forward_passes = self.spent
        if not d - v > 0:
            return refuse(
                record,
                f"no gap to attribute on re-measurement: dense {d:.4f}, variant {v:.4f} on the defining examples",
            )
        if len(self.index):
            idx = self.index
            self._boot_v = c_var[idx].mean(axis=1)
            denom = c_dense[idx].mean(axis=1) - self._boot_v
            self._boot_denom = np.where(denom != 0, denom, np.nan)
            record.ci_method = (
                f"percentile paired bootstrap over the {self.n} defining examples, {len(idx)} resamples shared by "
                f"every group, {self.level:.0%}"
            )
        self._c_var, self._gap = c_var, d - v
        groups = self.adapter.layer_groups(self.variant)
        blocks, types, singles = _plan(groups, set(layers))
        levels: list[list[_Candidate]] = [[_Candidate("all", "all", None, None, tuple(layers))], blocks]
        if self.granularity in ("type", "layer"):
            levels.append(types)
        if self.granularity == "layer":
            levels.append(singles)
        shares: dict[str, float] = {}
        stopped = False
        for cands in levels:
            cands = sorted(
                cands,
                key=lambda c: -shares[c.parent] if c.parent in shares and np.isfinite(shares[c.parent]) else 1.0,
            )  # stable: model order within a parent, the parents that explain most first
            for c in cands:
                if stopped or not self._fits():
                    stopped = True
                    record.not_evaluated.append(c.name)
                    continue
                g = self._evaluate(c)
                record.groups.append(g)
                shares[c.name] = g.share if g.share is not None else float("nan")
        if self.holdout > 0:
            record.holdout = self._check_holdout(record)
        record.forward_passes = self.spent
        record.status = "partial" if record.not_evaluated else "complete"
        if record.not_evaluated:
            record.notes.append(
                f"the budget of {self.budget} forward passes ended the search: {len(record.not_evaluated)} group(s) "
                "not evaluated"
            )
        return record

    def _check_holdout(self, record: RegressionAttribution) -> AttributionHoldout:
        """Re-measure each level's best group (largest share on the selection rows) on the held-out rows."""
        out = AttributionHoldout(fraction=self.holdout, n_selection=self.n, n_holdout=len(self.held))
        if not len(self.held):
            out.note = f"nothing held out: {self.n_all} defining example(s) at holdout {self.holdout:g}"
            return out
        picks = []
        for level in CHECK_LEVELS:
            scored = [g for g in record.groups if g.level == level and g.share is not None and np.isfinite(g.share)]
            if scored:
                picks.append(max(scored, key=lambda g: g.share))  # first in search order on ties
        start = self.spent
        c_var, c_dense = self._correct(self.variant, self.held), self._correct(self.dense, self.held)
        v, d = float(c_var.mean()), float(c_dense.mean())
        out.variant_value, out.dense_value, out.gap = v, d, d - v
        if not d - v > 0:
            out.note = f"no gap on the held-out examples: dense {d:.4f}, variant {v:.4f}; no share to check"
            out.forward_passes = self.spent - start
            return out
        idx = self.held_index
        if len(idx):
            boot_v = c_var[idx].mean(axis=1)
            denom = c_dense[idx].mean(axis=1) - boot_v
            denom = np.where(denom != 0, denom, np.nan)
            out.ci_method = (
                f"percentile paired bootstrap over the {len(self.held)} held-out examples, {len(idx)} resamples, "
                f"{self.level:.0%}"
            )
        for g in picks:
            with restored(self.dense, self.variant, tuple(g.layers)):
                cg = self._correct(self.variant, self.held)
            value = float(cg.mean())
            lo = hi = None
            if len(idx):
                lo, hi = stats.percentile_ci((cg[idx].mean(axis=1) - boot_v) / denom, self.level)
            out.checks.append(
                HoldoutCheck(
                    name=g.name,
                    level=g.level,  # type: ignore[arg-type]
                    layers=list(g.layers),
                    share_selection=g.share,
                    value=value,
                    share=(value - v) / (d - v),
                    ci_low=lo,
                    ci_high=hi,
                )
            )
        out.forward_passes = self.spent - start
        return out

    def _evaluate(self, c: _Candidate) -> AttributionGroup:
        with restored(self.dense, self.variant, c.layers):
            cg = self._correct(self.variant)
        value = float(cg.mean())
        share = (value - float(self._c_var.mean())) / self._gap
        lo = hi = None
        if len(self.index):
            boot = (cg[self.index].mean(axis=1) - self._boot_v) / self._boot_denom
            lo, hi = stats.percentile_ci(boot, self.level)
        return AttributionGroup(
            name=c.name,
            level=c.level,  # type: ignore[arg-type]
            block=c.block,
            kind=c.kind,
            layers=list(c.layers),
            value=value,
            share=share,
            ci_low=lo,
            ci_high=hi,
            forward_passes=self.n * self.k,
        )


def refuse(record: RegressionAttribution, reason: str) -> RegressionAttribution:
    """Mark ``record`` not attributable, saying why."""
    record.status = "not_attributable"
    record.reason = reason
    return record


def attribute(record: RegressionAttribution, *, with_diagnostics: bool = True, **search: Any) -> RegressionAttribution:
    """Run the search for one regression (and, if asked, the diagnostics) into ``record``.

    ``search``: :class:`Search`'s keyword arguments (``dense``, ``variant``, ``adapter``,
    ``predictor``, ``examples``, ``budget``, ...).
    """
    Search(**search).run(record)
    if with_diagnostics and record.status != "not_attributable":
        try:
            rows, passes, note = diagnostics(
                **{k: search[k] for k in ("dense", "variant", "adapter", "predictor", "examples")}
            )
        except Exception as exc:  # noqa: BLE001 - the search's findings stand; the diagnostics say why not
            rows, passes, note = [], 0, f"diagnostics failed: {type(exc).__name__}: {exc}"
        record.diagnostics, record.diagnostic_passes, record.diagnostics_note = rows, passes, note
    return record
