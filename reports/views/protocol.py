"""The protocol section: metrics measured, confidence intervals, sweep, statistics, policy rules and time split."""

from __future__ import annotations

import json
from typing import Any

from audit.results import MetricInfo, RunResult
from reports.views.common import clip, direction_text, ordered_ids
from reports.views.groups import DISPARATE_MIN_N, DISPARATE_TOLERANCE
from reports.views.timing import timing

MAX_STAT_ROWS = 200


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if len(out) >= MAX_STAT_ROWS:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, float):
        out.append((prefix, f"{value:.4g}"))
    else:
        out.append((prefix, clip(value)))


def _source(info: MetricInfo) -> str:
    """The "Source" cell: the citation, or for an extra metric the evaluate module that computed it."""
    if info.module:
        return f"evaluate module {info.module.get('path', '')} (sha256 {info.module.get('sha256', '')[:16]})"
    return info.citation


def protocol(result: RunResult, cat: dict[str, MetricInfo]) -> dict[str, Any]:
    used = {mid.split("/", 1)[0] + "/" + mid.rsplit("/", 1)[-1] for mid in ordered_ids(result)}
    metrics = [
        {
            "id": key,
            "meaning": info.meaning,
            "direction": direction_text(info) or "no better direction",
            "range": " – ".join("∞" if x is None else f"{x:g}" for x in info.range),
            "unit": info.unit,
            "citation": _source(info),
            "reference": "" if info.reference is None else f"{info.reference:g}",
            "measured": key in used,
        }
        for key, info in sorted(cat.items())
        if key in used or key in result.metrics
    ]
    ci_methods: dict[str, None] = {}
    for v in result.all_variants():
        for m in v.measurements:
            if m.ci_method:
                ci_methods.setdefault(m.ci_method, None)
    cfg = result.config
    runtime = cfg.get("runtime") or {}
    sweep = cfg.get("sweep") or {}
    methods = []
    for m in sweep.get("methods") or []:
        if isinstance(m, dict):
            params = m.get("params") or {}
            methods.append(m.get("name", "?") + (f" {json.dumps(params, sort_keys=True)}" if params else ""))
        else:
            methods.append(str(m))
    stats: list[tuple[str, str]] = []
    _flatten("", result.statistics, stats)
    verdict = result.verdict
    rules = []
    if verdict is not None:
        for r in verdict.policy_rules:
            a = r.get("applies_to") or {}
            rng = a.get("sparsity") or {}
            scope = []
            if a.get("methods"):
                scope.append("methods " + ", ".join(a["methods"]))
            if a.get("variants"):
                scope.append("variants " + ", ".join(a["variants"]))
            if rng and (rng.get("min", 0) > 0 or rng.get("max", 1) < 1):
                scope.append(f"sparsity {rng.get('min', 0):g}–{rng.get('max', 1):g}")
            if a.get("baseline"):
                scope.append("and dense")
            bound = " and ".join(
                f"{'≥' if k == 'min' else '≤'} {r[k]:g}" for k in ("min", "max") if r.get(k) is not None
            )
            rules.append(
                {
                    "id": r.get("id", ""),
                    "metric": r.get("metric", ""),
                    "aggregate": str(r.get("aggregate", "overall")).replace("_", " ")
                    + (f" ({r['feature']})" if r.get("feature") else "")
                    + (f", groups n ≥ {r['min_group_n']}" if r.get("min_group_n") else ""),
                    "comparison": str(r.get("comparison", "absolute")).replace("_", " "),
                    "bound": bound,
                    "use": str(r.get("use", "point")).replace("_", " "),
                    "severity": r.get("severity", "fail"),
                    "scope": "; ".join(scope) or "all variants",
                    "required": "required" if r.get("required", True) else "optional",
                    "rationale": " ".join(str(r.get("rationale", "")).split()),
                }
            )
    return {
        "metrics": metrics,
        "task_formats": [{"suite": k, "formats": v} for k, v in result.task_formats.items() if v],
        "ci_methods": list(ci_methods),
        "n_boot": runtime.get("n_boot", ""),
        "ci_statement": (result.statistics.get("bootstrap") or {}).get("statement", ""),
        "ci_level": runtime.get("ci_level", ""),
        "batch_size": runtime.get("batch_size", ""),
        "device": runtime.get("device", ""),
        "sweep_methods": ", ".join(methods),
        "sparsities": ", ".join(f"{s:g}" for s in sweep.get("sparsities") or []),
        "seeds": ", ".join(str(s) for s in sweep.get("seeds") or []),
        "statistics": [{"key": k, "value": v} for k, v in stats],
        "policy_rules": rules,
        "disparate_tolerance": f"{DISPARATE_TOLERANCE:g}",
        "disparate_min_n": DISPARATE_MIN_N,
        "timing": timing(result),
    }
