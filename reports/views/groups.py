"""The groups section: per-group tables per metric and feature, and disparate-impact findings."""

from __future__ import annotations

from typing import Any

from audit.results import GroupValue, Measurement, MetricInfo, RunResult, VariantResult
from audit.stats import SMALL_GROUP_N
from reports.views.charts import DENSE_COLOUR, Dot, DotSeries, group_chart
from reports.views.common import (
    by_id,
    direction_text,
    fmt_value,
    method_display,
    method_label,
    metric_info,
    ordered_ids,
    worse,
)
from reports.views.evidence import evidence
from reports.views.sweeps import method_colours

DISPARATE_TOLERANCE = 0.02
"""A group whose loss exceeds the overall loss by more than this is flagged (Tran et al. 2022)."""
DISPARATE_MIN_N = SMALL_GROUP_N
MAX_GROUP_ROWS = 30
MAX_FINDINGS = 25


def _excess_loss(info: MetricInfo | None, base_g: float, var_g: float, base: float, var: float) -> float | None:
    """How much more a group lost than the whole set (positive: the group lost more)."""
    if info is None or info.higher_is_better is None:
        return None
    if info.higher_is_better:
        return (base_g - var_g) - (base - var)
    return (var_g - base_g) - (var - base)


def _dot(gv: GroupValue | None, who: str, group: str, info: MetricInfo | None) -> Dot | None:
    if gv is None or gv.value is None:
        return None
    ci = f" [{fmt_value(gv.ci_low, info)}, {fmt_value(gv.ci_high, info)}]" if gv.ci_low is not None else ""
    return Dot(gv.value, gv.ci_low, gv.ci_high, f"{who} · {group}: {fmt_value(gv.value, info)}{ci} (n={gv.n})")


def group_charts(
    mid: str,
    feat: str,
    groups: list[str],
    variants: list[VariantResult],
    ms: list[Measurement | None],
    info: MetricInfo | None,
    colours: dict[str, str],
) -> list[dict[str, Any]]:
    """For a metric that declares a reference value: per variant, dense and the variant per group (value and
    CI as stored in each measurement's groups), the reference drawn; nothing for a metric without one.
    """
    if info is None or info.reference is None:
        return []
    base = ms[0]
    rng = tuple(info.range) if len(info.range) == 2 else (None, None)
    charts = []
    for v, m in zip(variants[1:], ms[1:], strict=True):
        if m is None or not m.groups.get(feat):
            continue
        series = []
        for who, meas, colour in (
            ("dense", base, DENSE_COLOUR),
            (v.id, m, colours.get(method_display(method_label(v)), "#0072B2")),
        ):
            gvs = meas.groups.get(feat, {}) if meas is not None else {}
            dots = {g: d for g in groups if (d := _dot(gvs.get(g), who, g, info)) is not None}
            series.append(DotSeries(who, colour, dots))
        chart = group_chart(
            title=f"{mid} by {feat}: dense vs {v.id}",
            groups=groups,
            series=series,
            reference=info.reference,
            value_range=(rng[0], rng[1]),  # type: ignore[arg-type]
            xlabel=mid.rsplit("/", 1)[-1],
        )
        if chart is not None:
            charts.append(chart)
    return charts


def policy_min_group_n(result: RunResult) -> int:
    """The largest ``min_group_n`` of the policy's rules: groups under it are ignored by some rule."""
    rules = result.verdict.policy_rules if result.verdict is not None else []
    return max((int(r.get("min_group_n") or 0) for r in rules), default=0)


def group_views(result: RunResult, cat: dict[str, MetricInfo]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-group tables per metric and feature, and the disparate-impact findings."""
    min_n = policy_min_group_n(result)
    variants = result.all_variants()
    maps = [by_id(v) for v in variants]
    tables = []
    findings = []
    colours = method_colours(result)
    for mid in ordered_ids(result):
        ms = [mm.get(mid) for mm in maps]
        if not any(m is not None and m.groups for m in ms):
            continue
        info = metric_info(cat, mid)
        base = ms[0]
        features: dict[str, None] = {}
        for m in ms:
            if m is not None:
                for f in m.groups:
                    features.setdefault(f, None)
        feature_views = []
        for feat in features:
            groups: dict[str, None] = {}
            for m in ms:
                if m is not None:
                    for g in m.groups.get(feat, {}):
                        groups.setdefault(g, None)
            rows = []
            for g in groups:
                bg = base.groups.get(feat, {}).get(g) if base is not None else None
                cells = []
                worst_excess = None
                n = bg.n if bg is not None else 0
                for v, m in zip(variants[1:], ms[1:], strict=True):
                    gv = m.groups.get(feat, {}).get(g) if m is not None else None
                    if gv is None or gv.value is None:
                        cells.append(
                            {"value": "—", "delta": "", "worse": False, "flag": False, "excess": ""}
                            | {"q": "", "delta_ci": ""}
                        )
                        continue
                    n = n or gv.n
                    delta = gv.value - bg.value if bg is not None and bg.value is not None else None
                    excess = None
                    if (
                        bg is not None
                        and bg.value is not None
                        and base is not None
                        and base.value is not None
                        and m is not None
                        and m.value is not None
                    ):
                        excess = _excess_loss(info, bg.value, gv.value, base.value, m.value)
                    flag = excess is not None and excess > DISPARATE_TOLERANCE and gv.n >= DISPARATE_MIN_N
                    if excess is not None and (worst_excess is None or excess > worst_excess):
                        worst_excess = excess
                    if flag:
                        findings.append(
                            {
                                "variant": v.id,
                                "metric": mid,
                                "feature": feat,
                                "group": g,
                                "n": gv.n,
                                "dense": fmt_value(bg.value, info),  # type: ignore[union-attr]
                                "pruned": fmt_value(gv.value, info),
                                "group_change": fmt_value(delta, info, signed=True),
                                "overall_change": fmt_value(m.value - base.value, info, signed=True),  # type: ignore[union-attr,operator]
                                "excess": fmt_value(excess, info, signed=True),
                                "_sort": -(excess or 0.0),
                            }
                        )
                    rec = ((m.details.get("paired_groups") or {}).get(feat) or {}).get(g) if m is not None else None
                    ev = evidence(m, info, where=(feat, g)) if isinstance(rec, dict) else None
                    cells.append(
                        {
                            # the group's own paired test, where the suite ran one: CI and q beside the change
                            "q": ev["q"] if ev is not None else "",
                            "delta_ci": ev["ci"] if ev is not None else "",
                            "value": fmt_value(gv.value, info),
                            "delta": fmt_value(delta, info, signed=True) if delta is not None else "",
                            "worse": worse(delta, info),
                            "flag": flag,
                            "excess": fmt_value(excess, info, signed=True) if excess is not None else "",
                        }
                    )
                rows.append(
                    {
                        "group": g,
                        "n": n,
                        "small": bool(bg.small_n) if bg is not None else n < DISPARATE_MIN_N,
                        "under_min": f"n={n} < policy min_group_n {min_n}" if n < min_n else "",
                        "under_min_short": f"n<{min_n}" if n < min_n else "",
                        "dense": fmt_value(bg.value, info) if bg is not None else "—",
                        "dense_ci": (
                            f"[{fmt_value(bg.ci_low, info)}, {fmt_value(bg.ci_high, info)}]"
                            if bg is not None and bg.ci_low is not None and bg.ci_high is not None
                            else ""
                        ),
                        "cells": cells,
                        "_sort": -(worst_excess if worst_excess is not None else -1e9),
                    }
                )
            truncated = 0
            if len(rows) > MAX_GROUP_ROWS:
                rows.sort(key=lambda r: r["_sort"])
                truncated = len(rows) - MAX_GROUP_ROWS
                rows = rows[:MAX_GROUP_ROWS]
            for r in rows:
                r.pop("_sort")
            charts = group_charts(mid, feat, [r["group"] for r in rows], variants, ms, info, colours)
            feature_views.append(
                {"feature": feat, "intersection": "&" in feat, "rows": rows, "truncated": truncated, "charts": charts}
            )
        tables.append(
            {
                "id": mid,
                "meaning": info.meaning if info else "",
                "direction": direction_text(info),
                "variants": [v.id for v in variants[1:]],
                "features": feature_views,
            }
        )
    findings.sort(key=lambda f: (f["_sort"], f["variant"], f["metric"], f["feature"], f["group"]))
    for f in findings:
        f.pop("_sort")
    return tables, findings
