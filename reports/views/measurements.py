"""The per-suite sections: a metric table per dataset, examples and errors, for every suite.

Which suites always get a section, their titles and their "did not run" text come from
the suites' specs (:mod:`reports.views.suite_text`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from audit.results import MetricInfo, RunResult, VariantResult
from reports.views.common import (
    by_id,
    clip,
    direction_arrow,
    direction_text,
    fmt_value,
    metric_info,
    ordered_ids,
    worse,
)
from reports.views.evidence import evidence
from reports.views.suite_text import model_kind, registered_suites, suite_order, suite_text

LONG_ROWS = 12
"""A suite section (or its dataset tables) with more metric rows than this starts closed."""
MAX_EXAMPLE_ROWS = 8
MAX_EXAMPLE_COLUMNS = 8


def _class_shares_text(shares: Any) -> str:
    """``predicted: negative 91% · positive 9%`` from a ``{class: share}`` dict (empty without one)."""
    if not isinstance(shares, dict) or not shares:
        return ""
    return "predicted: " + " · ".join(f"{k} {float(v):.0%}" for k, v in shares.items())


def _metric_table_rows(result: RunResult, ids: list[str], cat: dict[str, MetricInfo]) -> list[dict[str, Any]]:
    variants = result.all_variants()
    maps = [by_id(v) for v in variants]
    base = maps[0]
    rows = []
    for mid in ids:
        info = metric_info(cat, mid)
        b = base.get(mid)
        cells = []
        for v, mm in zip(variants, maps, strict=True):
            m = mm.get(mid)
            delta = None
            if m is not None and b is not None and m.value is not None and b.value is not None and not v.is_baseline:
                delta = m.value - b.value
            p = (m.details.get("paired") or {}).get("p_value") if m is not None else None
            ev = evidence(m, info) if m is not None and not v.is_baseline else None
            paired = ev is not None and ev["kind"] == "paired"
            cells.append(
                {
                    "value": fmt_value(m.value, info) if m else "—",
                    "ci": (
                        f"[{fmt_value(m.ci_low, info)}, {fmt_value(m.ci_high, info)}]"
                        if m is not None and m.ci_low is not None and m.ci_high is not None
                        else ""
                    ),
                    "delta": fmt_value(delta, info, signed=True) if delta is not None else "",
                    # the paired record's CI, q-value and n beside the change, where the suite ran a paired test
                    "delta_ci": ev["ci"] if paired and delta is not None else "",
                    "q": ev["q"] if paired else "",
                    "paired_n": ev["n"] if paired else "",
                    "worse": worse(delta, info),
                    "p": f"p={p:.3g}" if isinstance(p, (int, float)) else "",
                    "n": m.n if m else "",
                    "pred": (
                        _class_shares_text(m.details.get("predicted_classes"))
                        if m is not None and m.metric == "accuracy"
                        else ""
                    ),
                    "suspicious": str(m.details.get("suspicious_gain") or "") if m is not None else "",
                }
            )
        rows.append(
            {
                "id": mid,
                "metric": mid.rsplit("/", 1)[-1],
                "meaning": info.meaning if info else "",
                "direction": direction_text(info),
                "arrow": direction_arrow(info),
                "cells": cells,
            }
        )
    return rows


def suite_sections(result: RunResult, cat: dict[str, MetricInfo]) -> list[dict[str, Any]]:
    """One section per suite (the standard ones always, absent ones marked), tables per dataset."""
    by_suite: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for mid in ordered_ids(result):
        suite, _, rest = mid.partition("/")
        by_suite[suite][rest.rpartition("/")[0]].append(mid)
    examples: dict[str, list[tuple[VariantResult, list[dict[str, Any]]]]] = defaultdict(list)
    for v in result.all_variants():
        for suite, rows in v.examples.items():
            if rows:
                examples[suite].append((v, rows))
    errors: dict[str, list[str]] = defaultdict(list)
    for v in result.all_variants():
        for e in v.errors:
            errors[e.suite].append(f"{v.id}: {e.error_type}: {e.message}")
    always = {t.name for t in registered_suites(model_kind(result)) if t.always}
    names = set(by_suite) | set(examples) | {s for s in errors if s != "pruning"} | always
    out = []
    for suite in suite_order(names):
        text = suite_text(suite)
        present = suite in by_suite or suite in examples or suite in errors
        tables = [
            {"dataset": ds, "rows": _metric_table_rows(result, ids, cat)} for ds, ids in by_suite.get(suite, {}).items()
        ]
        for t in tables:
            t["n_worse"] = sum(c["worse"] for r in t["rows"] for c in r["cells"])
        if len(tables) > 1:  # worst first: the dataset with the most changes for the worse; the rest start closed
            tables.sort(key=lambda t: -t["n_worse"])
        n_rows = sum(len(t["rows"]) for t in tables)
        for i, t in enumerate(tables):
            t["open"] = i == 0 or n_rows <= LONG_ROWS
        out.append(
            {
                "name": suite,
                "anchor": f"suite-{suite}",
                "title": text.heading,
                "present": present,
                "absent_text": text.absent_text,
                "tables": tables,
                "examples": [_example_table(v, rows) for v, rows in examples.get(suite, [])],
                "errors": errors.get(suite, []),
                "task_formats": result.task_formats.get(suite, []),
                "count": f"{n_rows} rows" if present else "did not run",
                "open": n_rows <= LONG_ROWS and len(examples.get(suite, [])) <= 1,
            }
        )
    return out


def _example_table(v: VariantResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
    cols: dict[str, None] = {}
    for r in rows:
        for k in r:
            cols.setdefault(str(k), None)
    columns = list(cols)[:MAX_EXAMPLE_COLUMNS]
    shown = rows[:MAX_EXAMPLE_ROWS]
    return {
        "variant": v.id,
        "columns": columns,
        "rows": [[clip(r.get(c)) for c in columns] for r in shown],
        "more": max(0, len(rows) - len(shown)),
        "hidden_columns": max(0, len(cols) - len(columns)),
    }
