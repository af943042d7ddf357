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
from audit.atomic import atomic_write_text
from audit.config import AuditConfig
from audit.data import EvalSet, check_data_files, load_split
from audit.env import configure_offline
from audit.errors import ExitCode, UsageError
from audit.fingerprint import texts_sha256
from audit.model_io import check_model_dir
from audit.plan import SweepPoint, canonical_json, plan, sha256_text
from audit.policy import Policy, evaluate_policy, load_policy, skipped_rules
from audit.registry import PRUNERS, REPORTERS, SUITES
from audit.results import (
    CalibrationRecord,
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
    """Tokenized calibration batches drawn from the configured split (or None)."""
    import torch

    from audit.pruning.base import CalibrationData

    calib_cfg = config.sweep.calibration
    split = calib_cfg.split or config.data.splits.calibration
    if split is None:
        return None
    es = load_split(config, split, id2label)
    rng = np.random.default_rng(calib_cfg.seed)
    n = min(calib_cfg.n, len(es))
    idx = np.sort(rng.choice(len(es), size=n, replace=False))
    sub = es.subset(idx, name=es.name)
    enc = predictor.encode(sub.texts, sub.text_pairs)
    labels = torch.from_numpy(sub.labels)
    batch_labels = [
        labels[torch.from_numpy(enc.order[i : i + predictor.batch_size])] for i in range(0, n, predictor.batch_size)
    ]
    record = CalibrationRecord(
        dataset=config.data.name or split,
        split=split,
        n=n,
        seed=calib_cfg.seed,
        fingerprint=texts_sha256(sub.texts, sub.labels.tolist()),
    )
    return CalibrationData(
        texts=sub.texts, labels=sub.labels, batches=enc.batches, batch_labels=batch_labels, record=record
    )


def _metric_catalog(config: AuditConfig) -> dict[str, MetricInfo]:
    out = {}
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
    needs_calibration = any(p.spec.needs_calibration for p in pruners.values())
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
            calibration=calibration,
        )

    for point in points[1:]:  # every point is checked before any work starts
        pruners[point.label].validate(dense, prune_ctx(point))

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
        datasets.append(
            DatasetIdentity(
                id=f"calibration:{calibration.record.dataset}",
                source=calibration.record.split,
                split=calibration.record.split,
                n=calibration.record.n,
                fingerprint=calibration.record.fingerprint,
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
        metrics=_metric_catalog(config),
        baseline=results[0],
        variants=results[1:],
        limitations=_limitations(config, eval_set, results),
    )
    from audit.analysis import analyze_sweep  # FDR control over every variant's tests

    analyze_sweep(result, alpha=round(1.0 - config.runtime.ci_level, 10))
    verdict = None
    if policy is not None:
        verdict = evaluate_policy(policy, result, policy_label=policy_label)
        result.verdict = verdict
        result.limitations.extend(skipped_rules(verdict))
    out_dir = config.output_path()
    files = write_reports(result, out_dir, config.report.formats) if write else {}
    log.info("audit finished in %.1fs", time.perf_counter() - t_run)
    return RunOutcome(result=result, verdict=verdict, output_dir=out_dir, files=files)


def _limitations(config: AuditConfig, eval_set: EvalSet, results: list[VariantResult]) -> list[str]:
    out = []
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


def write_reports(result: RunResult, out_dir: Path, formats: list[str]) -> dict[str, Path]:
    """Render every requested reporter and write each file atomically."""
    files = {}
    rendered = {}
    for name in formats:  # render everything first: a failing reporter writes nothing
        spec = REPORTERS.get(name)
        rendered[name] = (spec, spec.load()(result))
    for name, (spec, text) in rendered.items():
        files[name] = atomic_write_text(out_dir / spec.filename, text)
    return files
