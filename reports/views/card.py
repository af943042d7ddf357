"""The model card's view model: one variant (by default the recommended one) against the dense model."""

from __future__ import annotations

import re
from typing import Any

from audit.config_zero_shot import describe_zero_shot
from audit.registry import stage_names
from audit.results import RunResult, VariantResult
from reports.views.allocation import allocation_summary
from reports.views.common import by_id, catalog, fmt_value, method_label, metric_info, sorted_rules, worse, worst_status
from reports.views.evidence import evidence
from reports.views.groups import DISPARATE_MIN_N
from reports.views.limitations import limitations
from reports.views.regressions import regression_rows
from reports.views.variants import variant_row
from reports.views.verdict import verdict_view


def recommended_variant(result: RunResult) -> VariantResult | None:
    """The variant a release engineer would ship: the method with the highest max
    compliant sparsity, at that sparsity, lowest seed. None without a compliant one.
    """
    verdict = result.verdict
    if verdict is None:
        return None
    best: tuple[float, str] | None = None
    for method, s in verdict.max_compliant_sparsity.items():
        if s is not None and (best is None or s > best[0]):
            best = (s, method)
    if best is None:
        return None
    cands = [v for v in result.variants if method_label(v) == best[1] and abs(v.point.sparsity - best[0]) < 1e-9]
    return min(cands, key=lambda v: v.point.seed) if cands else None


def build_card(result: RunResult, variant_id: str | None = None) -> dict[str, Any]:
    """View of the model-card fragment for ``variant_id`` (default: :func:`recommended_variant`)."""
    from audit.errors import UsageError

    cat = catalog(result)
    stages = stage_names()
    if variant_id is not None:
        chosen = next((v for v in result.variants if v.id == variant_id), None)
        if chosen is None:
            raise UsageError(
                f"no variant {variant_id!r} in these results",
                hint="variants: " + ", ".join(v.id for v in result.variants),
            )
        why = "chosen explicitly"
    else:
        chosen = recommended_variant(result)
        why = "highest sparsity that passes every rule of the policy" if chosen is not None else ""
    base = by_id(result.baseline)
    rows = []
    results_meta = []
    datasets = {d.id: d for d in result.datasets}
    if chosen is not None:
        for m in chosen.measurements:
            info = metric_info(cat, m.id)
            b = base.get(m.id)
            delta = m.value - b.value if m.value is not None and b is not None and b.value is not None else None
            ev = evidence(m, info)
            rows.append(
                {
                    "id": m.id,
                    "dense": fmt_value(b.value, info) if b is not None else "—",
                    "pruned": fmt_value(m.value, info),
                    "ci": (
                        f"[{fmt_value(m.ci_low, info)}, {fmt_value(m.ci_high, info)}]"
                        if m.ci_low is not None and m.ci_high is not None
                        else ""
                    ),
                    "delta": fmt_value(delta, info, signed=True) if delta is not None else "",
                    # the paired change with its CI, q-value and n, where the suite ran a paired test
                    "evidence": ev["text"] if ev["kind"] == "paired" else "",
                    "n": ev["n"],
                    "worse": worse(delta, info),
                }
            )
            if m.value is not None and m.suite not in stages:  # a stage's numbers are not evaluation results
                ds = datasets.get(m.dataset)
                results_meta.append(
                    {
                        "suite": m.suite,
                        "dataset": m.dataset,
                        "split": ds.split if ds is not None else None,
                        "metric": m.metric,
                        "value": round(m.value, 4),
                    }
                )
    verdict = result.verdict
    vrules = [r for r in (verdict.rules if verdict else []) if chosen is not None and r.variant == chosen.id]
    worst_groups = []
    if chosen is not None:
        for m in chosen.measurements:
            info = metric_info(cat, m.id)
            if not m.groups or info is None or info.higher_is_better is None:
                continue
            for feat, groups in m.groups.items():
                vals = [(g, gv) for g, gv in groups.items() if gv.value is not None and gv.n >= DISPARATE_MIN_N]
                if not vals:
                    continue
                g, gv = (min if info.higher_is_better else max)(vals, key=lambda t: t[1].value)  # type: ignore[arg-type,return-value]
                bg = base.get(m.id).groups.get(feat, {}).get(g) if base.get(m.id) else None  # type: ignore[union-attr]
                worst_groups.append(
                    {
                        "metric": m.id,
                        "feature": feat,
                        "group": g,
                        "n": gv.n,
                        "dense": fmt_value(bg.value if bg else None, info),
                        "pruned": fmt_value(gv.value, info),
                    }
                )
    return {
        "title": result.title,
        "model": result.model.source,
        "zero_shot": describe_zero_shot(result.config),
        "model_name": re.sub(r"[^A-Za-z0-9._-]+", "-", result.model.source.rstrip("/").rsplit("/", 1)[-1]).strip("-.")
        or "model",
        "run_id": result.run_id,
        "tool_version": result.provenance.tool_version,
        "variant": variant_row(chosen) if chosen is not None else None,
        "why": why,
        "verdict": verdict_view(result),
        "variant_status": worst_status([r.status for r in vrules if r.status != "SKIP"]) or "not judged",
        "variant_failures": regression_rows(sorted_rules(vrules), result, cat),
        "rows": rows,
        "results_meta": results_meta,
        "worst_groups": worst_groups[:12],
        # recorded by the run from each suite's params (SuiteSpec.task_formats): the card names what was scored
        "task_formats": [{"suite": k, "formats": v} for k, v in result.task_formats.items() if v],
        "limitations": limitations(result),
        "allocation": allocation_summary(result),
    }
