"""The HTML transparency report's view model, assembled from the section views."""

from __future__ import annotations

from typing import Any

from audit.results import RunResult
from reports.views.common import catalog, rule_row, sorted_rules
from reports.views.groups import MAX_FINDINGS, group_views
from reports.views.identity import dataset_rows, model_view, provenance_view
from reports.views.limitations import limitations
from reports.views.measurements import suite_sections
from reports.views.protocol import protocol
from reports.views.regressions import regression_rows, suspicious_rows
from reports.views.sweeps import sweep_charts
from reports.views.variants import layer_views, variant_row
from reports.views.verdict import matrix, verdict_view


def build_view(result: RunResult) -> dict[str, Any]:
    """The HTML view model of a run."""
    cat = catalog(result)
    verdict = result.verdict
    rules = sorted_rules(verdict.rules) if verdict else []
    group_tables, findings = group_views(result, cat)
    variants = [variant_row(v) for v in result.all_variants()]
    return {
        "title": result.title,
        "run_id": result.run_id,
        "schema_version": result.schema_version,
        "verdict": verdict_view(result),
        "matrix": matrix(result),
        "model": model_view(result),
        "datasets": dataset_rows(result),
        "variants": variants,
        "has_deployment": any(v.deployment for v in result.variants),
        "has_structured": any(r["heads_removed"] or r["neurons_removed"] for r in variants),
        "layers": layer_views(result),
        "variant_ids": [v.id for v in result.all_variants()],
        "sweeps": sweep_charts(result, cat),
        "suites": suite_sections(result, cat),
        "groups": group_tables,
        "disparate": findings[:MAX_FINDINGS],
        "disparate_more": max(0, len(findings) - MAX_FINDINGS),
        "regressions": regression_rows(rules),
        "suspicious_gains": suspicious_rows(result),
        "rules": [rule_row(r) for r in rules],
        "protocol": protocol(result, cat),
        "provenance": provenance_view(result),
        "limitations": limitations(result),
    }
