"""The audit pipeline: plan → prune → deploy → suites → results → verdict → reports.

Bad input is found before any output is written: the policy, model, data, suites'
own datasets and every sweep point are validated first. Outputs are written
atomically at the end.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit import provenance
from audit.config import AuditConfig
from audit.data import EvalSet, check_data_files, load_split
from audit.env import configure_offline
from audit.errors import ExitCode, UsageError
from audit.model_io import check_model_dir
from audit.plan import SweepPoint, canonical_json, plan, sha256_text
from audit.policy import Policy, evaluate_policy, load_policy
from audit.registry import PRUNERS, SUITES
from audit.results import (
    DatasetIdentity,
    DeploymentRecord,
    Measurement,
    MetricInfo,
    PruningRecord,
    RunResult,
    SuiteError,
    VariantResult,
    Verdict,
)
from audit.store import StoreKey

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What :func:`run_audit` produced."""

    result: RunResult
    verdict: Verdict | None
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> ExitCode:
        if self.verdict is None:
            evaluated = any(v.measurements for v in self.result.all_variants())
            return ExitCode.OK if evaluated else ExitCode.NO_RESULTS
        return ExitCode(self.verdict.exit_code)


def preflight(config: AuditConfig) -> tuple[Policy | None, str | None]:
    """Torch-free checks of everything named in the config; returns the loaded policy."""
    from audit.pruning.specs import validate_point_params

    policy = label = None
    if config.policy is not None:
        from audit.policy_metrics import check_rule_metrics

        policy, label = load_policy(config.policy, config.base_dir)
        check_rule_metrics(policy, config.policy, base_dir=config.base_dir)  # a typo'd metric: before any work
    if config.model.path is not None:
        path = config.resolve(config.model.path)
        assert path is not None
        check_model_dir(config.model, path)
    check_data_files(config)
    from audit.pruning.base import check_overrides

    check_overrides(config.sweep.layers)
    for point in plan(config)[1:]:
        validate_point_params(point)
    return policy, label


def _calibration(config: AuditConfig, predictor: Any, id2label: dict[int, str]) -> Any:
    """A :class:`~audit.pruning.calibration.CalibrationSampler` over the configured split (or None).

    The split is loaded here, before any pruning, so that a bad split fails early;
    each sweep seed gets its own sample (see :mod:`audit.pruning.calibration`).
    """
    from audit.pruning.calibration import CalibrationSampler

    calib_cfg = config.sweep.calibration
    split = calib_cfg.split or config.data.splits.calibration
    if split is None:
        return None
    es = load_split(config, split, id2label)
    return CalibrationSampler(
        es, predictor, n=calib_cfg.n, seed=calib_cfg.seed, dataset=config.data.name or split, split=split
    )


def _metric_catalog(config: AuditConfig, *, deployed: bool = False) -> dict[str, MetricInfo]:
    out = {}
    if deployed:
        from audit.deploy import spec as deploy_spec

        for m in deploy_spec.metrics_for(config.deploy.speed_batch_size):
            out[f"{deploy_spec.SUITE}/{m.name}"] = MetricInfo(
                suite=deploy_spec.SUITE,
                name=m.name,
                meaning=m.meaning,
                higher_is_better=m.higher_is_better,
                range=list(m.range),
                unit=m.unit,
                citation=m.citation,
            )
    for s in config.suites:
        spec = SUITES.get(s.name)
        for m in spec.metrics:
            out[f"{spec.name}/{m.name}"] = MetricInfo(
                suite=spec.name,
                name=m.name,
                meaning=m.meaning,
                higher_is_better=m.higher_is_better,
                range=list(m.range),
                unit=m.unit,
                citation=m.citation,
            )
    return out


@dataclass
class Session:
    """Everything prepared once per run and shared by its sweep points."""

    config: AuditConfig
    policy: Policy | None
    policy_label: str | None
    loaded: Any
    eval_set: EvalSet
    predictor: Any
    dense: Any
    points: list[SweepPoint]
    pruners: dict[str, Any]
    calibration: Any
    suites: list[Any]
    base_ctx: Any
    deploy_ctx: Any
    keys: StoreKeys
    started_at: str = ""
    write: bool = True
    """Whether outputs (saved variants, reports) are written."""

    def prune_ctx(self, point: SweepPoint) -> Any:
        from audit.config import LayerSelection
        from audit.pruning.base import PruneContext

        needs = self.calibration is not None and not point.is_baseline and self.pruners[point.label].needs_calibration
        return PruneContext(
            sparsity=point.sparsity,
            seed=point.seed,
            layers=LayerSelection.model_validate(point.layers),
            calibration=self.calibration(point.seed) if needs else None,
        )


def prepare(config: AuditConfig, *, preflighted: tuple[Policy | None, str | None] | None = None) -> Session:
    """Load the model, data, pruners, calibration and suites; validate every point before any work."""
    started_at = provenance.now_iso()
    policy, policy_label = preflighted if preflighted is not None else preflight(config)
    configure_offline(config.offline)

    import torch

    from audit.inference import Predictor
    from audit.model_io import load_model
    from audit.suite import SuiteContext

    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2**32))

    loaded = load_model(config)
    id2label = loaded.id2label
    eval_set = load_split(config, config.data.splits.eval, id2label)
    device = config.runtime.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = Predictor(
        loaded.tokenizer, max_length=config.model.max_length, batch_size=config.runtime.batch_size, device=device
    )
    from audit.data import record_truncation

    record_truncation(eval_set, predictor)  # the encoding is cached: the suites reuse it
    dense = loaded.model.to(device)
    points = plan(config)

    pruners = {}
    for point in points[1:]:
        if point.label not in pruners:
            spec = PRUNERS.get(point.method)
            cls = spec.load()
            pruners[point.label] = cls(spec, spec.params.model_validate(point.params))
    needs_calibration = any(p.needs_calibration for p in pruners.values())
    calibration = _calibration(config, predictor, id2label) if needs_calibration else None

    base_ctx = SuiteContext(
        config=config,
        eval_set=eval_set,
        predictor=predictor,
        id2label=id2label,
        seed=config.seed,
        n_boot=config.runtime.n_boot,
        ci_level=config.runtime.ci_level,
    )
    suites = []
    for s in config.suites:
        spec = SUITES.get(s.name)
        suite = spec.load()(spec, spec.params.model_validate(s.params))
        suite.setup(base_ctx)
        suites.append(suite)

    session = Session(
        config=config,
        policy=policy,
        policy_label=policy_label,
        loaded=loaded,
        eval_set=eval_set,
        predictor=predictor,
        dense=dense,
        points=points,
        pruners=pruners,
        calibration=calibration,
        suites=suites,
        base_ctx=base_ctx,
        deploy_ctx=None,
        keys=StoreKeys.create(config, loaded.identity.fingerprint, eval_set.identity),
        started_at=started_at,
    )
    for point in points[1:]:  # every point is checked before any work starts
        pruners[point.label].validate(dense, session.prune_ctx(point))
    session.deploy_ctx = _deploy_context(config, eval_set, predictor, dense) if len(points) > 1 else None
    return session


@dataclass
class StoreKeys:
    """Store keys of a run's units of work (see :mod:`audit.store`)."""

    model: str
    data: str
    context: str
    suite_params: dict[str, str]
    code: str

    @classmethod
    def create(cls, config: AuditConfig, model_fp: str, data_identity: Any) -> StoreKeys:
        from audit.store import code_fingerprint

        cfg = config.model_dump(mode="json")
        # what every unit depends on besides its point: everything but the output, the policy
        # (judging is separate), the report, the executor and the suites (keyed on their own)
        context = {k: v for k, v in cfg.items() if k not in ("suites", "output_dir", "policy", "report", "executor")}
        suite_params = {
            s.name: sha256_text(canonical_json({"params": s.params, "files": _referenced_files(s.params, config)}))
            for s in config.suites
        }
        return cls(
            model=model_fp,
            data=data_identity.fingerprint if data_identity is not None else "",
            context=sha256_text(canonical_json(context)),
            suite_params=suite_params,
            code=code_fingerprint(),
        )

    def point(self, point: SweepPoint) -> StoreKey:
        return StoreKey("point", self.model, self.data, point.key, params=self.context, code=self.code)

    def suite(self, point: SweepPoint, name: str) -> StoreKey:
        return StoreKey(
            "suite",
            self.model,
            self.data,
            point.key,
            name=name,
            params=self.context + self.suite_params[name],
            code=self.code,
        )

    def run_id(self) -> str:
        """Deterministic: the same inputs and code give the same run id (a resumed run keeps it)."""
        return sha256_text(canonical_json([self.model, self.data, self.context, self.suite_params, self.code]))[:12]


def _referenced_files(params: Any, config: AuditConfig) -> dict[str, str]:
    """Content fingerprints of the local files a suite's params name (their edits invalidate stored work)."""
    from audit.store import file_fingerprint

    out: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "path" and isinstance(v, str):
                    path = config.resolve(v)
                    if path is not None and path.is_file():
                        out[v] = file_fingerprint(path)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(params)
    return out


@dataclass
class PointOutcome:
    """One finished sweep point: its result and, for the baseline, each suite's artifacts."""

    result: VariantResult
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: list[DatasetIdentity] = field(default_factory=list)
    entries: list[tuple[StoreKey, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    """Store entries made (written at once by the local executor, shipped back by Ray)."""
    reused: int = 0


Lookup = Callable[[StoreKey], "tuple[dict[str, Any], dict[str, Any]] | None"]


def run_point(
    session: Session,
    point: SweepPoint,
    baseline: dict[str, dict[str, Any]] | None,
    *,
    lookup: Lookup | None = None,
    save: Callable[[StoreKey, dict[str, Any], dict[str, Any]], None] | None = None,
    label: str = "",
) -> PointOutcome:
    """Prune, deploy and run every suite on one point; reuse finished units found by ``lookup``.

    ``save`` is called with each finished unit (the point's pruning and deployment, then each
    suite's output) as soon as it is done, so a crash loses at most the unit in progress.
    Failed units are never saved: a resumed run retries them.
    """
    import torch

    from audit.suite import Variant

    t0 = time.perf_counter()
    keys = session.keys
    outcome = PointOutcome(result=VariantResult(id=point.id, point=point.record()))
    vr = outcome.result
    label = label or point.id

    def _save(key: StoreKey, payload: dict[str, Any], arrays: dict[str, Any] | None = None) -> None:
        entry = (key, payload, arrays or {})
        outcome.entries.append(entry)
        if save is not None:
            save(*entry)

    stored_suites: dict[str, dict[str, Any]] = {}
    stored_point = None
    if lookup is not None:
        for suite in session.suites:
            got = lookup(keys.suite(point, suite.name))
            if got is not None:
                stored_suites[suite.name] = {"payload": got[0], "arrays": got[1]}
        if not point.is_baseline:
            got = lookup(keys.point(point))
            stored_point = got[0] if got is not None else None

    need_model = any(s.name not in stored_suites for s in session.suites)
    model = session.dense
    if stored_point is not None:
        pr, dep = stored_point["pruning"], stored_point["deployment"]
        vr.pruning = PruningRecord.model_validate(pr) if pr else None
        vr.deployment = DeploymentRecord.model_validate(dep) if dep else None
        vr.measurements.extend(Measurement.model_validate(m) for m in stored_point["measurements"])
        outcome.reused += 1
    if not point.is_baseline and (stored_point is None or need_model):
        try:
            torch.manual_seed(point.seed)
            model = copy.deepcopy(session.dense)
            record = session.pruners[point.label].prune(model, session.prune_ctx(point))
            model.eval()
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken point must not lose the others
            log.error("%s: pruning failed: %s", label, exc)
            vr.errors.append(_error("pruning", exc))
            vr.wall_time_s = time.perf_counter() - t0
            return outcome
        if stored_point is None:
            vr.pruning = record
        if session.deploy_ctx is not None:
            fresh = VariantResult(id=point.id, point=vr.point, pruning=record)
            if not _deploy(model, fresh, session.deploy_ctx, label):
                # an unverified deployment is never audited: its suites' numbers would not be the shipped model's
                vr.errors.extend(fresh.errors)
                if stored_point is None:
                    vr.deployment = fresh.deployment
                    vr.measurements.extend(fresh.measurements)
                vr.wall_time_s = time.perf_counter() - t0
                return outcome
            if stored_point is None:
                vr.deployment = fresh.deployment
                vr.measurements.extend(fresh.measurements)
            _save_variant(session, point, model, vr)
        if stored_point is None:
            _save(
                keys.point(point),
                {
                    "pruning": _jsonable(vr.pruning),
                    "deployment": _jsonable(vr.deployment),
                    "measurements": [_jsonable(m) for m in vr.measurements],
                },
            )

    variant = Variant(point=point, model=model, pruning=vr.pruning, deployment=vr.deployment)
    for suite in session.suites:
        if suite.name in stored_suites:
            entry = stored_suites[suite.name]
            out = _suite_output_from_store(entry["payload"], entry["arrays"])
            outcome.reused += 1
        else:
            ts = time.perf_counter()
            ctx = session.base_ctx.for_suite(None if point.is_baseline else (baseline or {}).get(suite.name))
            try:
                out = suite.run(variant, ctx)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - a crashed suite is an ERROR in the verdict
                log.error("%s: suite %s crashed: %s", label, suite.name, exc)
                vr.errors.append(_error(suite.name, exc))
                continue
            log.debug("%s: %s took %.1fs", point.id, suite.name, time.perf_counter() - ts)
            payload, arrays = _suite_output_to_store(out, keep_artifacts=point.is_baseline)
            if payload is not None:
                _save(keys.suite(point, suite.name), payload, arrays)
        vr.measurements.extend(out.measurements)
        vr.warnings.extend(out.warnings)
        vr.not_applicable.update(out.not_applicable)
        outcome.datasets.extend(out.datasets)
        if out.examples:
            vr.examples[suite.name] = out.examples
        if point.is_baseline:
            outcome.artifacts[suite.name] = out.artifacts
    vr.wall_time_s = time.perf_counter() - t0
    if model is not session.dense:
        del model, variant
        gc.collect()
    return outcome


def _error(stage: str, exc: BaseException) -> SuiteError:
    return SuiteError(suite=stage, error_type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc())


def _jsonable(record: Any) -> Any:
    """A pydantic record as the JSON that results.json will hold (NaN and inf as results.json writes them)."""
    return None if record is None else json.loads(record.model_dump_json())


def _suite_output_to_store(out: Any, *, keep_artifacts: bool) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    from audit.store import encode_tree

    payload: dict[str, Any] = {
        "measurements": [_jsonable(m) for m in out.measurements],
        "warnings": list(out.warnings),
        "not_applicable": dict(out.not_applicable),
        "examples": json.loads(json.dumps(out.examples, default=str)),
        "datasets": [_jsonable(d) for d in out.datasets],
        "artifacts": None,
    }
    arrays: dict[str, Any] = {}
    if keep_artifacts:
        try:
            payload["artifacts"], arrays = encode_tree(out.artifacts)
        except TypeError as exc:
            # without its artifacts the baseline cannot serve the variants' paired tests on resume
            log.warning("not storing a baseline suite output whose artifacts cannot be stored: %s", exc)
            return None, {}
    return payload, arrays


def _suite_output_from_store(payload: dict[str, Any], arrays: dict[str, Any]) -> Any:
    from audit.store import decode_tree
    from audit.suite import SuiteOutput

    return SuiteOutput(
        measurements=[Measurement.model_validate(m) for m in payload["measurements"]],
        artifacts=decode_tree(payload["artifacts"], arrays) if payload.get("artifacts") is not None else {},
        examples=payload["examples"],
        warnings=payload["warnings"],
        not_applicable=payload.get("not_applicable", {}),
        datasets=[DatasetIdentity.model_validate(d) for d in payload["datasets"]],
    )


def _save_variant(session: Session, point: SweepPoint, model: Any, vr: VariantResult) -> None:
    config = session.config
    if not (session.write and config.deploy.save_variants and vr.deployment is not None):
        return
    from audit.deploy.io import save_deployed

    # written as it is made (each directory atomically): deployed variants are large
    vr.deployment.saved_to = f"variants/{point.id}"
    save_deployed(
        model,
        vr.deployment.saved_to,
        root=config.output_path(),
        tokenizer=session.loaded.tokenizer,
        record=vr.deployment,
    )


def point_summary(vr: VariantResult) -> str:
    """One short line about a finished point, for logs and the progress bar."""
    parts = []
    if vr.pruning is not None:
        parts.append(f"sparsity {vr.pruning.achieved_sparsity:.3f}")
    acc = next((m for m in vr.measurements if m.metric == "accuracy" and m.suite == "performance"), None)
    if acc is not None and acc.value is not None:
        parts.append(f"accuracy {acc.value:.3f}")
    if vr.errors:
        parts.append(f"{len(vr.errors)} error(s): {', '.join(sorted({e.suite for e in vr.errors}))}")
    return ", ".join(parts)


def run_audit(
    config: AuditConfig,
    *,
    command: str | None = None,
    write: bool = True,
    formats: list[str] | None = None,
    paths: dict[str, Path] | None = None,
    resume: bool = False,
    progress: Any = None,
) -> RunOutcome:
    """Run the whole audit described by ``config``.

    Finished units of work go to a content-addressed store under the output directory as
    they finish; with ``resume`` the run reuses every unit whose inputs are unchanged.
    """
    from audit.executors import get_executor
    from audit.progress import Progress
    from audit.store import ResultStore

    t_run = time.perf_counter()
    preflighted = preflight(config)
    if write:  # unsafe output paths fail before any work (torch-free)
        from audit.paths import safe_join
        from reports.writer import report_targets

        check_output_dir(config.output_path())
        report_targets(config.output_path(), formats or config.report.formats, paths)
        safe_join(config.output_path(), STORE_DIR)
        if config.deploy.save_variants:
            for p in plan(config)[1:]:
                safe_join(config.output_path(), "variants", p.id)
    progress = progress if progress is not None else Progress()
    session = prepare(config, preflighted=preflighted)
    session.write = write
    store = ResultStore(config.output_path() / STORE_DIR) if write else None
    if store is not None and resume:
        log.info("resuming: %d finished unit(s) in %s", store.entries(), store.root)
    executor = get_executor(config)
    outcomes = executor.run(session, store=store, resume=resume, progress=progress)
    outcome = finish(session, outcomes, command=command, write=write, formats=formats, paths=paths)
    log.info("audit finished in %.1fs", time.perf_counter() - t_run)
    return outcome


def check_output_dir(out: Path) -> None:
    """The output directory must be a directory, or creatable as one: nothing on its path is a file."""
    p = out
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        what = "is" if p == out else f"would be inside {p}, which is"
        raise UsageError(
            f"output_dir {what} a file, not a directory",
            where=str(out),
            hint="set output_dir (or --output-dir) to a directory",
        )


STORE_DIR = ".prune-audit-store"
"""The result store's folder inside the output directory."""


def finish(
    session: Session,
    outcomes: list[PointOutcome],
    *,
    command: str | None = None,
    write: bool = True,
    formats: list[str] | None = None,
    paths: dict[str, Path] | None = None,
) -> RunOutcome:
    """Assemble the run's result from its points (in plan order), judge it and write the reports."""
    import torch

    config = session.config
    order = {p.id: i for i, p in enumerate(session.points)}
    outcomes = sorted(outcomes, key=lambda o: order[o.result.id])
    results = [o.result for o in outcomes]
    cfg_json = config.model_dump(mode="json")
    prov = provenance.collect(
        seed=config.seed,
        started_at=session.started_at,
        command=command,
        config_fingerprint=sha256_text(canonical_json(cfg_json)),
        threads=torch.get_num_threads(),
    )
    prov.finished_at = provenance.now_iso()
    eval_set = session.eval_set
    datasets = [eval_set.identity] if eval_set.identity else []
    calibration = session.calibration
    if calibration is not None:
        seeds = sorted({p.seed for p in session.points[1:] if session.pruners[p.label].needs_calibration})
        for seed in seeds:  # drawn here too when every point came from the store or from Ray workers
            rec = calibration(seed).record
            datasets.append(
                DatasetIdentity(
                    id=f"calibration:{rec.dataset}:seed{rec.point_seed}",
                    source=rec.split,
                    split=rec.split,
                    n=rec.n,
                    fingerprint=rec.fingerprint,
                )
            )
    extra: dict[str, DatasetIdentity] = {}
    for o in outcomes:
        for d in o.datasets:
            extra.setdefault(d.id, d)
    datasets.extend(extra.values())
    result = RunResult(
        run_id=session.keys.run_id(),
        title=config.report.title or f"Pruning audit of {Path(session.loaded.identity.source).name}",
        provenance=prov,
        config=cfg_json,
        model=session.loaded.identity,
        datasets=datasets,
        metrics=_metric_catalog(config, deployed=session.deploy_ctx is not None),
        baseline=results[0],
        variants=results[1:],
        limitations=_limitations(config, eval_set, results)
        + [d.truncation_note for d in datasets if d.truncation_note],
    )
    from audit.analysis import analyze_sweep  # FDR control over every variant's tests

    analyze_sweep(result, alpha=round(1.0 - config.runtime.ci_level, 10))
    verdict = None
    if session.policy is not None:
        verdict = evaluate_policy(session.policy, result, policy_label=session.policy_label)
        result.verdict = verdict  # skipped rules are listed by the report, from the verdict
    out_dir = config.output_path()
    files = {}
    if write:
        from audit.interrupt import deferred

        with deferred():  # all the reports or none: a signal now waits until they are written
            files = write_reports(result, out_dir, formats or config.report.formats, paths=paths)
    return RunOutcome(result=result, verdict=verdict, output_dir=out_dir, files=files)


def _deploy_context(config: AuditConfig, eval_set: EvalSet, predictor: Any, dense: Any) -> Any:
    """Probe batch, converter and speed settings shared by every variant (None if disabled)."""
    dc = config.deploy
    if not dc.enabled:
        return None
    from audit.deploy.pipeline import DeployContext

    k = min(dc.probe_size, len(eval_set))
    probe = eval_set.subset(np.arange(k), name=eval_set.name)
    batches = predictor.encode(probe.texts, probe.text_pairs).batches
    return DeployContext.create(dc, batches, dense, threads=config.runtime.threads)


def _deploy(model: Any, vr: VariantResult, ctx: Any, label: str) -> bool:
    """Deploy a pruned model in place; False (and an error on ``vr``) if it cannot be trusted."""
    from audit.deploy.pipeline import deploy_variant
    from audit.deploy.verify import failure_message

    try:
        deployed = deploy_variant(model, vr.pruning, ctx)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed deployment is an ERROR of this variant
        log.error("%s: deployment failed: %s", label, exc)
        vr.errors.append(
            SuiteError(
                suite="deployment", error_type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc()
            )
        )
        return False
    vr.deployment = deployed.record
    vr.measurements.extend(deployed.measurements)
    eq = deployed.record.equivalence
    assert eq is not None
    log.info(
        "%s: deployed as %s; max |dlogit| %.1e, agreement %.3f%s",
        label,
        ", ".join(f"{k}x{n}" for k, n in deployed.record.formats.items()),
        eq.max_abs_logit_diff,
        eq.agreement,
        f", speed-up b1 {deployed.record.speed.speedup_b1:.2f}x" if deployed.record.speed else "",
    )
    if not deployed.passed:
        msg = failure_message(eq)
        log.error("%s: %s", label, msg)
        vr.errors.append(SuiteError(suite="deployment", error_type="EquivalenceError", message=msg))
        return False
    return True


def _limitations(config: AuditConfig, eval_set: EvalSet, results: list[VariantResult]) -> list[str]:
    out = []
    notes = {n for v in results if v.deployment is not None for n in v.deployment.notes}
    out.extend(f"deployment: {n}" for n in sorted(notes))
    # what a suite could not do on a variant (e.g. a wall-clock cap cut its attacks short) limits the run
    out.extend(dict.fromkeys(w for v in results for w in v.warnings if w.startswith("adversarial on ")))
    if not config.data.columns.groups:
        out.append("No sensitive-group columns were configured: no per-group results.")
    for w in eval_set.warnings:
        out.append(f"eval data: {w}")
    for name, values in eval_set.groups.items():
        uniq, counts = np.unique(values.astype(str), return_counts=True)
        small = [f"{g} (n={c})" for g, c in zip(uniq, counts, strict=True) if c < 30]
        if len(uniq) < 2:
            out.append(f"group column {name!r} has a single group; no comparison is possible.")
        if small:
            out.append(f"group column {name!r}: small groups with wide CIs: {', '.join(small)}")
    return out


def write_reports(result: RunResult, out_dir: Path, formats: list[str], **kw: Any) -> dict[str, Path]:
    """Render every requested reporter and write each file atomically (see :mod:`reports.writer`)."""
    from reports.writer import write_reports as _write

    return _write(result, out_dir, formats, **kw)
