"""Finishing a run: its points assembled in plan order, provenance, limitations, the verdict and the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit import provenance
from audit.config import AuditConfig
from audit.data import EvalSet
from audit.errors import ExitCode
from audit.plan import canonical_json, sha256_text
from audit.policy import evaluate_policy
from audit.registry import STAGES, SUITES
from audit.results import DatasetIdentity, MetricInfo, RunResult, VariantResult, Verdict
from audit.stats import SMALL_GROUP_N

if TYPE_CHECKING:
    from audit.run.point import PointOutcome
    from audit.run.session import Session


@dataclass
class RunOutcome:
    """What :func:`audit.runner.run_audit` produced."""

    result: RunResult
    verdict: Verdict | None
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    units_total: int = 0
    """The run's units of work (each variant's pruning and deployment, each suite on each point)."""
    units_reused: int = 0
    """How many of them came from the result store (``--resume``); the rest were computed."""

    @property
    def exit_code(self) -> ExitCode:
        if self.verdict is None:
            evaluated = any(v.measurements for v in self.result.all_variants())
            return ExitCode.OK if evaluated else ExitCode.NO_RESULTS
        return ExitCode(self.verdict.exit_code)


def _metric_catalog(config: AuditConfig, *, stages: tuple[str, ...] = ()) -> dict[str, MetricInfo]:
    """The run's metric catalog: the metrics of every stage in ``stages`` (for this config), then the suites'."""
    out = {}
    for name in stages:
        stage = STAGES.get(name)
        for m in stage.run_metrics(config):
            out[f"{stage.name}/{m.name}"] = _info(stage.name, m)
    for s in config.suites:
        spec = SUITES.get(s.name)
        for m in spec.metrics:
            out[f"{spec.name}/{m.name}"] = _info(spec.name, m)
    if any(s.extra_metrics for s in config.suites):
        from audit.extra_metrics import extra_catalog

        out.update(extra_catalog(config))
    return out


def _task_formats(config: AuditConfig) -> dict[str, list[str]]:
    """Per suite that declares :attr:`SuiteSpec.task_formats`, the task formats its validated params describe."""
    out: dict[str, list[str]] = {}
    for s in config.suites:
        spec = SUITES.get(s.name)
        if spec.task_formats is not None:
            out.setdefault(spec.name, []).extend(str(line) for line in spec.task_formats(s.typed_params()))
    return out


def _stages_run(session: Session) -> tuple[str, ...]:
    """The stages this session ran on its variants (the runner holds a context for each one it runs)."""
    from audit.deploy.spec import STAGE as DEPLOY_STAGE

    deploys = session.config.deploy.enabled and len(session.points) > 1  # also when every unit came from the store
    return (DEPLOY_STAGE.name,) if deploys else ()


def _info(suite: str, m: Any) -> MetricInfo:
    """The catalog entry of one declared metric (a suite's or a stage's MetricSpec)."""
    return MetricInfo(
        suite=suite,
        name=m.name,
        meaning=m.meaning,
        higher_is_better=m.higher_is_better,
        range=list(m.range),
        unit=m.unit,
        citation=m.citation,
        reference=m.reference,
    )


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
    from reports.views.identity import default_title

    result = RunResult(
        run_id=session.keys.run_id(),
        title=config.report.title or default_title(session.loaded.identity.source),
        provenance=prov,
        config=cfg_json,
        model=session.loaded.identity,
        datasets=datasets,
        metrics=_metric_catalog(config, stages=_stages_run(session)),
        task_formats=_task_formats(config),
        baseline=results[0],
        variants=results[1:],
        limitations=_limitations(config, eval_set, results)
        + quantization_note(session.loaded.identity)
        + [d.truncation_note for d in datasets if d.truncation_note],
    )
    result.allocation = session.allocation
    from audit.analysis import analyze_sweep  # FDR control over every variant's tests

    analyze_sweep(result, alpha=round(1.0 - config.runtime.ci_level, 10))
    verdict = None
    if session.policy is not None:
        verdict = evaluate_policy(session.policy, result, policy_label=session.policy_label)
        result.verdict = verdict  # skipped rules are listed by the report, from the verdict
    if config.attribution.enabled:  # after judging: it may follow the rules that failed
        from audit.attribution import run_attribution

        session.variant_artifacts = {o.result.id: o.artifacts for o in outcomes if o.artifacts}
        result.attribution = run_attribution(session, result)
    out_dir = session.paths.output_dir
    files = {}
    if write:
        from audit.interrupt import deferred

        with deferred():  # all the reports or none: a signal now waits until they are written
            files = write_reports(result, out_dir, formats or config.report.formats, paths=paths)
    return RunOutcome(result=result, verdict=verdict, output_dir=out_dir, files=files)


def quantization_note(identity: Any) -> list[str]:
    """The limitation of a model loaded from a GGUF file: its weights were quantized upstream."""
    gguf = getattr(identity, "gguf", None)
    if not gguf or not gguf.get("quantized_upstream"):
        return []
    types = ", ".join(f"{t} x{n}" for t, n in sorted((gguf.get("tensor_types") or {}).items()))
    return [
        f"model: the weights were quantized upstream (GGUF file type {gguf.get('file_type')}; tensors {types}) "
        "and dequantized to float for this audit: the dense baseline is the dequantized model, not the original "
        "full-precision one."
    ]


def _limitations(config: AuditConfig, eval_set: EvalSet, results: list[VariantResult]) -> list[str]:
    from audit.deploy.spec import STAGE as DEPLOY_STAGE

    out = []
    notes = {n for v in results if v.deployment is not None for n in v.deployment.notes}
    out.extend(f"{DEPLOY_STAGE.name}: {n}" for n in sorted(notes))
    # what a suite could not do on a variant (`<suite> on <variant>: ...`, e.g. a wall-clock cap cut its attacks
    # short) limits the run
    on_variant = tuple(f"{s.name} on " for s in config.suites)
    out.extend(dict.fromkeys(w for v in results for w in v.warnings if w.startswith(on_variant)))
    if not config.data.columns.groups:
        out.append("No sensitive-group columns were configured: no per-group results.")
    for w in eval_set.warnings:
        out.append(f"eval data: {w}")
    for name, values in eval_set.groups.items():
        uniq, counts = np.unique(values.astype(str), return_counts=True)
        small = [f"{g} (n={c})" for g, c in zip(uniq, counts, strict=True) if c < SMALL_GROUP_N]
        if len(uniq) < 2:
            out.append(f"group column {name!r} has a single group; no comparison is possible.")
        if small:
            out.append(f"group column {name!r}: small groups with wide CIs: {', '.join(small)}")
    return out


def write_reports(result: RunResult, out_dir: Path, formats: list[str], **kw: Any) -> dict[str, Path]:
    """Render every requested reporter and write each file atomically (see :mod:`reports.writer`)."""
    from reports.writer import write_reports as _write

    return _write(result, out_dir, formats, **kw)
