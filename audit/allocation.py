"""Policy-guided per-block sparsity allocation (``sweep.allocate``).

The search chooses per-block sparsities whose weight-weighted mean is the target so that the
policy passes, judging every candidate on a **selection split** that is not the eval split; the
chosen allocation then becomes one more sweep point (``<method>-alloc``, ``profile: blocks``)
that is pruned, deployed and audited on the eval split like any other variant. So the numbers
the report gates on were not tuned on the examples they are measured on.

One evaluation prunes a copy of the dense model with a candidate allocation (the masked model,
not deployed: the eval audit deploys and verifies the chosen one), runs the suites the policy's
rules name on the selection split, paired against the dense model on the same rows, and judges
the policy. The search:

1. ``start``: OWL's per-block sparsities at the target (or every block at the target); if it
   passes, it is chosen;
2. otherwise one **probe** per block: the start with that block restored to dense (sparsity
   0). A block's sensitivity is how much the failing rules' violation shrinks when it is
   restored, per million of its weights;
3. **trials**: each moves ``step`` of sparsity off the most sensitive block that can still give
   some (down to ``min_block_sparsity``) onto the least sensitive one that can take it (up to
   ``max_block_sparsity``), scaled by the two blocks' weights so that the weighted mean stays at
   the target; the first passing trial is chosen.

The budget counts every evaluation (start, probes, trials); the dense model's own run on the
selection split is not counted. When nothing passes within the budget, the candidate with the
smallest violation (earliest on ties) is chosen and audited, and the record says it did not
pass. Deterministic: the same config, model and data give the same steps and the same choice.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.allocation_search import (
    Evaluation,
    SearchOutcome,
    margin,
    move,
    next_move,
    passes,
    search_loop,
    sensitivities,
    violation,
    weighted_mean,
)
from audit.errors import UsageError
from audit.results import AllocationRecord, RuleResult, VariantResult

if TYPE_CHECKING:
    from audit.data import EvalSet
    from audit.plan import SweepPoint
    from audit.policy import Policy
    from audit.run.session import Session
    from audit.store import ResultStore, StoreKey

log = logging.getLogger(__name__)

__all__ = [  # the search's pure parts live in audit.allocation_search; re-exported here
    "Evaluation",
    "SearchOutcome",
    "allocation_key",
    "margin",
    "move",
    "next_move",
    "passes",
    "run_allocation",
    "search",
    "search_loop",
    "selection_set",
    "sensitivities",
    "violation",
    "weighted_mean",
]


# -- selection split ---------------------------------------------------------------------------------


def selection_set(eval_set: EvalSet, candidate: EvalSet, *, n: int | None, seed: int) -> tuple[EvalSet, int]:
    """``candidate`` without the rows whose text (and text pair) occurs in ``eval_set``, at most ``n`` of them
    (a sample seeded by ``seed``), named like the eval set so the policy's metric ids match; and how many
    rows were dropped for overlapping.

    Raises:
        UsageError: nothing is left.
    """
    pairs = eval_set.text_pairs or [None] * len(eval_set)
    seen = set(zip(eval_set.texts, pairs, strict=True))
    cpairs = candidate.text_pairs or [None] * len(candidate)
    keep = [i for i, key in enumerate(zip(candidate.texts, cpairs, strict=True)) if key not in seen]
    dropped = len(candidate) - len(keep)
    if not keep:
        raise UsageError(
            "every row of the selection split also occurs in the eval split; nothing is left to select on",
            where="sweep.allocate.selection.split",
            hint="select on a split with rows of its own",
        )
    if n is not None and n < len(keep):
        rng = np.random.default_rng([seed, 20])
        keep = sorted(rng.choice(keep, size=n, replace=False).tolist())
    return candidate.subset(keep, name=eval_set.name), dropped


# -- the search in a run ------------------------------------------------------------------------------


class _Search:
    """What one allocation search shares: the selection context, its dense artifacts, the policy."""

    def __init__(self, session: Session, selection: EvalSet, dropped: int) -> None:
        from audit.config_sweep import alloc_method
        from audit.run.finish import _metric_catalog

        self.session = session
        config = session.config
        self.cfg = config.sweep.allocate
        assert self.cfg is not None
        self.method_index, self.method = alloc_method(config.sweep)
        self.policy, self.policy_label = allocation_policy(session)
        self.suites = [s for s in session.suites if policy_names_suite(self.policy, s.name)]
        base = session.base_ctx
        self.selection, self.dropped = selection, dropped
        self.ctx = copy.copy(base)
        self.ctx.eval_set = self.selection
        self.catalog = _metric_catalog(config)
        self.seed = int(config.sweep.seeds[0])
        self.dense_vr, self.artifacts = self._dense()

    def _dense(self) -> tuple[VariantResult, dict[str, Any]]:
        from audit.plan import SweepPoint
        from audit.results import BASELINE_ID
        from audit.suite import Variant

        point = SweepPoint(method=BASELINE_ID, sparsity=0.0, seed=self.session.config.seed)
        vr = VariantResult(id=point.id, point=point.record())
        variant = Variant(point=point, model=self.session.dense)
        artifacts = {}
        for suite in self.suites:
            out = suite.run(variant, self.ctx.for_suite(None))
            vr.measurements.extend(out.measurements)
            vr.not_applicable.update(out.not_applicable)
            artifacts[suite.name] = out.artifacts
        return vr, artifacts

    def point(self, sparsities: list[float]) -> SweepPoint:
        from audit.plan import allocated_point

        return allocated_point(self.session.config, blocks_param(sparsities))

    def evaluate(self, sparsities: list[float]) -> Evaluation:
        """Prune with ``sparsities`` (per block), run the policy's suites on the selection split, judge."""
        import torch

        from audit.suite import Variant

        session = self.session
        point = self.point(sparsities)
        pruner = pruner_for(point)
        model = copy.deepcopy(session.dense)
        torch.manual_seed(point.seed)
        record = pruner.prune(model, prune_ctx(session, point, pruner))
        model.eval()
        vr = VariantResult(id=point.id, point=point.record(), pruning=record)
        variant = Variant(point=point, model=model, pruning=record)
        datasets: set[str] = set()
        for suite in self.suites:
            out = suite.run(variant, self.ctx.for_suite(self.artifacts.get(suite.name)))
            vr.measurements.extend(out.measurements)
            vr.not_applicable.update(out.not_applicable)
            datasets.update(m.dataset for m in out.measurements)
        del model, variant
        results = self.judge(vr)
        v = violation(self.policy, results)
        ok = passes(results)
        status = "PASS" if ok and not any(r.status == "WARN" for r in results) else ("WARN" if ok else "FAIL")
        if any(r.status == "ERROR" for r in results):
            status = "ERROR"
        return Evaluation(results=results, status=status, violation=0.0 if ok else v, passed=ok, datasets=datasets)

    def judge(self, vr: VariantResult) -> list[RuleResult]:
        from audit.policy import evaluate_policy
        from audit.results import ModelIdentity, Provenance, RunResult

        run = RunResult(
            run_id="allocation",
            provenance=Provenance(tool_version="", python="", platform="", seed=0, started_at=""),
            config={"suites": [{"name": s.name, "params": {}} for s in self.suites]},
            model=ModelIdentity(source="", fingerprint=""),
            metrics=self.catalog,
            baseline=self.dense_vr,
            variants=[vr],
        )
        verdict = evaluate_policy(self.policy, run, policy_label=self.policy_label)
        return [r for r in verdict.rules if r.variant == vr.id]


def allocation_policy(session: Session) -> tuple[Policy, str]:
    """The policy the search judges (``sweep.allocate.policy``, else the run's) and its label."""
    from audit.policy import load_policy

    config = session.config
    assert config.sweep.allocate is not None
    return load_policy(config.sweep.allocate.policy or config.policy, session.paths.base_dir)


def selection_of(session: Session) -> tuple[EvalSet, int]:
    """The selection split as :func:`selection_set` makes it from the configured split (read from its files)."""
    from audit.data import read_split

    config = session.config
    assert config.sweep.allocate is not None
    sel = config.sweep.allocate.selection
    raw = read_split(
        config.data,
        session.paths.data_files,
        sel.split,
        session.base_ctx.id2label,
        seed=config.seed,
        offline=config.offline,
        need_label=True,
    )
    return selection_set(session.eval_set, raw, n=sel.n, seed=sel.seed)


def allocation_key(session: Session, selection: EvalSet) -> StoreKey:
    """The store key of the search: the run's model, eval data, config context and code, plus the
    selection rows, the policy judged (its fingerprint) and every suite's inputs.
    """
    from audit.fingerprint import canonical_json
    from audit.plan import sha256_text
    from audit.store import StoreKey

    keys = session.keys
    policy, _ = allocation_policy(session)
    inputs = {
        "selection": selection.identity.fingerprint if selection.identity else "",
        "policy": policy.fingerprint(),
        "suites": keys.suite_params,
    }
    return StoreKey(
        "allocation",
        keys.model,
        keys.data,
        "",
        params=keys.context + sha256_text(canonical_json(inputs)),
        code=keys.code,
    )


def policy_names_suite(policy: Policy, suite: str) -> bool:
    """Whether a rule of ``policy`` names a metric of ``suite`` (its metric glob's first part)."""
    return any(fnmatch.fnmatchcase(suite, r.metric.split("/", 1)[0]) for r in policy.rules)


def blocks_param(sparsities: list[float]) -> dict[str, float]:
    """The ``blocks:`` param of a per-block allocation (``{"0": s0, "1": s1, ...}``)."""
    return {str(i): float(s) for i, s in enumerate(sparsities)}


def pruner_for(point: SweepPoint) -> Any:
    """A pruner for ``point`` (its method with its params)."""
    from audit.registry import PRUNERS

    spec = PRUNERS.get(point.method)
    return spec.load()(spec, spec.params.model_validate(point.params))


def prune_ctx(session: Session, point: SweepPoint, pruner: Any) -> Any:
    """The point's prune context, with the first sweep seed's calibration sample when the method needs one."""
    from audit.config import LayerSelection
    from audit.pruning.base import PruneContext

    return PruneContext(
        sparsity=point.sparsity,
        seed=point.seed,
        layers=LayerSelection.model_validate(point.layers),
        calibration=allocation_calibration(session) if pruner.needs_calibration else None,
    )


def start_allocation(session: Session, kind: str, target: float) -> tuple[list[str], list[int], list[float]]:
    """(block names, their weights, the start sparsities): OWL's at the target, or every block at it."""
    from audit.config import LayerSelection
    from audit.pruning.base import Selection, layer_targets, select_layers
    from audit.pruning.owl import block_of, blocks_selection, owl_selection
    from audit.pruning.specs import OwlParams

    dense = session.dense
    layers_cfg = LayerSelection.model_validate(session.config.sweep.layers.model_dump(mode="json"))
    layers = select_layers(dense, layers_cfg)
    selection = Selection(layers, layer_targets(layers, target, layers_cfg), target)
    _, n_blocks = block_of(dense)
    _, plan = blocks_selection(dense, selection, dict.fromkeys(range(n_blocks), target))
    names = [b[0] for b in plan.blocks]
    weights = [b[3] for b in plan.blocks]
    if len(plan.blocks) != n_blocks:
        raise UsageError(
            f"sweep.allocate needs selected layers in every transformer block; {n_blocks - len(plan.blocks)} of "
            f"{n_blocks} blocks have none at the sweep level",
            where="sweep.allocate",
            hint="include every block's layers in sweep.layers (and no overrides inside blocks)",
        )
    if kind == "uniform":
        return names, weights, [float(target)] * n_blocks
    from audit.config_sweep import alloc_method

    _, method = alloc_method(session.config.sweep)
    owl = OwlParams.model_validate(method.params.get("owl") or {})
    calibration = allocation_calibration(session)
    _, owl_plan = owl_selection(dense, selection, calibration, owl.M, owl.lambda_)
    return names, weights, [float(b[5]) for b in owl_plan.blocks]


def allocation_calibration(session: Session) -> Any:
    """The first sweep seed's calibration sample (OWL's start needs one, also for magnitude)."""
    sampler = session.calibration
    if sampler is None:
        from audit.run.session import _calibration

        config = session.config
        sampler = _calibration(config, session.paths, session.predictor, session.base_ctx.id2label)
        if sampler is None:
            raise UsageError(
                "sweep.allocate.start owl needs calibration data, but no calibration split is configured",
                where="sweep.allocate.start",
                hint="set data.splits.calibration, or start: uniform",
            )
        session.calibration = sampler
    return sampler(int(session.config.sweep.seeds[0]))


def search(
    session: Session, selection: EvalSet | None = None, dropped: int = 0
) -> tuple[AllocationRecord, list[float]]:
    """Run the allocation search on the selection split (read from the config when not given); the record
    and the chosen sparsities.
    """
    if selection is None:
        selection, dropped = selection_of(session)
    session.setup()
    s = _Search(session, selection, dropped)
    cfg = s.cfg
    names, weights, start = start_allocation(session, cfg.start, cfg.target)
    found = search_loop(
        s.evaluate,
        names,
        weights,
        start,
        budget=cfg.budget,
        step=cfg.step,
        lo=cfg.min_block_sparsity,
        hi=cfg.max_block_sparsity,
        start_note=f"{cfg.start} at {cfg.target:g}",
    )
    point = s.point(found.chosen)
    record = AllocationRecord(
        method=s.method.name,
        variant=point.id,
        policy=s.policy_label,
        policy_fingerprint=s.policy.fingerprint(),
        target_sparsity=cfg.target,
        budget=cfg.budget,
        evaluations=len(found.steps),
        start=cfg.start,
        step=cfg.step,
        bounds=[cfg.min_block_sparsity, cfg.max_block_sparsity],
        selection_split=cfg.selection.split,
        eval_split=session.config.data.splits.eval,
        selection_n=len(s.selection),
        selection_dropped=s.dropped,
        selection_fingerprint=s.selection.identity.fingerprint if s.selection.identity else "",
        suites=[x.name for x in s.suites],
        not_held_out=sorted(d for d in found.datasets if d != s.selection.name),
        blocks=names,
        block_weights=weights,
        sensitivity=found.sensitivity,
        passed=found.passed,
        chosen=found.chosen_step,
        outcome=found.outcome,
        steps=found.steps,
    )
    return record, found.chosen


def run_allocation(
    session: Session, *, store: ResultStore | None = None, resume: bool = False, require_stored: bool = False
) -> AllocationRecord:
    """Search (or, with ``resume``, reuse the stored search of the same inputs), then add the chosen
    allocation to the session's points (validated against the dense model). A finished search is
    stored as soon as it ends, so an interrupted audit's ``--resume`` does not search again.

    Raises:
        UsageError: ``require_stored`` and the search is not in the store (before any work).
    """
    from audit.plan import allocated_point

    selection, dropped = selection_of(session)
    key = allocation_key(session, selection)
    found = store.get(key) if store is not None and resume else None
    if found is not None:
        payload, _ = found
        record = AllocationRecord.model_validate(payload["record"])
        chosen = [float(x) for x in payload["chosen"]]
        log.info("allocation: reusing the stored search (%d evaluations) from %s", record.evaluations, store.root)
    elif require_stored:
        where = str(store.root) if store is not None else "the result store"
        raise UsageError(
            "no finished allocation search of this config is in the store (the config, model, data, policy or "
            "code differ from the finished run's, or it never finished)",
            where=where,
            hint="run `prune-audit run` with this config (add --resume to finish an interrupted run) first",
        )
    else:
        record, chosen = search(session, selection, dropped)
        if store is not None:
            store.put(key, {"record": record.model_dump(mode="json"), "chosen": chosen})
    point = allocated_point(session.config, blocks_param(chosen))  # the record's variant
    if point.id != record.variant:
        raise AssertionError(f"the chosen allocation's point {point.id} is not the record's {record.variant}")
    if point.id not in {p.id for p in session.points}:
        session.points.append(point)
    pruner = pruner_for(point)
    session.pruners.setdefault(point.label, pruner)
    pruner.validate(session.dense, session.prune_ctx(point))
    session.allocation = record
    return record
