"""Regression attribution: per attributed regression, the share of its gap each group of layers explains.

Formats what ``results.json`` holds (:class:`audit.results.RegressionAttribution`): a table of the
evaluated groups, a blocks x layer-type heatmap of the shares, Tran et al.'s per-group diagnostics
and what the budget did not reach. Nothing is computed here but formatting.
"""

from __future__ import annotations

from typing import Any

from audit.results import AttributionGroup, AttributionHoldout, HoldoutCheck, RegressionAttribution, RunResult
from reports.views.charts import share_colour, text_colour
from reports.views.common import fmt, fmt_signed

KIND_ORDER = ("attention", "ffn", "layers", "other")
KIND_TITLE = {"attention": "attention", "ffn": "FFN", "layers": "all layers", "other": "other"}
MAX_NOT_EVALUATED = 12
"""Names of groups the budget did not reach that are listed (the rest are counted)."""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


def _ci(g: AttributionGroup | HoldoutCheck) -> str:
    if g.ci_low is None or g.ci_high is None:
        return ""
    return f"[{g.ci_low * 100:.0f}, {g.ci_high * 100:.0f}] %"


def _row(g: AttributionGroup) -> dict[str, Any]:
    return {
        "name": g.name,
        "level": g.level,
        "kind": KIND_TITLE.get(g.kind or "", "") if g.kind else "",
        "n_layers": len(g.layers),
        "layers": ", ".join(g.layers),
        "value": fmt(g.value),
        "share": _pct(g.share),
        "ci": _ci(g),
    }


def heatmap(a: RegressionAttribution) -> dict[str, Any] | None:
    """Blocks x layer types: each cell the share of its type group (or of its block, when that is all it holds)."""
    blocks = [g for g in a.groups if g.level == "block" and g.block is not None]
    if not blocks:
        return None
    types = {(g.block, g.kind): g for g in a.groups if g.level == "type"}
    kinds = {g.kind for g in a.groups if g.level in ("type", "block") and g.kind} | {k for _, k in types}
    cols = [k for k in KIND_ORDER if k in kinds] or ["layers"]
    not_reached = set(a.not_evaluated)
    rows = []
    for b in sorted(blocks, key=lambda g: g.block or 0):
        cells = []
        for k in cols:
            g = types.get((b.block, k)) or (b if b.kind == k else None)
            if g is not None:
                cells.append(
                    {
                        "text": _pct(g.share),
                        "fill": share_colour(g.share),
                        "colour": text_colour(g.share),
                        "title": f"{b.name} · {KIND_TITLE.get(k, k)}: share {_pct(g.share)} {_ci(g)}".strip(),
                    }
                )
            else:
                missing = "not evaluated (budget)" if f"{b.name}:{k}" in not_reached else "not evaluated separately"
                if b.kind is not None and b.kind != k:
                    missing = "not pruned"
                cells.append({"text": "", "fill": share_colour(None), "colour": text_colour(None), "title": missing})
        rows.append({"block": b.name, "share": _pct(b.share), "cells": cells})
    return {"cols": [KIND_TITLE.get(k, k) for k in cols], "rows": rows}


def holdout_view(h: AttributionHoldout | None) -> dict[str, Any] | None:
    """The held-out check: each level's best group, its share where it was chosen and on unseen examples."""
    if h is None:
        return None
    summary = f"{h.n_holdout} of the {h.n_selection + h.n_holdout} defining examples were held out of the search"
    if h.gap is not None:
        summary += (
            f"; on them dense {fmt(h.dense_value)}, variant {fmt(h.variant_value)}, gap {fmt(h.gap)}; "
            f"{h.forward_passes} forward passes"
        )
    return {
        "summary": summary + ".",
        "rows": [
            {
                "name": c.name,
                "level": c.level,
                "n_layers": len(c.layers),
                "layers": ", ".join(c.layers),
                "selection": _pct(c.share_selection),
                "value": fmt(c.value),
                "share": _pct(c.share),
                "ci": _ci(c),
            }
            for c in h.checks
        ],
        "ci_method": h.ci_method or "",
        "note": h.note or "",
    }


def attribution_block(a: RegressionAttribution) -> dict[str, Any]:
    """One attributed regression, formatted."""
    evaluated = list(a.groups)
    left = a.not_evaluated
    summary = ""
    if a.dense_value is not None and a.variant_value is not None:
        summary = (
            f"{a.measure} on {a.n_examples} examples ({a.scope}): dense {fmt(a.dense_value)}, variant "
            f"{fmt(a.variant_value)}, gap {fmt(a.gap)}; {a.forward_passes} of {a.budget_forward_passes} forward "
            f"passes, {len(evaluated)} group(s) evaluated"
            + (f", {len(left)} not reached" if left else "")
            + (f"; {a.wall_time_s:.1f} s" if a.wall_time_s else "")
            + "."
        )
    return {
        "variant": a.variant,
        "metric": a.metric,
        "test": a.test,
        "q": fmt(a.q_value, 4),
        "delta": fmt_signed(a.delta),
        "rules": ", ".join(a.rules),
        "status": a.status,
        "status_badge": {"complete": "PASS", "partial": "WARN", "not_attributable": "SKIP"}[a.status],
        "reason": a.reason or "",
        "summary": summary,
        "rows": [_row(g) for g in evaluated],
        "heatmap": heatmap(a),
        "holdout": holdout_view(a.holdout),
        "not_evaluated": ", ".join(left[:MAX_NOT_EVALUATED])
        + (f" and {len(left) - MAX_NOT_EVALUATED} more" if len(left) > MAX_NOT_EVALUATED else ""),
        "ci_method": a.ci_method or "",
        "diagnostics": [
            {
                "feature": d.feature,
                "group": d.group,
                "n": d.n,
                "grad_dense": fmt(d.grad_norm_dense, 4),
                "grad_variant": fmt(d.grad_norm_variant, 4),
                "margin_dense": fmt(d.margin_dense),
                "margin_variant": fmt(d.margin_variant),
            }
            for d in a.diagnostics
        ],
        "diagnostics_note": a.diagnostics_note or "",
        "diagnostic_passes": a.diagnostic_passes,
        "notes": list(a.notes),
    }


def attribution_view(result: RunResult, shown_variants: list[str]) -> dict[str, Any] | None:
    """Attributed regressions per variant; ``others``: those of variants without a regression row.

    None when attribution did not run (``result.attribution`` is absent).
    """
    if result.attribution is None:
        return None
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for a in result.attribution:
        by_variant.setdefault(a.variant, []).append(attribution_block(a))
    others = [b for vid, bs in by_variant.items() if vid not in shown_variants for b in bs]
    return {"by_variant": by_variant, "others": others, "count": len(result.attribution)}


TOP_GROUPS = 3
"""Groups named per attributed regression in the Markdown summary (those that explain most)."""


def attribution_summary(result: RunResult) -> list[dict[str, Any]] | None:
    """One row per attributed regression for the Markdown summary; None when attribution did not run."""
    if result.attribution is None:
        return None
    rows = []
    for a in result.attribution:
        ranked = sorted(
            (g for g in a.groups if g.level != "all" and g.share is not None), key=lambda g: -(g.share or 0.0)
        )
        top = "; ".join(f"{g.name} {_pct(g.share)} {_ci(g)}".strip() for g in ranked[:TOP_GROUPS])
        checks = a.holdout.checks if a.holdout is not None else []
        held = "; ".join(f"{c.name} {_pct(c.share)} {_ci(c)}".strip() for c in checks)
        rows.append(
            {
                "variant": a.variant,
                "metric": a.metric,
                "test": a.test,
                "status": a.status.replace("_", " "),
                "gap": fmt(a.gap),
                "top": top or (a.reason or "—"),
                "held_out": held or ((a.holdout.note or "—") if a.holdout is not None else "not held out"),
                "passes": f"{a.forward_passes} / {a.budget_forward_passes}",
            }
        )
    return rows
