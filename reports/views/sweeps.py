"""The sweep curves: per suite, each metric against sparsity, with the policy's bounds drawn."""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from typing import Any

from audit.results import Measurement, MetricInfo, RunResult
from reports.views.charts import PALETTE, Point, Series, Threshold, line_chart
from reports.views.common import by_id, direction_text, method_display, method_label, metric_info, ordered_ids
from reports.views.suite_text import suite_order, suite_text

SMALL_WIDTH, SMALL_HEIGHT = 300, 190
"""One small multiple: four to a row at the report's width."""


def method_colours(result: RunResult) -> dict[str, str]:
    """One colour per method for every chart (the shared legend), in sweep order."""
    names: dict[str, None] = {}
    for v in result.variants:
        names.setdefault(method_display(method_label(v)), None)
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def sweep_legend(result: RunResult) -> list[dict[str, str]]:
    """The shared legend of the sweep curves."""
    return [{"name": k, "colour": c} for k, c in method_colours(result).items()]


def _series_for(result: RunResult, mid: str) -> tuple[list[Series], float | None, list[float]]:
    base = by_id(result.baseline).get(mid)
    dense = base.value if base is not None else None
    groups: dict[str, dict[float, list[Measurement]]] = defaultdict(lambda: defaultdict(list))
    for v in result.variants:
        m = by_id(v).get(mid)
        if m is not None and m.value is not None:
            groups[method_display(method_label(v))][v.point.sparsity].append(m)
    levels = sorted({s for g in groups.values() for s in g})
    colours = method_colours(result)
    series = []
    for method, by_s in groups.items():
        pts = []
        if dense is not None:
            pts.append(
                Point(0.0, dense, base.ci_low if base else None, base.ci_high if base else None, "dense")  # type: ignore[union-attr]
            )
        for s, ms in sorted(by_s.items()):
            vals = [m.value for m in ms if m.value is not None]
            lows = [m.ci_low if m.ci_low is not None else m.value for m in ms]
            highs = [m.ci_high if m.ci_high is not None else m.value for m in ms]
            has_ci = any(m.ci_low is not None for m in ms) or len(ms) > 1
            mean = sum(vals) / len(vals)  # type: ignore[arg-type]
            pts.append(
                Point(
                    s,
                    mean,
                    min(x for x in lows if x is not None) if has_ci else None,
                    max(x for x in highs if x is not None) if has_ci else None,
                    f"{method} at {s:.2f}: {mean:.4g}" + (f" (mean of {len(ms)} seeds)" if len(ms) > 1 else ""),
                )
            )
        series.append(Series(method, pts, colours.get(method, "")))
    return series, dense, levels


def _thresholds_for(result: RunResult, mid: str, dense: float | None) -> tuple[list[Threshold], list[str]]:
    verdict = result.verdict
    if verdict is None:
        return [], []
    out = []
    not_drawn = []
    for rule in verdict.policy_rules:
        if not fnmatch.fnmatchcase(mid, str(rule.get("metric", ""))):
            continue
        if rule.get("aggregate", "overall") != "overall":
            not_drawn.append(f"{rule.get('id')} ({str(rule.get('aggregate')).replace('_', ' ')})")
            continue
        rng = (rule.get("applies_to") or {}).get("sparsity") or {}
        x_from, x_to = float(rng.get("min", 0.0)), float(rng.get("max", 1.0))
        comparison = rule.get("comparison", "absolute")
        use = rule.get("use", "point")
        for side in ("min", "max"):
            bound = rule.get(side)
            if bound is None:
                continue
            if comparison == "absolute":
                y = float(bound)
                how = f"{side} {bound:g}"
            elif dense is None:
                not_drawn.append(f"{rule.get('id')} (no dense value)")
                continue
            elif comparison == "delta_vs_baseline":
                y = dense + float(bound)
                how = f"dense {bound:+g}"
            else:
                y = dense * (1.0 + float(bound))
                how = f"dense × {1 + float(bound):g}"
            if use != "point":
                how += f", on {use.replace('_', ' ')}"
            out.append(Threshold(y, x_from, x_to, f"{rule.get('id')}: {how}", str(rule.get("severity", "fail"))))
    return out, not_drawn


def sweep_charts(result: RunResult, cat: dict[str, MetricInfo]) -> list[dict[str, Any]]:
    """Per suite, one metric-vs-sparsity chart per metric id."""
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for mid in ordered_ids(result):
        series, dense, levels = _series_for(result, mid)
        if not any(p.x > 0 for s in series for p in s.points):
            continue
        info = metric_info(cat, mid)
        thresholds, not_drawn = _thresholds_for(result, mid, dense)
        rng = tuple(info.range) if info and len(info.range) == 2 else (None, None)
        chart = line_chart(
            title=mid,
            series=series,
            dense=dense,
            thresholds=thresholds,
            reference=info.reference if info else None,
            x_ticks=[0.0, *levels] if dense is not None else levels,
            value_range=(rng[0], rng[1]),  # type: ignore[arg-type]
            ylabel=mid.rsplit("/", 1)[-1],
            width=SMALL_WIDTH,
            height=SMALL_HEIGHT,
            legend=False,
        )
        if chart is None:
            continue
        chart["meaning"] = info.meaning if info else ""
        chart["direction"] = direction_text(info)
        chart["not_drawn"] = ", ".join(not_drawn)
        by_suite[mid.split("/", 1)[0]].append(chart)
    return [{"suite": s, "title": suite_text(s).title or s, "charts": by_suite[s]} for s in suite_order(set(by_suite))]
