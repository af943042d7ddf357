"""View models: everything a template shows, precomputed from a :class:`RunResult`.

Templates only lay out what is here; they never compute. Every builder works from
the result schema alone (measurements grouped by suite and dataset, per-group values,
examples, pruning and deployment records, statistics), so a suite or record that is
absent only removes its rows; it never breaks a report.

* :func:`build_view`: the HTML transparency report.
* :func:`build_summary`: the Markdown summary for CI step summaries and PR comments.
* :func:`build_card`: the model-card fragment of one variant.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import defaultdict
from typing import Any

from audit.charts import Point, Series, Threshold, heatmap, line_chart
from audit.policy import deployment_catalog, skipped_rules
from audit.results import DatasetIdentity, Measurement, MetricInfo, RuleResult, RunResult, VariantResult

STATUS_ORDER = {"FAIL": 0, "ERROR": 1, "WARN": 2, "PASS": 3, "SKIP": 4}
STATUS_ICON = {"PASS": "✅", "WARN": "⚠️", "FAIL": "❌", "ERROR": "💥", "SKIP": "⏭️", "NO_RESULTS": "∅"}
EXIT_MEANING = {
    0: "pass (warnings allowed)",
    1: "a rule failed or errored",
    2: "interrupted",
    3: "internal error",
    4: "usage or config error",
    5: "nothing was evaluated",
}
SUITE_TITLES = {
    "performance": "In-distribution performance",
    "ood": "Out-of-distribution robustness",
    "bias": "Bias and fairness",
    "adversarial": "Adversarial robustness",
    "deployment": "Deployment: speed, size and kernel equivalence",
}
SUITE_ABSENT = {
    "ood": "No out-of-distribution suite ran: behaviour under domain shift was not measured.",
    "bias": "No bias suite ran: error-rate parity, counterfactual swaps and subgroup AUCs were not measured.",
    "adversarial": "No adversarial suite ran: robustness to word-level attacks was not measured.",
    "deployment": "No deployment record: the kernel format, equivalence with the masked model, speed and size "
    "were not measured.",
}
STANDARD_SUITES = ("performance", "ood", "bias", "adversarial")
DISPARATE_TOLERANCE = 0.02
"""A group whose loss exceeds the overall loss by more than this is flagged (Tran et al. 2022)."""
DISPARATE_MIN_N = 30
MAX_GROUP_ROWS = 30
MAX_FINDINGS = 25
MAX_EXAMPLE_ROWS = 8
MAX_EXAMPLE_COLUMNS = 8
MAX_CELL_CHARS = 240
MAX_STAT_ROWS = 200
_STALE_SKIP = re.compile(r"^rule \S+ \(.*\) skipped: ")


# -- formatting ----------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}"


def fmt_ci(m: Measurement | None, digits: int = 3) -> str:
    if m is None or m.ci_low is None or m.ci_high is None:
        return ""
    return f"[{m.ci_low:.{digits}f}, {m.ci_high:.{digits}f}]"


def _digits(info: MetricInfo | None) -> int:
    if info is None:
        return 3
    hi = info.range[1] if len(info.range) > 1 else None
    if info.unit == "x":
        return 2
    if info.unit == "%" or (hi is not None and hi > 10):
        return 1
    if hi is None and info.unit:
        return 1
    return 3


def fmt_value(value: float | None, info: MetricInfo | None = None, *, signed: bool = False) -> str:
    """A metric value with precision suited to its range and unit."""
    if value is None:
        return "—"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:+.2e}" if signed else f"{value:.2e}"
    d = _digits(info)
    return f"{value:+.{d}f}" if signed else f"{value:.{d}f}"


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def clip(text: Any, limit: int = MAX_CELL_CHARS) -> str:
    """Any example value as display text, shortened to ``limit`` characters."""
    if text is None:
        s = ""
    elif isinstance(text, str):
        s = text
    elif isinstance(text, float):
        s = f"{text:.4g}"
    else:
        s = json.dumps(text, ensure_ascii=False, default=str, sort_keys=True)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def direction_text(info: MetricInfo | None) -> str:
    if info is None or info.higher_is_better is None:
        return ""
    return "higher is better" if info.higher_is_better else "lower is better"


def direction_arrow(info: MetricInfo | None) -> str:
    if info is None or info.higher_is_better is None:
        return ""
    return "↑" if info.higher_is_better else "↓"


# -- shared helpers ------------------------------------------------------------------


def catalog(result: RunResult) -> dict[str, MetricInfo]:
    """Metric declarations of the run plus the built-in deployment metrics."""
    return {**deployment_catalog(), **result.metrics}


def metric_info(cat: dict[str, MetricInfo], metric_id: str) -> MetricInfo | None:
    suite, _, rest = metric_id.partition("/")
    return cat.get(f"{suite}/{rest.rsplit('/', 1)[-1]}")


def method_label(v: VariantResult) -> str:
    return v.point.label or v.point.method


def _worse(delta: float | None, info: MetricInfo | None, eps: float = 1e-12) -> bool:
    if delta is None or info is None or info.higher_is_better is None:
        return False
    return delta < -eps if info.higher_is_better else delta > eps


def _by_id(v: VariantResult) -> dict[str, Measurement]:
    return {m.id: m for m in v.measurements}


def _ordered_ids(result: RunResult) -> list[str]:
    ids: dict[str, None] = {}
    for v in result.all_variants():
        for m in v.measurements:
            ids.setdefault(m.id, None)
    return list(ids)


def _suite_order(names: set[str]) -> list[str]:
    known = [s for s in (*STANDARD_SUITES, "deployment") if s in names]
    return known + sorted(names - set(known))


def _worst_status(statuses: list[str]) -> str:
    return min(statuses, key=lambda s: STATUS_ORDER.get(s, 9)) if statuses else ""


def rule_row(r: RuleResult) -> dict[str, Any]:
    return {
        "status": r.status,
        "icon": STATUS_ICON.get(r.status, ""),
        "rule": r.rule,
        "variant": r.variant,
        "metric": r.metric,
        "severity": r.severity,
        "observed": fmt_value(r.observed),
        "baseline": fmt_value(r.baseline),
        "compared": fmt_value(r.compared, signed=True) if r.compared is not None else "—",
        "bound": r.bound,
        "message": r.message,
        "rationale": " ".join(r.rationale.split()),
        "waived_by": r.waived_by or "",
    }


def sorted_rules(rules: list[RuleResult]) -> list[RuleResult]:
    return sorted(rules, key=lambda r: (STATUS_ORDER.get(r.status, 9), r.rule, r.variant, r.metric))


# -- verdict -------------------------------------------------------------------------


def _recommendations(result: RunResult) -> list[dict[str, Any]]:
    """Per method: max compliant sparsity, the levels tested and why the next level fails."""
    verdict = result.verdict
    if verdict is None:
        return []
    levels: dict[str, dict[float, list[VariantResult]]] = defaultdict(lambda: defaultdict(list))
    for v in result.variants:
        levels[method_label(v)][v.point.sparsity].append(v)
    by_variant: dict[str, list[RuleResult]] = defaultdict(list)
    for r in verdict.rules:
        by_variant[r.variant].append(r)
    out = []
    for method in sorted(set(levels) | set(verdict.max_compliant_sparsity)):
        best = verdict.max_compliant_sparsity.get(method)
        tested = sorted(levels.get(method, {}))
        blocker = ""
        nxt = [s for s in tested if best is None or s > best + 1e-9]
        if nxt:
            s = nxt[0]
            for v in levels[method][s]:
                bad = [r for r in sorted_rules(by_variant.get(v.id, [])) if r.status in ("FAIL", "ERROR")]
                if bad:
                    blocker = f"at {s:.2f}: {bad[0].status} {bad[0].rule} on {v.id} ({bad[0].message})"
                    break
                if v.errors:
                    e = v.errors[0]
                    blocker = f"at {s:.2f}: {v.id} has an error in {e.suite}: {e.error_type}"
                    break
                judged = [r for r in by_variant.get(v.id, []) if r.status != "SKIP"]
                if not judged:
                    blocker = f"at {s:.2f}: no rule judged {v.id}"
                    break
        out.append(
            {
                "method": method,
                "sparsity": "none" if best is None else f"{best:.2f}",
                "passes": best is not None,
                "tested": ", ".join(f"{s:.2f}" for s in tested),
                "blocker": blocker,
            }
        )
    return out


def _matrix(result: RunResult) -> dict[str, Any] | None:
    """Rules × variants: the worst status of each rule on each variant."""
    verdict = result.verdict
    if verdict is None or not verdict.rules:
        return None
    variants = [v.id for v in result.all_variants()]
    rule_ids: dict[str, None] = {}
    cells: dict[tuple[str, str], list[RuleResult]] = defaultdict(list)
    for r in verdict.rules:
        rule_ids.setdefault(r.rule, None)
        cells[(r.rule, r.variant)].append(r)
    rows = []
    for rid in rule_ids:
        skipped_all = cells.get((rid, "*"))
        row = []
        for vid in variants:
            rs = skipped_all or cells.get((rid, vid), [])
            st = _worst_status([r.status for r in rs])
            row.append(
                {
                    "status": st,
                    "icon": STATUS_ICON.get(st, ""),
                    "title": "; ".join(f"{r.metric}: {r.message}" for r in rs) or "not applicable",
                }
            )
        severity = next((r.severity for (k, _), rs in cells.items() if k == rid for r in rs), "fail")
        rows.append({"rule": rid, "severity": severity, "cells": row})
    return {"variants": variants, "rows": rows}


def _verdict_view(result: RunResult) -> dict[str, Any] | None:
    verdict = result.verdict
    if verdict is None:
        return None
    c = verdict.counts
    judged_variants = {r.variant for r in verdict.rules if r.status != "SKIP"}
    failing_variants = {r.variant for r in verdict.rules if r.status in ("FAIL", "ERROR")}
    headline = (
        f"{c.get('FAIL', 0)} failing, {c.get('ERROR', 0)} erroring, {c.get('WARN', 0)} warning and "
        f"{c.get('PASS', 0)} passing checks on {len(judged_variants)} variant(s); "
        f"{len(failing_variants)} variant(s) fail or error"
    )
    if c.get("SKIP"):
        headline += f"; {c['SKIP']} check(s) skipped"
    return {
        "status": verdict.status,
        "icon": STATUS_ICON.get(verdict.status, ""),
        "policy": verdict.policy,
        "policy_name": verdict.policy_name or verdict.policy,
        "description": verdict.policy_description,
        "policy_fingerprint": verdict.policy_fingerprint[:12],
        "exit_code": verdict.exit_code,
        "exit_meaning": EXIT_MEANING.get(verdict.exit_code, ""),
        "evaluated_at": verdict.evaluated_at,
        "fail_on_error": verdict.fail_on_error,
        "counts": [{"status": k, "n": n} for k, n in verdict.counts.items()],
        "headline": headline,
        "max_compliant": _recommendations(result),
        "notes": list(verdict.notes),
        "waivers": [
            {
                "rule": w.rule,
                "variants": ", ".join(w.variants),
                "metric": w.metric,
                "approver": w.approver,
                "reason": w.reason,
                "expires": w.expires,
                "state": ("used" if w.used else "active, unused") if w.active else "expired",
            }
            for w in verdict.waivers
        ],
    }


# -- pruning and deployment ----------------------------------------------------------


def _variant_row(v: VariantResult) -> dict[str, Any]:
    p = v.pruning
    d = v.deployment
    heads = sum(len(h) for h in p.heads_removed.values()) if p else 0
    heads += sum(len(layer.heads_removed) for layer in p.layers) if p and not p.heads_removed else 0
    neurons = sum(p.neurons_removed.values()) if p else 0
    neurons += sum(layer.neurons_removed for layer in p.layers) if p and not p.neurons_removed else 0
    eq = d.equivalence if d else None
    speed = d.speed if d else None
    size_ratio = (
        d.weight_bytes_deployed / d.weight_bytes_dense
        if d and d.weight_bytes_dense and d.weight_bytes_deployed
        else None
    )
    return {
        "id": v.id,
        "baseline": v.is_baseline,
        "method": method_label(v),
        "params": ", ".join(f"{k}={clip(val, 40)}" for k, val in sorted(v.point.params.items())),
        "sparsity": fmt(v.point.sparsity, 2),
        "seed": v.point.seed,
        "achieved": fmt(p.achieved_sparsity, 3) if p else "—",
        "model_sparsity": fmt(p.model_sparsity, 3) if p else "—",
        "nonzero": f"{p.params_nonzero:,} / {p.params_total:,}" if p else "—",
        "criterion": p.criterion if p else "",
        "structured": ("structured" if p.structured else "unstructured") if p else "",
        "heads_removed": heads,
        "neurons_removed": neurons,
        "calibration": (
            f"{p.calibration.dataset} [{p.calibration.split}] n={p.calibration.n} seed={p.calibration.seed}"
            if p and p.calibration
            else ("none" if p else "")
        ),
        "calibration_fp": p.calibration.fingerprint[:12] if p and p.calibration else "",
        "mask_fp": (p.mask_fingerprint or "")[:12] if p else "",
        "prune_time": fmt(p.wall_time_s, 2) if p else "—",
        "formats": ", ".join(f"{k} × {n}" for k, n in sorted(d.formats.items()) if n) if d else "",
        "ran": _ran_text(d) if d else "",
        "equivalence": (
            f"max |Δlogit| {eq.max_abs_logit_diff:.2e} (tolerance {eq.tolerance:.1e}), agreement {eq.agreement:.3f}, "
            f"n={eq.n}"
            if eq
            else ""
        ),
        "tolerance_basis": (eq.tolerance_basis or "") if eq else "",
        "equivalence_ok": None if eq is None else eq.passed,
        "speedup": (
            "1.00× by construction (no sparse layer; not timed)"
            if speed and speed.identical
            else " · ".join(
                x
                for x in (
                    f"b1 {_speed_text(speed.speedup_b1, speed.speedup_b1_ci)}" if speed.speedup_b1 is not None else "",
                    f"b{speed.batch_size} {_speed_text(speed.speedup_batch, speed.speedup_batch_ci)}"
                    if speed.speedup_batch is not None and speed.batch_size != 1
                    else "",
                    f"{speed.rounds} round{'s' if speed.rounds != 1 else ''}" if speed.rounds else "",
                )
                if x
            )
            if speed
            else ""
        ),
        "latency": (
            f"{fmt(speed.latency_b1_ms_dense, 2)} → {fmt(speed.latency_b1_ms_deployed, 2)} ms "
            f"(seq {speed.seq_len}, {speed.threads} threads)"
            if speed and speed.latency_b1_ms_dense is not None
            else ""
        ),
        "size": (
            f"{fmt_bytes(d.weight_bytes_dense)} → {fmt_bytes(d.weight_bytes_deployed)}"
            + (f" ({size_ratio:.2f}×)" if size_ratio is not None else "")
            if d and (d.weight_bytes_dense or d.weight_bytes_deployed)
            else ""
        ),
        "saved_to": (d.saved_to or "") if d else "",
        "errors": [f"{e.suite}: {e.error_type}: {e.message}" for e in v.errors],
        "warnings": list(v.warnings),
        "notes": [*(p.notes if p else []), *(d.notes if d else [])],
        "wall_time": fmt(v.wall_time_s, 1),
    }


def _speed_text(value: float, ci: list[float] | None) -> str:
    return f"{value:.2f}× [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.2f}× (no CI)"


_KEPT_DENSE_TEXT = {
    "no_zeros": "no zeros",
    "above_max_density": "above max_density",
    "no_speedup": "no min_speedup win",
    "not_applicable": "no format applies",
    "forced": "forced",
}


def _ran_text(d: Any) -> str:
    """What ran, in layers: ``sparse 30 of 38 · dense 8 (no zeros 2, above max_density 6)``."""
    total = sum(d.formats.values())
    if not total:
        return ""
    sparse = sum(n for f, n in d.formats.items() if f != "dense")
    identical = d.speed is not None and d.speed.identical
    text = f"sparse {sparse} of {total}" + (" (the dense model's computation)" if identical else "")
    dense = d.formats.get("dense", 0)
    if dense:
        why = ", ".join(f"{_KEPT_DENSE_TEXT.get(k, k)} {n}" for k, n in sorted(d.kept_dense.items()))
        text += f" · dense {dense}" + (f" ({why})" if why else "")
    return text


def _layer_views(result: RunResult) -> dict[str, Any]:
    """Per-layer sparsity heatmap (layers × variants), structured removals and kernel formats."""
    pruned = [v for v in result.variants if v.pruning is not None and v.pruning.layers]
    if not pruned:
        return {"heatmap": None, "structured": None, "formats": None}
    layer_names: dict[str, None] = {}
    for v in pruned:
        for layer in v.pruning.layers:  # type: ignore[union-attr]
            layer_names.setdefault(layer.name, None)
    rows = list(layer_names)
    lookup = {(v.id, layer.name): layer for v in pruned for layer in v.pruning.layers}  # type: ignore[union-attr]
    values: list[list[float | None]] = []
    notes: list[list[str]] = []
    for name in rows:
        vrow: list[float | None] = []
        nrow: list[str] = []
        for v in pruned:
            layer = lookup.get((v.id, name))
            vrow.append(layer.achieved_sparsity if layer else None)
            extra = ""
            if layer is not None:
                extra = f" (target {layer.target_sparsity:.2f})"
                if layer.shape_after and layer.shape_after != layer.shape:
                    extra += f", shape {layer.shape} → {layer.shape_after}"
                if layer.format:
                    extra += f", {layer.format}"
            nrow.append(extra)
        values.append(vrow)
        notes.append(nrow)

    def removal(layer: Any) -> str:
        parts = []
        if layer.heads_removed:
            parts.append(f"heads {', '.join(str(h) for h in layer.heads_removed)}")
        if layer.neurons_removed:
            parts.append(f"{layer.neurons_removed} neurons")
        if layer.shape_after and layer.shape_after != layer.shape:
            parts.append(f"{'×'.join(map(str, layer.shape))} → {'×'.join(map(str, layer.shape_after))}")
        return " · ".join(parts)

    struct_vs = [v for v in pruned if any(removal(x) for x in v.pruning.layers)]  # type: ignore[union-attr]
    structured_rows = []
    for name in rows:
        cells = [removal(lookup[(v.id, name)]) if (v.id, name) in lookup else "" for v in struct_vs]
        if any(cells):
            structured_rows.append({"layer": name, "cells": cells})
    # heads removed recorded per model without per-layer detail
    for v in pruned:
        for layer, heads in v.pruning.heads_removed.items():  # type: ignore[union-attr]
            if layer not in layer_names and heads:
                if v not in struct_vs:
                    struct_vs.append(v)
                structured_rows.append(
                    {
                        "layer": layer,
                        "cells": [f"heads {', '.join(map(str, heads))}" if x is v else "" for x in struct_vs],
                    }
                )
    width = len(struct_vs)
    for r in structured_rows:
        r["cells"] += [""] * (width - len(r["cells"]))
    format_vs = [v for v in pruned if any(x.format for x in v.pruning.layers)]  # type: ignore[union-attr]
    format_rows = []
    reasons: dict[str, None] = {}
    for name in rows:
        cells = []
        for v in format_vs:
            layer = lookup.get((v.id, name))
            fmt_name = layer.format if layer is not None and layer.format else ""
            reason = layer.format_reason if layer is not None and layer.format_reason else ""
            if fmt_name and reason:
                reasons.setdefault(f"{fmt_name}: {reason}", None)
            cells.append({"format": fmt_name, "reason": reason})
        if any(c["format"] for c in cells):
            format_rows.append({"layer": name, "cells": cells})
    return {
        "heatmap": heatmap(
            title="Achieved sparsity per layer (%)", rows=rows, cols=[v.id for v in pruned], values=values, notes=notes
        ),
        "structured": ({"variants": [v.id for v in struct_vs], "rows": structured_rows} if structured_rows else None),
        "formats": (
            {"variants": [v.id for v in format_vs], "rows": format_rows, "reasons": list(reasons)}
            if format_rows
            else None
        ),
    }


# -- measurements --------------------------------------------------------------------


def _class_shares_text(shares: Any) -> str:
    """``predicted: negative 91% · positive 9%`` from a ``{class: share}`` dict (empty without one)."""
    if not isinstance(shares, dict) or not shares:
        return ""
    return "predicted: " + " · ".join(f"{k} {float(v):.0%}" for k, v in shares.items())


def _suspicious_rows(result: RunResult) -> list[dict[str, Any]]:
    return [
        {
            "variant": r["variant"],
            "metric": r["metric"],
            "delta": fmt_signed(r.get("delta")),
            "q": fmt(r.get("q_value")),
            "reason": r["reason"],
        }
        for r in result.statistics.get("suspicious_gains") or []
    ]


def _metric_table_rows(result: RunResult, ids: list[str], cat: dict[str, MetricInfo]) -> list[dict[str, Any]]:
    variants = result.all_variants()
    maps = [_by_id(v) for v in variants]
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
            p = (m.details.get("mcnemar") or {}).get("p_value") if m is not None else None
            cells.append(
                {
                    "value": fmt_value(m.value, info) if m else "—",
                    "ci": (
                        f"[{fmt_value(m.ci_low, info)}, {fmt_value(m.ci_high, info)}]"
                        if m is not None and m.ci_low is not None and m.ci_high is not None
                        else ""
                    ),
                    "delta": fmt_value(delta, info, signed=True) if delta is not None else "",
                    "worse": _worse(delta, info),
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


def _suite_sections(result: RunResult, cat: dict[str, MetricInfo]) -> list[dict[str, Any]]:
    """One section per suite (the standard ones always, absent ones marked), tables per dataset."""
    by_suite: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for mid in _ordered_ids(result):
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
    names = set(by_suite) | set(examples) | {s for s in errors if s != "pruning"} | set(STANDARD_SUITES)
    out = []
    for suite in _suite_order(names):
        present = suite in by_suite or suite in examples or suite in errors
        tables = [
            {"dataset": ds, "rows": _metric_table_rows(result, ids, cat)} for ds, ids in by_suite.get(suite, {}).items()
        ]
        out.append(
            {
                "name": suite,
                "anchor": f"suite-{suite}",
                "title": SUITE_TITLES.get(suite, f"Suite: {suite}"),
                "present": present,
                "absent_text": SUITE_ABSENT.get(suite, f"The {suite} suite did not run."),
                "tables": tables,
                "examples": [_example_table(v, rows) for v, rows in examples.get(suite, [])],
                "errors": errors.get(suite, []),
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


def _series_for(result: RunResult, mid: str) -> tuple[list[Series], float | None, list[float]]:
    base = _by_id(result.baseline).get(mid)
    dense = base.value if base is not None else None
    groups: dict[str, dict[float, list[Measurement]]] = defaultdict(lambda: defaultdict(list))
    for v in result.variants:
        m = _by_id(v).get(mid)
        if m is not None and m.value is not None:
            groups[method_label(v)][v.point.sparsity].append(m)
    levels = sorted({s for g in groups.values() for s in g})
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
        series.append(Series(method, pts))
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


def _sweep_charts(result: RunResult, cat: dict[str, MetricInfo]) -> list[dict[str, Any]]:
    """Per suite, one metric-vs-sparsity chart per metric id."""
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for mid in _ordered_ids(result):
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
            x_ticks=[0.0, *levels] if dense is not None else levels,
            value_range=(rng[0], rng[1]),  # type: ignore[arg-type]
            ylabel=mid.rsplit("/", 1)[-1],
        )
        if chart is None:
            continue
        chart["meaning"] = info.meaning if info else ""
        chart["direction"] = direction_text(info)
        chart["not_drawn"] = ", ".join(not_drawn)
        by_suite[mid.split("/", 1)[0]].append(chart)
    return [{"suite": s, "title": SUITE_TITLES.get(s, s), "charts": by_suite[s]} for s in _suite_order(set(by_suite))]


def _excess_loss(info: MetricInfo | None, base_g: float, var_g: float, base: float, var: float) -> float | None:
    """How much more a group lost than the whole set (positive: the group lost more)."""
    if info is None or info.higher_is_better is None:
        return None
    if info.higher_is_better:
        return (base_g - var_g) - (base - var)
    return (var_g - base_g) - (var - base)


def _group_views(result: RunResult, cat: dict[str, MetricInfo]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-group tables per metric and feature, and the disparate-impact findings."""
    variants = result.all_variants()
    maps = [_by_id(v) for v in variants]
    tables = []
    findings = []
    for mid in _ordered_ids(result):
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
                        cells.append({"value": "—", "delta": "", "worse": False, "flag": False, "excess": ""})
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
                    cells.append(
                        {
                            "value": fmt_value(gv.value, info),
                            "delta": fmt_value(delta, info, signed=True) if delta is not None else "",
                            "worse": _worse(delta, info),
                            "flag": flag,
                            "excess": fmt_value(excess, info, signed=True) if excess is not None else "",
                        }
                    )
                rows.append(
                    {
                        "group": g,
                        "n": n,
                        "small": bool(bg.small_n) if bg is not None else n < DISPARATE_MIN_N,
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
            feature_views.append({"feature": feat, "intersection": "&" in feat, "rows": rows, "truncated": truncated})
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


# -- protocol ------------------------------------------------------------------------


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


def _protocol(result: RunResult, cat: dict[str, MetricInfo]) -> dict[str, Any]:
    used = {mid.split("/", 1)[0] + "/" + mid.rsplit("/", 1)[-1] for mid in _ordered_ids(result)}
    metrics = [
        {
            "id": key,
            "meaning": info.meaning,
            "direction": direction_text(info) or "no better direction",
            "range": " – ".join("∞" if x is None else f"{x:g}" for x in info.range),
            "unit": info.unit,
            "citation": info.citation,
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
    }


def _truncation_cell(d: DatasetIdentity) -> str:
    """``12 (5.0%) at 64 tokens``; empty when the run did not record truncation."""
    if d.truncated is None:
        return ""
    share = d.truncated / d.n if d.n else 0.0
    return f"{d.truncated} ({share:.1%}) at {d.max_length} tokens"


def limitations(result: RunResult) -> list[str]:
    """What this run does not cover: stored limitations, skipped rules, suites not run, errors."""
    out: dict[str, None] = {}
    for line in result.limitations:
        if _STALE_SKIP.match(line):  # written by older runners; skipped rules now come from the verdict
            continue
        out.setdefault(line, None)
    for d in result.datasets:
        if d.truncation_note:
            out.setdefault(d.truncation_note, None)
    suites = {m.suite for v in result.all_variants() for m in v.measurements}
    suites |= {s.get("name") for s in result.config.get("suites", []) if isinstance(s, dict)}  # type: ignore[misc]
    for s in ("ood", "bias", "adversarial"):
        if s not in suites:
            out.setdefault(SUITE_ABSENT[s], None)
    if result.variants and not any(v.deployment for v in result.variants):
        out.setdefault(SUITE_ABSENT["deployment"], None)
    if not any(m.groups for v in result.all_variants() for m in v.measurements):
        out.setdefault("No per-group values were measured: group disparities are not covered.", None)
    for v in result.all_variants():
        for e in v.errors:
            out.setdefault(f"{v.id}: {e.suite} failed ({e.error_type}: {clip(e.message, 160)})", None)
    if result.verdict is not None:
        for line in skipped_rules(result.verdict):
            out.setdefault(line, None)
    return list(out)


# -- the HTML view -------------------------------------------------------------------


def build_view(result: RunResult) -> dict[str, Any]:
    """The HTML view model of a run."""
    cat = catalog(result)
    verdict = result.verdict
    rules = sorted_rules(verdict.rules) if verdict else []
    prov = result.provenance
    group_tables, findings = _group_views(result, cat)
    suites = _suite_sections(result, cat)
    variants = [_variant_row(v) for v in result.all_variants()]
    return {
        "title": result.title,
        "run_id": result.run_id,
        "schema_version": result.schema_version,
        "verdict": _verdict_view(result),
        "matrix": _matrix(result),
        "model": {
            "source": result.model.source,
            "architecture": result.model.architecture,
            "fingerprint": result.model.fingerprint[:16],
            "labels": ", ".join(f"{k}={v}" for k, v in result.model.labels.items()),
            "num_labels": result.model.num_labels,
            "params": f"{result.model.params_total:,}",
            "revision": result.model.revision or "",
        },
        "datasets": [
            {
                "id": d.id,
                "source": d.source,
                "split": d.split or "",
                "n": d.n,
                "fingerprint": d.fingerprint[:16],
                "columns": ", ".join(f"{k}: {clip(v, 60)}" for k, v in d.columns.items()),
                "truncated": _truncation_cell(d),
                "truncated_any": bool(d.truncated),
            }
            for d in result.datasets
        ],
        "variants": variants,
        "has_deployment": any(v.deployment for v in result.variants),
        "has_structured": any(r["heads_removed"] or r["neurons_removed"] for r in variants),
        "layers": _layer_views(result),
        "variant_ids": [v.id for v in result.all_variants()],
        "sweeps": _sweep_charts(result, cat),
        "suites": suites,
        "groups": group_tables,
        "disparate": findings[:MAX_FINDINGS],
        "disparate_more": max(0, len(findings) - MAX_FINDINGS),
        "regressions": [rule_row(r) for r in rules if r.status in ("FAIL", "ERROR", "WARN")],
        "suspicious_gains": _suspicious_rows(result),
        "rules": [rule_row(r) for r in rules],
        "protocol": _protocol(result, cat),
        "provenance": {
            "tool_version": prov.tool_version,
            "git_sha": prov.git_sha or "unknown",
            "python": prov.python,
            "platform": prov.platform,
            "seed": prov.seed,
            "threads": prov.threads if prov.threads is not None else "",
            "started_at": prov.started_at,
            "finished_at": prov.finished_at or "",
            "command": prov.command or "",
            "packages": sorted(prov.packages.items()),
            "config_fingerprint": prov.config_fingerprint[:16],
        },
        "limitations": limitations(result),
    }


# -- the Markdown summary ------------------------------------------------------------


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
    regressions = [rule_row(r) for r in rules if r.status in ("FAIL", "ERROR", "WARN")]
    key_ids = _judged_metric_ids(result)[:6]
    maps = {v.id: _by_id(v) for v in result.all_variants()}
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
        "verdict": _verdict_view(result),
        "regressions": regressions[:max_rows],
        "regressions_more": max(0, len(regressions) - max_rows),
        "key_metrics": key_ids,
        "key_rows": key_rows[: max_rows + 1],  # the dense row plus max_rows variants
        "key_rows_more": max(0, len(key_rows) - max_rows - 1),
        "n_variants": len(result.variants),
        "limitations": limitations(result),
        "ci_statement": (result.statistics.get("bootstrap") or {}).get("statement", ""),
        "suspicious_gains": _suspicious_rows(result),
    }


# -- the model card ------------------------------------------------------------------


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
    base = _by_id(result.baseline)
    rows = []
    results_meta = []
    datasets = {d.id: d for d in result.datasets}
    if chosen is not None:
        for m in chosen.measurements:
            info = metric_info(cat, m.id)
            b = base.get(m.id)
            delta = m.value - b.value if m.value is not None and b is not None and b.value is not None else None
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
                    "worse": _worse(delta, info),
                }
            )
            if m.value is not None and m.suite != "deployment":
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
        "model_name": re.sub(r"[^A-Za-z0-9._-]+", "-", result.model.source.rstrip("/").rsplit("/", 1)[-1]).strip("-.")
        or "model",
        "run_id": result.run_id,
        "tool_version": result.provenance.tool_version,
        "variant": _variant_row(chosen) if chosen is not None else None,
        "why": why,
        "verdict": _verdict_view(result),
        "variant_status": _worst_status([r.status for r in vrules if r.status != "SKIP"]) or "not judged",
        "variant_failures": [rule_row(r) for r in sorted_rules(vrules) if r.status in ("FAIL", "ERROR", "WARN")],
        "rows": rows,
        "results_meta": results_meta,
        "worst_groups": worst_groups[:12],
        "limitations": limitations(result),
    }
