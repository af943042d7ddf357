"""Chart geometry for the HTML report: coordinates computed here, drawn by Jinja macros.

Every chart is a plain dict of numbers (already formatted) and strings; the template
turns it into inline SVG, so Jinja's autoescaping covers every label and no chart
code runs in the browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in greyscale print.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C6D31")
SEVERITY_COLOUR = {"fail": "#B3261E", "warn": "#B26A00"}
DENSE_COLOUR = "#6e7781"


def reference_label(value: float) -> str:
    """The label of a metric's reference line: its "no effect" / "unbiased" value."""
    return f"{value:g}: neutral"


def _f(x: float) -> str:
    return f"{x:.1f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 10))
        t += step
    return ticks


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as the tick step needs."""
    if step < 1e-3:
        return f"{value:.3g}"
    exp = math.floor(math.log10(step))
    mantissa = step / 10**exp
    decimals = min(6, max(0, -exp + (1 if abs(mantissa - 2.5) < 1e-9 else 0)))
    text = f"{value:.{decimals}f}"
    return "0" if text.strip("-0.") == "" else text


@dataclass
class Point:
    """One point of a series: x, y and optional interval [lo, hi]."""

    x: float
    y: float
    lo: float | None = None
    hi: float | None = None
    label: str = ""


@dataclass
class Series:
    name: str
    points: list[Point] = field(default_factory=list)
    colour: str = ""
    """Fixed colour (a shared legend across charts); empty: the palette in series order."""


@dataclass
class Threshold:
    """A horizontal bound drawn over [x_from, x_to] (in data units)."""

    y: float
    x_from: float
    x_to: float
    label: str
    severity: str = "fail"


def line_chart(
    *,
    title: str,
    series: list[Series],
    dense: float | None = None,
    thresholds: list[Threshold] | None = None,
    reference: float | None = None,
    x_ticks: list[float] | None = None,
    value_range: tuple[float | None, float | None] = (None, None),
    xlabel: str = "sparsity",
    ylabel: str = "",
    width: int = 460,
    height: int = 250,
    legend: bool = True,
) -> dict[str, Any] | None:
    """Metric-vs-sparsity chart with CI whiskers, a dense line, policy bounds and the metric's reference.

    ``reference``: the metric's "no effect" / "unbiased" value (:attr:`audit.results.MetricInfo.reference`),
    drawn as a labelled horizontal line and always inside the value axis. Returns None when there is nothing
    to draw.
    """
    thresholds = thresholds or []
    pts = [p for s in series for p in s.points]
    if not pts:
        return None
    ys = [p.y for p in pts] + [v for p in pts for v in (p.lo, p.hi) if v is not None]
    ys += [t.y for t in thresholds]
    if dense is not None:
        ys.append(dense)
    if reference is not None:
        ys.append(reference)
    lo, hi = min(ys), max(ys)
    span = hi - lo
    pad = span * 0.08 if span > 0 else (abs(hi) * 0.05 or 0.05)
    lo, hi = lo - pad, hi + pad
    rmin, rmax = value_range
    if rmin is not None:
        lo = max(lo, rmin)
    if rmax is not None:
        hi = min(hi, rmax)
    if hi <= lo:
        hi = lo + 1e-6
    xs = sorted({p.x for p in pts} | set(x_ticks or []))
    x_lo, x_hi = min(xs + [0.0]), max(xs)
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    left, right, top, bottom = 52, 12, 28, 40
    pw, ph = width - left - right, height - top - bottom

    def X(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def Y(y: float) -> float:
        return top + (hi - y) / (hi - lo) * ph

    yt = nice_ticks(lo, hi, 5)
    step = yt[1] - yt[0] if len(yt) > 1 else max(abs(hi - lo), 1e-6)
    out_series = []
    for i, s in enumerate(series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        ordered = sorted(s.points, key=lambda p: p.x)
        path = " ".join(f"{'M' if k == 0 else 'L'}{_f(X(p.x))},{_f(Y(p.y))}" for k, p in enumerate(ordered))
        out_series.append(
            {
                "name": s.name,
                "colour": colour,
                "path": path,
                "points": [
                    {
                        "x": _f(X(p.x)),
                        "y": _f(Y(p.y)),
                        "whisker": (
                            {"y1": _f(Y(max(min(p.hi, hi), lo))), "y2": _f(Y(min(max(p.lo, lo), hi)))}
                            if p.lo is not None and p.hi is not None
                            else None
                        ),
                        "label": p.label,
                    }
                    for p in ordered
                ],
            }
        )
    out_thresholds = []
    for t in thresholds:
        if not (lo <= t.y <= hi):
            continue
        x1, x2 = max(t.x_from, x_lo), min(t.x_to, x_hi)
        if x2 < x1:
            continue
        out_thresholds.append(
            {
                "x1": _f(X(x1)),
                "x2": _f(X(x2)),
                "y": _f(Y(t.y)),
                "label": t.label,
                "colour": SEVERITY_COLOUR.get(t.severity, SEVERITY_COLOUR["fail"]),
                "label_x": _f(X(x2) - 2),
                "label_y": _f(Y(t.y) - 3),
            }
        )
    return {
        "title": title,
        "width": width,
        "height": height,
        "plot": {"x": left, "y": top, "w": pw, "h": ph, "x2": left + pw, "y2": top + ph},
        "xticks": [
            {"x": _f(X(x)), "label": "dense" if x == 0 else f"{x:g}"} for x in (x_ticks if x_ticks is not None else xs)
        ],
        "yticks": [{"y": _f(Y(v)), "label": tick_label(v, step)} for v in yt if lo <= v <= hi],
        "series": out_series,
        "dense": (
            {"y": _f(Y(dense)), "label": f"dense {dense:.4g}"} if dense is not None and lo <= dense <= hi else None
        ),
        "thresholds": out_thresholds,
        "reference": (
            {
                "y": _f(Y(reference)),
                "label": reference_label(reference),
                "label_x": _f(left + pw - 3),
                # above the line, or below it where the line runs along the top of the plot
                "label_y": _f(Y(reference) + 10 if Y(reference) - top < 12 else Y(reference) - 3),
            }
            if reference is not None and lo <= reference <= hi
            else None
        ),
        "xlabel": xlabel,
        "ylabel": ylabel,
        "legend": legend,
        "xlabel_x": _f(left + pw / 2),
        "xlabel_y": _f(height - 6),
    }


def _mix(a: str, b: str, t: float) -> str:
    ca = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb, strict=True))


def sparsity_colour(value: float | None) -> str:
    """White (0 %) to dark blue (100 %); grey for unknown."""
    if value is None:
        return "#e5e5e5"
    return _mix("#f7fbff", "#08306b", max(0.0, min(1.0, value)))


def share_colour(value: float | None) -> str:
    """A share of a gap: white (0) to dark blue (1 and above); light to dark red below 0; grey for none."""
    if value is None:
        return "#e5e5e5"
    if value < 0:
        return _mix("#fff5f0", "#a50f15", min(1.0, -value))
    return _mix("#f7fbff", "#08306b", min(1.0, value))


def text_colour(value: float | None) -> str:
    return "#ffffff" if value is not None and value > 0.55 else "#1b1f24"


def heatmap(
    *,
    title: str,
    rows: list[str],
    cols: list[str],
    values: list[list[float | None]],
    notes: list[list[str]] | None = None,
    cell_w: int = 46,
    cell_h: int = 15,
    label_w: int = 300,
) -> dict[str, Any] | None:
    """Rows × columns of values in [0, 1] (per-layer sparsity per variant)."""
    if not rows or not cols:
        return None
    top = 110
    # room for the last rotated column label and for the legend
    width = max(label_w + cell_w * len(cols) + 120, label_w + 6 * 34 + 20)
    height = top + cell_h * len(rows) + 40
    cells = []
    for r in range(len(rows)):
        for c in range(len(cols)):
            v = values[r][c]
            note = notes[r][c] if notes else ""
            cells.append(
                {
                    "x": label_w + c * cell_w,
                    "y": top + r * cell_h,
                    "w": cell_w - 1,
                    "h": cell_h - 1,
                    "fill": sparsity_colour(v),
                    "text": "" if v is None else f"{v * 100:.0f}",
                    "text_colour": text_colour(v),
                    "tx": label_w + c * cell_w + (cell_w - 1) / 2,
                    "ty": top + r * cell_h + cell_h - 4,
                    "title": f"{rows[r]} · {cols[c]}: " + ("not pruned" if v is None else f"{v:.3f}") + note,
                }
            )
    legend = [
        {"x": label_w + k * 34, "y": height - 24, "fill": sparsity_colour(k / 5), "label": f"{k * 20}"}
        for k in range(6)
    ]
    return {
        "title": title,
        "width": width,
        "height": height,
        "row_labels": [
            {"x": label_w - 6, "y": top + r * cell_h + cell_h - 4, "label": name} for r, name in enumerate(rows)
        ],
        "col_labels": [
            {"x": label_w + c * cell_w + cell_w / 2, "y": top - 6, "label": name} for c, name in enumerate(cols)
        ],
        "cells": cells,
        "legend": legend,
        "legend_label_x": label_w - 6,
        "legend_y": height - 24,
    }


MAX_ROW_LABEL = 22
"""Characters of a group name shown left of its row (the full name is the label's tooltip)."""


@dataclass
class Dot:
    """One group's value with its optional interval [lo, hi]."""

    value: float
    lo: float | None = None
    hi: float | None = None
    label: str = ""


@dataclass
class DotSeries:
    """One model's values per group (dense, or a variant)."""

    name: str
    colour: str
    dots: dict[str, Dot] = field(default_factory=dict)


def group_chart(
    *,
    title: str,
    groups: list[str],
    series: list[DotSeries],
    reference: float | None = None,
    value_range: tuple[float | None, float | None] = (None, None),
    xlabel: str = "",
    width: int = 340,
    label_w: int = 120,
) -> dict[str, Any] | None:
    """A dot plot: one row per group, one dot per series with its CI as a horizontal whisker, and the
    metric's reference as a labelled vertical line. Returns None when no series has a value.
    """
    dots = [d for s in series for d in s.dots.values()]
    if not groups or not dots:
        return None
    xs = [d.value for d in dots] + [v for d in dots for v in (d.lo, d.hi) if v is not None]
    if reference is not None:
        xs.append(reference)
    lo, hi = min(xs), max(xs)
    span = hi - lo
    pad = span * 0.06 if span > 0 else (abs(hi) * 0.05 or 0.05)
    lo, hi = lo - pad, hi + pad
    rmin, rmax = value_range
    if rmin is not None:
        lo = max(lo, rmin)
    if rmax is not None:
        hi = min(hi, rmax)
    if hi <= lo:
        hi = lo + 1e-6
    slot = 7
    row_h = slot * len(series) + 6
    top, right, bottom = 24, 14, 34
    pw = width - label_w - right
    ph = row_h * len(groups)
    height = top + ph + bottom

    def X(x: float) -> float:
        return label_w + (min(max(x, lo), hi) - lo) / (hi - lo) * pw

    xt = nice_ticks(lo, hi, 5)  # at least two ticks: the step is under half the span
    step = xt[1] - xt[0] if len(xt) > 1 else max(abs(hi - lo), 1e-6)
    out_series = []
    for k, s in enumerate(series):
        out = []
        for r, g in enumerate(groups):
            d = s.dots.get(g)
            if d is None:
                continue
            cy = top + r * row_h + 3 + slot * k + slot / 2
            out.append(
                {
                    "cx": _f(X(d.value)),
                    "cy": _f(cy),
                    "whisker": (
                        {"x1": _f(X(d.lo)), "x2": _f(X(d.hi))} if d.lo is not None and d.hi is not None else None
                    ),
                    "group": g,
                    "label": d.label,
                }
            )
        out_series.append({"name": s.name, "colour": s.colour, "dots": out})
    legend_x = label_w
    legend = []
    for s in series:
        legend.append({"x": legend_x, "name": s.name, "colour": s.colour})
        legend_x += 16 + 6 * len(s.name)
    return {
        "title": title,
        "width": width,
        "height": height,
        "plot": {"x": label_w, "y": top, "w": pw, "h": ph, "x2": label_w + pw, "y2": top + ph},
        "rows": [
            {
                "y": _f(top + r * row_h + row_h / 2),
                "y0": top + r * row_h,
                "label": g if len(g) <= MAX_ROW_LABEL else g[: MAX_ROW_LABEL - 1] + "…",
                "full": g,
                "band": r % 2 == 1,
            }
            for r, g in enumerate(groups)
        ],
        "row_h": row_h,
        "xticks": [{"x": _f(X(v)), "label": tick_label(v, step)} for v in xt if lo <= v <= hi],
        "series": out_series,
        "legend": legend,
        "reference": (
            {
                "x": _f(X(reference)),
                "label": reference_label(reference),
                # centred over the line, or running inwards from it near either end of the axis
                "anchor": "start"
                if X(reference) - label_w < 30
                else "end"
                if label_w + pw - X(reference) < 30
                else "middle",
            }
            if reference is not None and lo <= reference <= hi
            else None
        ),
        "xlabel": xlabel,
        "xlabel_x": _f(label_w + pw / 2),
        "xlabel_y": _f(height - 4),
    }
