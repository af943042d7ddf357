"""View models: everything a template shows, precomputed from a :class:`RunResult`.

Templates only lay out what is here; they never compute.
"""

from __future__ import annotations

from typing import Any

from audit.results import Measurement, RunResult, VariantResult

STATUS_ORDER = {"FAIL": 0, "ERROR": 1, "WARN": 2, "PASS": 3, "SKIP": 4}


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}"


def fmt_ci(m: Measurement | None, digits: int = 3) -> str:
    if m is None or m.ci_low is None or m.ci_high is None:
        return ""
    return f"[{m.ci_low:.{digits}f}, {m.ci_high:.{digits}f}]"


def _variant_row(v: VariantResult) -> dict[str, Any]:
    p = v.pruning
    d = v.deployment
    return {
        "id": v.id,
        "method": v.point.label or v.point.method,
        "sparsity": fmt(v.point.sparsity, 2),
        "seed": v.point.seed,
        "achieved": fmt(p.achieved_sparsity, 3) if p else "—",
        "params": f"{p.params_nonzero:,} / {p.params_total:,}" if p else "—",
        "criterion": p.criterion if p else "",
        "calibration": (
            f"{p.calibration.dataset}[{p.calibration.split}] n={p.calibration.n} seed={p.calibration.seed}"
            if p and p.calibration
            else "none"
        ),
        "prune_time": fmt(p.wall_time_s, 2) if p else "—",
        "formats": ", ".join(f"{k}×{n}" for k, n in sorted(d.formats.items())) if d else "",
        "equivalence": (
            f"max |Δlogit| {d.equivalence.max_abs_logit_diff:.1e}, agreement {d.equivalence.agreement:.3f}"
            if d and d.equivalence
            else ""
        ),
        "errors": [f"{e.suite}: {e.error_type}: {e.message}" for e in v.errors],
        "warnings": list(v.warnings),
        "wall_time": fmt(v.wall_time_s, 1),
    }


def _metric_rows(result: RunResult) -> list[dict[str, Any]]:
    ids: list[str] = []
    for v in result.all_variants():
        for m in v.measurements:
            if m.id not in ids:
                ids.append(m.id)
    rows = []
    for mid in ids:
        info = result.metric_info(mid)
        base = result.baseline.measurement(mid)
        cells = []
        for v in result.all_variants():
            m = v.measurement(mid)
            delta = None
            if (
                m is not None
                and base is not None
                and m.value is not None
                and base.value is not None
                and not v.is_baseline
            ):
                delta = m.value - base.value
            worse = False
            if delta is not None and info is not None and info.higher_is_better is not None:
                worse = delta < 0 if info.higher_is_better else delta > 0
            cells.append(
                {
                    "value": fmt(m.value) if m else "—",
                    "ci": fmt_ci(m),
                    "delta": fmt_signed(delta) if delta is not None else "",
                    "worse": worse,
                }
            )
        rows.append(
            {
                "id": mid,
                "meaning": info.meaning if info else "",
                "direction": (
                    "higher is better"
                    if info and info.higher_is_better
                    else "lower is better"
                    if info and info.higher_is_better is False
                    else ""
                ),
                "cells": cells,
            }
        )
    return rows


def build_view(result: RunResult) -> dict[str, Any]:
    """The HTML/Markdown view model of a run."""
    verdict = result.verdict
    rules = []
    if verdict is not None:
        for r in sorted(verdict.rules, key=lambda r: (STATUS_ORDER.get(r.status, 9), r.rule, r.variant)):
            rules.append(
                {
                    "status": r.status,
                    "rule": r.rule,
                    "variant": r.variant,
                    "metric": r.metric,
                    "severity": r.severity,
                    "observed": fmt(r.observed),
                    "baseline": fmt(r.baseline),
                    "compared": fmt_signed(r.compared) if r.compared is not None else "—",
                    "bound": r.bound,
                    "message": r.message,
                    "rationale": r.rationale,
                }
            )
    prov = result.provenance
    return {
        "title": result.title,
        "run_id": result.run_id,
        "schema_version": result.schema_version,
        "verdict": None
        if verdict is None
        else {
            "status": verdict.status,
            "policy": verdict.policy,
            "policy_fingerprint": verdict.policy_fingerprint[:12],
            "exit_code": verdict.exit_code,
            "counts": verdict.counts,
            "max_compliant": [
                {"method": k, "sparsity": fmt(v, 2) if v is not None else "none passes"}
                for k, v in sorted(verdict.max_compliant_sparsity.items())
            ],
            "notes": list(verdict.notes),
        },
        "model": {
            "source": result.model.source,
            "architecture": result.model.architecture,
            "fingerprint": result.model.fingerprint[:16],
            "labels": ", ".join(f"{k}={v}" for k, v in result.model.labels.items()),
            "params": f"{result.model.params_total:,}",
            "revision": result.model.revision or "",
        },
        "datasets": [
            {"id": d.id, "source": d.source, "split": d.split or "", "n": d.n, "fingerprint": d.fingerprint[:16]}
            for d in result.datasets
        ],
        "variants": [_variant_row(v) for v in result.all_variants()],
        "variant_ids": [v.id for v in result.all_variants()],
        "metric_rows": _metric_rows(result),
        "rules": rules,
        "provenance": {
            "tool_version": prov.tool_version,
            "git_sha": prov.git_sha or "unknown",
            "python": prov.python,
            "platform": prov.platform,
            "seed": prov.seed,
            "started_at": prov.started_at,
            "finished_at": prov.finished_at or "",
            "command": prov.command or "",
            "packages": sorted(prov.packages.items()),
            "config_fingerprint": prov.config_fingerprint[:16],
        },
        "limitations": list(result.limitations),
    }
