"""The HTML transparency report's view model, assembled from the section views."""

from __future__ import annotations

from typing import Any

from audit.deploy.spec import STAGE as DEPLOY_STAGE
from audit.results import RunResult
from reports.views.allocation import allocation_view
from reports.views.attribution import attribution_view
from reports.views.common import catalog, rule_row, sorted_rules
from reports.views.groups import MAX_FINDINGS, group_views
from reports.views.identity import dataset_rows, model_view, provenance_view
from reports.views.limitations import limitations
from reports.views.measurements import suite_sections
from reports.views.protocol import protocol
from reports.views.regressions import grouped_by_variant, regression_rows, suspicious_rows, top_findings
from reports.views.suite_text import suite_text
from reports.views.sweeps import sweep_charts, sweep_legend
from reports.views.variants import comparison_view, layer_views, variant_row
from reports.views.verdict import matrix, verdict_view

LONG_ROWS = 12
"""A section with more rows (or charts) than this starts closed."""


def _open(n: int) -> bool:
    return n <= LONG_ROWS


def _toc(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The table of contents: every section below the first screen, with what it holds."""
    n_charts = sum(len(g["charts"]) for g in view["sweeps"])
    toc = [
        {"anchor": "identity", "title": "Model and data", "count": f"{len(view['datasets'])} datasets"},
        {"anchor": "pruning", "title": "Pruning decisions", "count": f"{len(view['variants']) - 1} variants"},
        {"anchor": "sweeps", "title": "Sweep curves", "count": f"{n_charts} charts"},
        {"anchor": "groups", "title": "Groups", "count": f"{len(view['groups'])} metrics"},
    ]
    toc += [{"anchor": s["anchor"], "title": s["title"], "count": s["count"]} for s in view["suites"]]
    toc += [
        {"anchor": "regressions", "title": "Regressions", "count": f"{len(view['regressions'])} findings"},
        {"anchor": "protocol", "title": "Protocol", "count": ""},
        {"anchor": "limitations", "title": "Limitations", "count": f"{len(view['limitations'])}"},
    ]
    return toc


def _open_sections(view: dict[str, Any]) -> dict[str, bool]:
    """Which sections start open: the short ones (printing opens every one)."""
    layers = view["layers"]
    n_layers = len(layers["heatmap"]["row_labels"]) if layers.get("heatmap") else 0
    return {
        "identity": _open(len(view["datasets"])),
        "pruning": _open(len(view["variants"]) + n_layers),
        "matrix": view["matrix"] is None or _open(len(view["matrix"]["rows"])),
        "sweeps": _open(sum(len(g["charts"]) for g in view["sweeps"])),
        "groups": _open(sum(len(f["rows"]) for t in view["groups"] for f in t["features"])),
        "rules": _open(len(view["rules"])),
        "protocol": False,
        "limitations": _open(len(view["limitations"])),
    }


def build_view(result: RunResult) -> dict[str, Any]:
    """The HTML view model of a run."""
    cat = catalog(result)
    verdict = result.verdict
    rules = sorted_rules(verdict.rules) if verdict else []
    group_tables, findings = group_views(result, cat)
    variants = [variant_row(v) for v in result.all_variants()]
    regressions = regression_rows(rules, result, cat)
    view = {
        "title": result.title,
        "run_id": result.run_id,
        "schema_version": result.schema_version,
        "verdict": verdict_view(result),
        "matrix": matrix(result),
        "model": model_view(result),
        "datasets": dataset_rows(result),
        "variants": variants,
        "comparison": comparison_view(result, variants, cat),
        "has_deployment": any(v.deployment for v in result.variants),
        "deployment_stage": suite_text(DEPLOY_STAGE.name),
        "has_structured": any(r["heads_removed"] or r["neurons_removed"] for r in variants),
        "layers": layer_views(result),
        "allocation": allocation_view(result),
        "variant_ids": [v.id for v in result.all_variants()],
        "sweeps": sweep_charts(result, cat),
        "sweep_legend": sweep_legend(result),
        "suites": suite_sections(result, cat),
        "groups": group_tables,
        "disparate": findings[:MAX_FINDINGS],
        "disparate_more": max(0, len(findings) - MAX_FINDINGS),
        "regressions": regressions,
        "top_findings": top_findings([r for r in regressions if r["status"] in ("FAIL", "ERROR")] or regressions),
        "regression_groups": grouped_by_variant(regressions),
        "attribution": attribution_view(result, sorted({r["variant"] for r in regressions})),
        "suspicious_gains": suspicious_rows(result),
        "rules": [rule_row(r) for r in rules],
        "protocol": protocol(result, cat),
        "provenance": provenance_view(result),
        "limitations": limitations(result),
    }
    view["toc"] = _toc(view)
    view["open"] = _open_sections(view)
    return view
