"""The budgeted search: restore groups of layers one at a time and re-measure (see :mod:`audit.attribution`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit import stats
from audit.attribution._diagnostics import diagnostics
from audit.attribution._layers import fresh_predictor, restorable_layers, restored
from audit.results import AttributionGroup, RegressionAttribution

if TYPE_CHECKING:
    from audit.suite import DefiningExamples


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
    ) -> None:
        self.dense, self.variant, self.adapter = dense, variant, adapter
        self.predictor = fresh_predictor(predictor)
        self.ex = examples
        self.budget = int(budget)
        self.granularity = granularity
        self.level = level
        self.n_boot = n_boot
        members = np.asarray(examples.members, dtype=np.int64)
        self.texts = [examples.texts[i] for i in members]
        self.pairs = None if examples.text_pairs is None else [examples.text_pairs[i] for i in members]
        self.labels = np.asarray(examples.labels)[members]
        self.n = len(members)
        self.index = stats.bootstrap_indices(self.n, n_boot, np.random.default_rng(seed))
        self.spent = 0

    def _correct(self, model: Any) -> np.ndarray:
        proba = self.predictor.proba(model, self.texts, self.pairs)
        self.spent += self.n
        return (proba.argmax(axis=1) == self.labels).astype(np.float64)

    def _fits(self) -> bool:
        return self.spent + self.n <= self.budget

    def run(self, record: RegressionAttribution) -> RegressionAttribution:
        """Fill ``record`` (its regression fields already set) with the search's findings."""
        record.n_examples, record.budget_forward_passes, record.granularity = self.n, self.budget, self.granularity
        record.measure, record.scope, record.dataset = self.ex.measure, self.ex.scope, self.ex.dataset
        if self.ex.measure != "accuracy":
            return refuse(record, f"measure {self.ex.measure!r} cannot be re-measured (only accuracy)")
        if self.n == 0:
            return refuse(record, "no defining examples")
        layers, notes, refusal = restorable_layers(self.dense, self.variant, self.adapter)
        record.notes.extend(notes)
        if refusal is not None:
            return refuse(record, refusal)
        if not layers:
            return refuse(record, "no Linear layer of the variant differs from dense")
        if 2 * self.n > self.budget:
            return refuse(
                record,
                f"budget_forward_passes {self.budget} is below the {2 * self.n} forward passes of the variant and "
                f"dense on the {self.n} defining examples",
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
        record.forward_passes = self.spent
        record.status = "partial" if record.not_evaluated else "complete"
        if record.not_evaluated:
            record.notes.append(
                f"the budget of {self.budget} forward passes ended the search: {len(record.not_evaluated)} group(s) "
                "not evaluated"
            )
        return record

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
            forward_passes=self.n,
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
