"""One sweep point: prune, deploy and run every suite, reusing the units of work found in the store.

:func:`run_point` is what both executors (:mod:`audit.executors`) run for each point;
a broken point records its error and never loses the others.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from audit.errors import UsageError
from audit.results import (
    DatasetIdentity,
    DeploymentRecord,
    Measurement,
    PruningRecord,
    SuiteError,
    SuiteTiming,
    VariantResult,
)
from audit.store import StoreKey

if TYPE_CHECKING:
    from audit.plan import SweepPoint
    from audit.run.session import Session

log = logging.getLogger(__name__)


@dataclass
class PointOutcome:
    """One finished sweep point: its result and, for the baseline, each suite's artifacts (for a variant, those
    of the suites that keep them: :attr:`audit.suite.Suite.keeps_variant_artifacts`).
    """

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
    from audit.timing import measure_suite

    t0 = time.perf_counter()
    keys = session.keys
    outcome = PointOutcome(result=VariantResult(id=point.id, point=point.record()))
    vr = outcome.result
    label = label or point.id
    split = _Split()

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
    if need_model or (not point.is_baseline and stored_point is None):
        session.setup()  # something is computed here: suites set up, points validated, deploy context
    model = session.dense
    if stored_point is not None:
        pr, dep = stored_point["pruning"], stored_point["deployment"]
        vr.pruning = PruningRecord.model_validate(pr) if pr else None
        vr.deployment = DeploymentRecord.model_validate(dep) if dep else None
        vr.measurements.extend(Measurement.model_validate(m) for m in stored_point["measurements"])
        outcome.reused += 1
        split.from_store(vr, stored_point.get("timing"))
    if not point.is_baseline and (stored_point is None or need_model):
        try:
            torch.manual_seed(point.seed)
            model = copy.deepcopy(session.dense)
            tp = time.perf_counter()
            record = session.pruners[point.label].prune(model, session.prune_ctx(point))
            split.ran("prune", time.perf_counter() - tp)
            model.eval()
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken point must not lose the others
            log.error("%s: pruning failed: %s", label, exc)
            vr.errors.append(_error("pruning", exc))
            split.finish(vr, t0)
            return outcome
        if stored_point is None:
            vr.pruning = record
        if session.deploy_ctx is not None:
            fresh = VariantResult(id=point.id, point=vr.point, pruning=record)
            td = time.perf_counter()
            deployed = _deploy(model, fresh, session.deploy_ctx, label)
            split.ran("deploy", time.perf_counter() - td)
            if not deployed:
                # an unverified deployment is never audited: its suites' numbers would not be the shipped model's
                vr.errors.extend(fresh.errors)
                if stored_point is None:
                    vr.deployment = fresh.deployment
                    vr.measurements.extend(fresh.measurements)
                split.finish(vr, t0)
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
                    "timing": {"prune_s": split.prune_s, "deploy_s": split.deploy_s},
                },
            )

    variant = Variant(point=point, model=model, pruning=vr.pruning, deployment=vr.deployment)
    shared = getattr(session.predictor, "shared_logits", None)  # the eval set is scored once per point
    with shared(model) if shared is not None else contextlib.nullcontext():
        for suite in session.suites:
            if suite.name in stored_suites:
                entry = stored_suites[suite.name]
                out = _suite_output_from_store(entry["payload"], entry["arrays"])
                outcome.reused += 1
                split.suite_from_store(suite.name, entry["payload"].get("timing"))
            else:
                ctx = session.base_ctx.for_suite(None if point.is_baseline else (baseline or {}).get(suite.name))
                try:
                    with measure_suite(model) as timed:
                        out = suite.run(variant, ctx)
                except UsageError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a crashed suite is an ERROR in the verdict
                    log.error("%s: suite %s crashed: %s", label, suite.name, exc)
                    vr.errors.append(_error(suite.name, exc))
                    split.suites[suite.name] = timed[0]
                    continue
                split.suites[suite.name] = timed[0]
                log.debug("%s: %s took %.1fs", point.id, suite.name, timed[0].total_s)
                extra_failed = _extra_metrics(session, suite, out, ctx, vr, label)
                keep = point.is_baseline or suite.keeps_variant_artifacts
                payload, arrays = _suite_output_to_store(out, keep_artifacts=keep)
                if payload is not None:
                    payload["timing"] = _jsonable(timed[0])
                if payload is not None and not extra_failed:  # a failed extra metric is retried on resume
                    _save(keys.suite(point, suite.name), payload, arrays)
            vr.measurements.extend(out.measurements)
            vr.warnings.extend(out.warnings)
            vr.not_applicable.update(out.not_applicable)
            outcome.datasets.extend(out.datasets)
            if out.examples:
                vr.examples[suite.name] = out.examples
            if point.is_baseline or suite.keeps_variant_artifacts:
                outcome.artifacts[suite.name] = out.artifacts
    split.finish(vr, t0)
    if model is not session.dense:
        del model, variant
        gc.collect()
    return outcome


def _extra_metrics(session: Session, suite: Any, out: Any, ctx: Any, vr: VariantResult, label: str) -> bool:
    """Add the suite's extra metrics (:mod:`audit.extra_metrics`) to ``out``; True when one failed.

    A failed module is the variant's error under the suite's name: the suite's own metrics stand,
    and a rule on the extra metric is an ERROR naming the module.
    """
    metrics = session.extra_metrics.get(suite.name)
    if not metrics:
        return False
    from audit.extra_metrics import ExtraMetricError, extra_measurements

    try:
        out.measurements.extend(extra_measurements(suite, metrics, out.artifacts, ctx))
    except ExtraMetricError as exc:
        log.error("%s: %s", label, exc)
        vr.errors.append(_error(suite.name, exc))
        return True
    return False


@dataclass
class _Split:
    """The parts of a point's time gathered as it runs (:class:`audit.results.VariantTiming`)."""

    prune_s: float = 0.0
    deploy_s: float = 0.0
    suites: dict[str, SuiteTiming] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)

    def ran(self, part: str, seconds: float) -> None:
        setattr(self, f"{part}_s", seconds)
        if part in self.reused:
            self.reused.remove(part)

    def from_store(self, vr: VariantResult, stored: dict[str, float] | None = None) -> None:
        """Pruning and deployment taken from the store: the seconds of the run that made them
        (units stored by older versions: the seconds their records hold).
        """
        if stored is not None:
            self.prune_s, self.deploy_s = float(stored["prune_s"]), float(stored["deploy_s"])
        else:
            self.prune_s = vr.pruning.wall_time_s if vr.pruning else 0.0
            self.deploy_s = vr.deployment.wall_time_s if vr.deployment else 0.0
        self.reused.extend(["prune", "deploy"])

    def suite_from_store(self, name: str, stored: dict[str, Any] | None) -> None:
        self.reused.append(name)
        if stored is not None:  # units stored by older versions have no timing
            self.suites[name] = SuiteTiming.model_validate(stored)

    def finish(self, vr: VariantResult, t0: float) -> None:
        from audit.timing import variant_timing

        vr.wall_time_s = time.perf_counter() - t0
        vr.timing = variant_timing(
            vr.wall_time_s, prune_s=self.prune_s, deploy_s=self.deploy_s, suites=self.suites, reused=self.reused
        )


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
        root=session.paths.output_dir,
        tokenizer=session.loaded.tokenizer,
        record=vr.deployment,
    )


def point_summary(vr: VariantResult) -> str:
    """One short line about a finished point, for logs and the progress bar."""
    parts = []
    if vr.pruning is not None and vr.pruning.activation is not None:
        parts.append(f"activation sparsity {vr.pruning.activation.calibrated_sparsity:.3f} (calibration)")
    elif vr.pruning is not None:
        parts.append(f"sparsity {vr.pruning.achieved_sparsity:.3f}")
    acc = next((m for m in vr.measurements if m.metric == "accuracy" and m.suite == "performance"), None)
    if acc is not None and acc.value is not None:
        parts.append(f"accuracy {acc.value:.3f}")
    if vr.errors:
        parts.append(f"{len(vr.errors)} error(s): {', '.join(sorted({e.suite for e in vr.errors}))}")
    return ", ".join(parts)


def _deploy(model: Any, vr: VariantResult, ctx: Any, label: str) -> bool:
    """Deploy a pruned model in place; False (and an error on ``vr``) if it cannot be trusted."""
    from audit.deploy.pipeline import deploy_variant
    from audit.deploy.spec import STAGE
    from audit.deploy.verify import failure_message

    try:
        deployed = deploy_variant(model, vr.pruning, ctx)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed deployment is an ERROR of this variant
        log.error("%s: deployment failed: %s", label, exc)
        vr.errors.append(
            SuiteError(
                suite=STAGE.name, error_type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc()
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
        vr.errors.append(SuiteError(suite=STAGE.name, error_type="EquivalenceError", message=msg))
        return False
    return True
