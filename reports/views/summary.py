"""The Markdown summary's view model: verdict, key metrics, regressions (CI step summary, PR comment)."""

from __future__ import annotations

from typing import Any

from audit.results import RunResult
from reports.views.allocation import allocation_summary
from reports.views.attribution import attribution_summary
from reports.views.common import by_id, catalog, fmt, fmt_value, metric_info, sorted_rules
from reports.views.limitations import limitations
from reports.views.regressions import regression_rows, suspicious_rows
from reports.views.verdict import verdict_view


def _judged_metric_ids(result: RunResult) -> list[str]:
    ids: dict[str, None] = {}
    if result.verdict is not None:
        for r in result.verdict.rules:
            if r.status != "SKIP" and "*" not in r.metric:
                ids.setdefault(r.metric, None)
    return list(ids)


def build_summary(result: RunResult, *, max_rows: int = 30) -> dict[str, Any]:
    """The compact view for Markdown (CI step summary, PR comment)."""
    cat = catalog(result)
    verdict = result.verdict
    rules = sorted_rules(verdict.rules) if verdict else []
    regressions = regression_rows(rules, result, cat)
    key_ids = _judged_metric_ids(result)[:6]
    maps = {v.id: by_id(v) for v in result.all_variants()}
    key_rows = []
    for v in result.all_variants():
        cells = []
        for mid in key_ids:
            m = maps[v.id].get(mid)
            info = metric_info(cat, mid)
            text = fmt_value(m.value, info) if m is not None else "—"
            if m is not None and m.ci_low is not None and m.ci_high is not None:
                text += f" [{fmt_value(m.ci_low, info)}, {fmt_value(m.ci_high, info)}]"
            cells.append(text)
        key_rows.append({"variant": v.id, "sparsity": fmt(v.point.sparsity, 2), "cells": cells})
    return {
        "title": result.title,
        "run_id": result.run_id,
        "model": result.model.source,
        "tool_version": result.provenance.tool_version,
        "schema_version": result.schema_version,
        "verdict": verdict_view(result),
        "regressions": regressions[:max_rows],
        "regressions_more": max(0, len(regressions) - max_rows),
        "key_metrics": key_ids,
        "key_rows": key_rows[: max_rows + 1],  # the dense row plus max_rows variants
        "key_rows_more": max(0, len(key_rows) - max_rows - 1),
        "n_variants": len(result.variants),
        "limitations": limitations(result),
        "ci_statement": (result.statistics.get("bootstrap") or {}).get("statement", ""),
        "suspicious_gains": suspicious_rows(result),
        "attribution": attribution_summary(result),
        "allocation": allocation_summary(result),
    }
