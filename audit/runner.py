"""The audit pipeline: plan → prune → deploy → suites → results → verdict → reports.

Bad input is found before any output is written: the policy, model, data, suites'
own datasets and every sweep point are validated first. Outputs are written
atomically at the end.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
import traceback
import uuid
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
    MetricInfo,
    RunResult,
    SuiteError,
    VariantResult,
    Verdict,
)

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
        policy, label = load_policy(config.policy, config.base_dir)
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

        for m in deploy_spec.METRICS:
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


def run_audit(
    config: AuditConfig,
    *,
    command: str | None = None,
    write: bool = True,
    formats: list[str] | None = None,
    paths: dict[str, Path] | None = None,
) -> RunOutcome:
    """Run the whole audit described by ``config``."""
    started_at = provenance.now_iso()
    t_run = time.perf_counter()
    policy, policy_label = preflight(config)
    configure_offline(config.offline)

    import torch

    from audit.inference import Predictor
    from audit.model_io import load_model
    from audit.pruning.base import PruneContext
    from audit.suite import SuiteContext, SuiteOutput, Variant

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

    def prune_ctx(point: SweepPoint) -> PruneContext:
        from audit.config import LayerSelection

        return PruneContext(
            sparsity=point.sparsity,
            seed=point.seed,
            layers=LayerSelection.model_validate(point.layers),
            calibration=(
                calibration(point.seed)
                if calibration is not None and not point.is_baseline and pruners[point.label].needs_calibration
                else None
            ),
        )

    for point in points[1:]:  # every point is checked before any work starts
        pruners[point.label].validate(dense, prune_ctx(point))

    deploy_ctx = _deploy_context(config, eval_set, predictor, dense) if len(points) > 1 else None

    baseline_artifacts: dict[str, dict[str, Any]] = {}
    results: list[VariantResult] = []
    extra_datasets: dict[str, DatasetIdentity] = {}
    for i, point in enumerate(points, start=1):
        t0 = time.perf_counter()
        vr = VariantResult(id=point.id, point=point.record())
        model = dense
        try:
            if not point.is_baseline:
                torch.manual_seed(point.seed)
                model = copy.deepcopy(dense)
                vr.pruning = pruners[point.label].prune(model, prune_ctx(point))
                model.eval()
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken point must not lose the others
            log.error("[%d/%d] %s: pruning failed: %s", i, len(points), point.id, exc)
            vr.errors.append(
                SuiteError(
                    suite="pruning", error_type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc()
                )
            )
            results.append(vr)
            continue
        if deploy_ctx is not None and not point.is_baseline:
            if not _deploy(model, vr, deploy_ctx, f"[{i}/{len(points)}] {point.id}"):
                # an unverified deployment is never audited: its suites' numbers would not be the shipped model's
                vr.wall_time_s = time.perf_counter() - t0
                results.append(vr)
                del model
                gc.collect()
                continue
            if write and config.deploy.save_variants and vr.deployment is not None:
                from audit.deploy.io import save_deployed

                # written as it is made (each directory atomically): deployed variants are large
                vr.deployment.saved_to = f"variants/{point.id}"
                save_deployed(
                    model,
                    config.output_path() / vr.deployment.saved_to,
                    tokenizer=loaded.tokenizer,
                    record=vr.deployment,
                )
        variant = Variant(point=point, model=model, pruning=vr.pruning, deployment=vr.deployment)
        for suite in suites:
            ts = time.perf_counter()
            ctx = base_ctx.for_suite(None if point.is_baseline else baseline_artifacts.get(suite.name))
            try:
                out: SuiteOutput = suite.run(variant, ctx)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - a crashed suite is an ERROR in the verdict
                log.error("[%d/%d] %s: suite %s crashed: %s", i, len(points), point.id, suite.name, exc)
                vr.errors.append(
                    SuiteError(
                        suite=suite.name,
                        error_type=type(exc).__name__,
                        message=str(exc),
                        traceback=traceback.format_exc(),
                    )
                )
                continue
            vr.measurements.extend(out.measurements)
            vr.warnings.extend(out.warnings)
            for d in out.datasets:
                extra_datasets.setdefault(d.id, d)
            if out.examples:
                vr.examples[suite.name] = out.examples
            if point.is_baseline:
                baseline_artifacts[suite.name] = out.artifacts
            log.debug("%s: %s took %.1fs", point.id, suite.name, time.perf_counter() - ts)
        vr.wall_time_s = time.perf_counter() - t0
        results.append(vr)
        summary = ""
        acc = next((m for m in vr.measurements if m.metric == "accuracy"), None)
        if acc is not None and acc.value is not None:
            summary = f" accuracy {acc.value:.3f}"
        achieved = f" sparsity {vr.pruning.achieved_sparsity:.3f}" if vr.pruning else ""
        log.info("[%d/%d] %s:%s%s (%.1fs)", i, len(points), point.id, achieved, summary, vr.wall_time_s)
        if model is not dense:
            del model, variant
            gc.collect()

    cfg_json = config.model_dump(mode="json")
    prov = provenance.collect(
        seed=config.seed,
        started_at=started_at,
        command=command,
        config_fingerprint=sha256_text(canonical_json(cfg_json)),
        threads=torch.get_num_threads(),
    )
    prov.finished_at = provenance.now_iso()
    datasets = [eval_set.identity] if eval_set.identity else []
    if calibration is not None:
        for sample in calibration.drawn.values():
            rec = sample.record
            datasets.append(
                DatasetIdentity(
                    id=f"calibration:{rec.dataset}:seed{rec.point_seed}",
                    source=rec.split,
                    split=rec.split,
                    n=rec.n,
                    fingerprint=rec.fingerprint,
                )
            )
    datasets.extend(extra_datasets.values())
    result = RunResult(
        run_id=uuid.uuid4().hex[:12],
        title=config.report.title or f"Pruning audit of {Path(loaded.identity.source).name}",
        provenance=prov,
        config=cfg_json,
        model=loaded.identity,
        datasets=datasets,
        metrics=_metric_catalog(config, deployed=deploy_ctx is not None),
        baseline=results[0],
        variants=results[1:],
        limitations=_limitations(config, eval_set, results),
    )
    from audit.analysis import analyze_sweep  # FDR control over every variant's tests

    analyze_sweep(result, alpha=round(1.0 - config.runtime.ci_level, 10))
    verdict = None
    if policy is not None:
        verdict = evaluate_policy(policy, result, policy_label=policy_label)
        result.verdict = verdict  # skipped rules are listed by the report, from the verdict
    out_dir = config.output_path()
    files = write_reports(result, out_dir, formats or config.report.formats, paths=paths) if write else {}
    log.info("audit finished in %.1fs", time.perf_counter() - t_run)
    return RunOutcome(result=result, verdict=verdict, output_dir=out_dir, files=files)


def _deploy_context(config: AuditConfig, eval_set: EvalSet, predictor: Any, dense: Any) -> Any:
    """Probe batch, converter and speed settings shared by every variant (None if disabled)."""
    dc = config.deploy
    if not dc.enabled:
        return None
    from audit.deploy.convert import DeployOptions
    from audit.deploy.pipeline import DeployContext

    k = min(dc.probe_size, len(eval_set))
    probe = eval_set.subset(np.arange(k), name=eval_set.name)
    batches = predictor.encode(probe.texts, probe.text_pairs).batches
    options = DeployOptions(
        formats=tuple(dc.formats),
        bsr_blocks=tuple(dc.bsr_blocks),
        min_speedup=dc.min_speedup,
        max_density=dc.max_density,
        max_block_density=dc.max_block_density,
        tokens=tuple(dc.choose_tokens),
        timing_min_s=dc.timing_min_s,
        threads=config.runtime.threads,
        timing_cache=dc.timing_cache,
        force_format=dc.force_format,
    )
    return DeployContext.create(
        options,
        batches,
        dense,
        tolerance=dc.tolerance,
        measure_speed=dc.measure_speed,
        speed_seq_len=dc.speed_seq_len,
        speed_batch_size=dc.speed_batch_size,
        speed_min_time=dc.speed_min_time_s,
        speed_rounds=dc.speed_rounds,
        threads=config.runtime.threads,
    )


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
