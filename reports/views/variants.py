"""The pruning and deployment sections: one row per variant, per-layer sparsity, removals and formats."""

from __future__ import annotations

import math
import re
from typing import Any

from audit.results import MetricInfo, PruningRecord, RunResult, VariantResult
from reports.views.charts import heatmap
from reports.views.common import (
    by_id,
    clip,
    fmt,
    fmt_bytes,
    fmt_value,
    method_display,
    method_label,
    metric_info,
    worse,
)

HEADLINE_METRICS = 6
"""The comparison table shows at most this many headline metrics (the first of each suite)."""


def variant_row(v: VariantResult) -> dict[str, Any]:
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
        "method": method_display(method_label(v)),
        "method_key": method_label(v),
        # unset params (an unstructured wanda's n and m) are not the user's words: not shown
        "params": ", ".join(f"{k}={clip(val, 40)}" for k, val in sorted(v.point.params.items()) if val is not None),
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
        "ran": ran_text(d) if d else "",
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
        "profile": profile_view(p.profile) if p and p.profile else None,
        "training": training_view(p.training) if p and p.training else None,
        "activation": activation_view(p) if p and p.activation else None,
        "kind": variant_kind(v),
        "weights": weights_text(p, d.formats if d else None),
        "size_bytes": f"{d.weight_bytes_deployed:,} B" if d and d.weight_bytes_deployed else "",
        "size_ratio": f"{size_ratio:.2f}×" if size_ratio is not None else "",
    }


def variant_kind(v: VariantResult) -> str:
    """``dense``, ``pruned`` (``pruned, structured``), ``quantized``, ``hybrid`` (pruned, then quantized)
    or ``activation-sparse`` (gated activations, weights unchanged),
    from the variant's records: a layer with a ``quant`` record was quantized; ``params.prune`` names
    the pruner a hybrid ran first.
    """
    p = v.pruning
    if v.is_baseline:
        return "dense"
    if p is None:
        return "—"
    if p.activation is not None:
        return "activation-sparse"
    if any(layer.quant is not None for layer in p.layers):
        return "hybrid" if p.params.get("prune") else "quantized"
    return "pruned, structured" if p.structured else "pruned"


def _float_bits(layer: Any) -> str:
    """``32-bit float``: the bits per weight of a layer stored densely, as deployment counted its bytes."""
    shape = layer.shape_after or layer.shape  # a structured layer's dense bytes are of its smaller shape
    weights = math.prod(shape) if shape else 0
    return f"{round(8 * layer.bytes_dense / weights)}-bit float" if layer.bytes_dense and weights else ""


def _bits(layer: Any) -> str:
    return f"int{layer.quant.bits}" if layer.quant is not None else _float_bits(layer)


def weights_text(p: PruningRecord | None, formats: dict[str, int] | None) -> str:
    """How the variant's Linear weights are stored, from its layer records: ``int8_dynamic int8 × 12``,
    ``csr 32-bit float × 2 · dense 32-bit float × 4`` (the deployed format and bits, layers per kind);
    the formats alone where the layers carry no format.
    """
    kinds: dict[str, int] = {}
    for layer in p.layers if p else []:
        if not layer.format:
            continue
        key = " ".join(x for x in (layer.format, _bits(layer)) if x)
        kinds[key] = kinds.get(key, 0) + 1
    if kinds:
        return " · ".join(f"{k} × {n}" for k, n in sorted(kinds.items()))
    return ", ".join(f"{k} × {n}" for k, n in sorted((formats or {}).items()) if n)


def headline_metrics(result: RunResult) -> list[str]:
    """The first metric of each suite the dense model reports (deployment aside), at most
    :data:`HEADLINE_METRICS`: the comparison's columns.
    """
    from audit.deploy.spec import SUITE as DEPLOYMENT

    seen: dict[str, str] = {}
    for m in result.baseline.measurements:
        if m.suite != DEPLOYMENT and m.value is not None:
            seen.setdefault(m.suite, m.id)
    return list(seen.values())[:HEADLINE_METRICS]


def comparison_view(result: RunResult, rows: list[dict[str, Any]], cat: dict[str, MetricInfo]) -> dict[str, Any] | None:
    """Pruning, quantization and hybrids side by side: per variant its kind, stored weights, size
    as deployed (recorded when it was measured), speed and the headline metrics' change vs dense.
    ``rows``: the :func:`variant_row` of every variant, dense first. None without a variant.
    """
    if not result.variants:
        return None
    ids = headline_metrics(result)
    base = by_id(result.baseline)
    dense_size = next((v.deployment.weight_bytes_dense for v in result.variants if v.deployment), 0)
    dense_weights = next((_dense_weights(v.pruning) for v in result.variants if v.pruning), "")
    out = []
    for v, row in zip(result.all_variants(), rows, strict=True):
        mm = by_id(v)
        cells = []
        for mid in ids:
            info, m, b = metric_info(cat, mid), mm.get(mid), base.get(mid)
            if v.is_baseline:
                cells.append({"text": fmt_value(b.value, info) if b else "—", "worse": False})
                continue
            delta = m.value - b.value if m and b and m.value is not None and b.value is not None else None
            cells.append({"text": fmt_value(delta, info, signed=True), "worse": worse(delta, info)})
        out.append(
            {
                "id": v.id,
                "kind": row["kind"],
                "achieved": "0.000" if v.is_baseline else row["achieved"],
                "weights": dense_weights if v.is_baseline else row["weights"],
                "size_bytes": f"{dense_size:,} B" if v.is_baseline and dense_size else row["size_bytes"],
                "size_ratio": "1.00×" if v.is_baseline and dense_size else row["size_ratio"],
                "speedup": "" if v.is_baseline else row["speedup"],
                "equivalence_ok": row["equivalence_ok"],
                "cells": cells,
            }
        )
    return {"metrics": [{"id": mid, "metric": mid} for mid in ids], "rows": out}


def _dense_weights(p: PruningRecord | None) -> str:
    """The dense model's Linear weights, from a variant's layer records (their dense bytes per weight)."""
    bits = {_float_bits(layer) for layer in (p.layers if p else [])} - {""}
    n = len(p.layers) if p else 0
    return f"dense {bits.pop()} × {n}" if len(bits) == 1 else (f"dense × {n}" if n else "dense")


def training_view(t: Any) -> dict[str, str]:
    """How a method that fine-tunes while it prunes trained (schedule, steps, data, teacher), as text."""
    losses = f"{t.loss_first:.4f} → {t.loss_last:.4f}" if t.loss_first is not None and t.loss_last is not None else "—"
    return {
        "procedure": t.procedure,
        "schedule": ", ".join(f"{s:.3f}" for s in t.schedule),
        "steps": f"{t.optimizer_steps} steps on {t.examples} examples (lr {t.learning_rate:g}"
        + (f", weight decay {t.weight_decay:g}" if t.weight_decay else "")
        + ")",
        "objective": t.objective,
        "teacher": t.teacher or "none (labels only)",
        "rewind": "" if t.rewind_step is None else ("to the weights as given" if t.rewind_step == 0
                                                    else f"to step {t.rewind_step} of the first round"),
        "losses": losses,
        "summary": f"{t.procedure}: {t.optimizer_steps} fine-tuning steps, schedule "
        + ", ".join(f"{s:.3f}" for s in t.schedule)
        + f"; {t.objective}",
    }  # fmt: skip


def activation_view(p: PruningRecord) -> dict[str, str]:
    """An activation-sparsity variant's gates, as text: mode, target, what calibration reached, the thresholds."""
    a = p.activation
    assert a is not None
    thresholds = [layer.activation.threshold for layer in p.layers if layer.activation is not None]
    where = "each layer's input" if a.mode == "teal" else "each gated MLP's activation output"
    span = f"{min(thresholds):.3g} – {max(thresholds):.3g}" if thresholds else "—"
    return {
        "mode": a.mode,
        "where": where,
        "target": f"{a.target:.0%}",
        "calibrated": f"{a.calibrated_sparsity:.1%}",
        "gates": str(a.gates),
        "thresholds": span,
        "kernel": f"calls of ≤ {a.max_tokens} token(s) skip zero inputs (pa_act_mm); longer calls: GEMM on the "
        "gated input",
        "summary": f"{a.mode}: {where} gated to {a.target:.0%} activation sparsity ({a.calibrated_sparsity:.1%} on "
        f"calibration, {a.gates} gates, thresholds {span}); weights unchanged",
    }


def profile_view(profile: Any) -> dict[str, Any]:
    """A layer-wise sparsity profile's per-block table (OWL: D_l, S_l, achieved)."""
    settings = f" (M {profile.M:g}, λ {profile.lambda_:g})" if profile.M is not None else ""
    return {
        "name": profile.name,
        "summary": f"{profile.name}{settings}: weighted mean of S_l "
        f"{profile.weighted_target:.6f} for target {profile.target_sparsity:g}, achieved "
        f"{profile.achieved_sparsity:.4f}",
        "blocks": [
            {
                "block": b.block,
                "weights": f"{b.weights:,}",
                "layers": b.layers,
                "outlier_ratio": f"{100 * b.outlier_ratio:.3f} %" if b.outlier_ratio is not None else "—",
                "target": fmt(b.target_sparsity, 4),
                "achieved": fmt(b.achieved_sparsity, 4),
            }
            for b in profile.blocks
        ],
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


def ran_text(d: Any) -> str:
    """What ran, in layers: ``sparse 30 of 38 · dense 8 (no zeros 2, above max_density 6)``.

    A layer with a format per regime (``bitmap|kernel``, ``bitmap|dense``) is sparse in at least one
    regime and counts as sparse; how many there are is said.
    """
    total = sum(d.formats.values())
    if not total:
        return ""
    sparse = sum(n for f, n in d.formats.items() if f != "dense")
    identical = d.speed is not None and d.speed.identical
    text = f"sparse {sparse} of {total}" + (" (the dense model's computation)" if identical else "")
    per_regime = sum(n for f, n in d.formats.items() if "|" in f)  # <decode>|<prefill> (deploy.regime_split_tokens)
    if per_regime:
        text += f" ({per_regime} with a format per regime, decode|prefill)"
    dense = d.formats.get("dense", 0)
    if dense:
        why = ", ".join(f"{_KEPT_DENSE_TEXT.get(k, k)} {n}" for k, n in sorted(d.kept_dense.items()))
        text += f" · dense {dense}" + (f" ({why})" if why else "")
    return text


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def reason_kind(reason: str) -> str:
    """What a kernel reason decides, without its figures: its first clause with every number masked.

    ``fastest measured: kernel 1.35x at 128 tokens (205 µs vs dense 277 µs); other candidates: ...``
    and the same text with other timings are one kind of reason.
    """
    return _NUMBER.sub("#", reason.split(";", 1)[0]).strip()


def reason_rows(
    reasons: dict[tuple[str, str], tuple[dict[str, None], dict[str, None]]], n_variants: int
) -> list[dict[str, Any]]:
    """One row per distinct reason (format and what it decides, figures aside), with the layers
    and variants it covers, most layers first; each layer's own figures stay in the per-layer table.
    """
    kinds: dict[tuple[str, str], dict[str, Any]] = {}
    for (fmt_name, reason), (layers, variants) in reasons.items():
        row = kinds.setdefault(
            (fmt_name, reason_kind(reason)),
            {"format": fmt_name, "reason": reason.split(";", 1)[0].strip(), "texts": 0, "layers": {}, "variants": {}},
        )
        row["texts"] += 1
        row["layers"].update(layers)
        row["variants"].update(variants)
    out = [
        {
            "format": row["format"],
            "reason": row["reason"],
            "similar": row["texts"] - 1,
            "n_layers": len(row["layers"]),
            "layers": clip(", ".join(row["layers"])),
            "variants": "all" if len(row["variants"]) == n_variants else ", ".join(row["variants"]),
        }
        for row in kinds.values()
    ]
    out.sort(key=lambda r: -r["n_layers"])
    return out


def layer_views(result: RunResult) -> dict[str, Any]:
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
    reasons: dict[tuple[str, str], tuple[dict[str, None], dict[str, None]]] = {}
    for name in rows:
        cells = []
        for v in format_vs:
            layer = lookup.get((v.id, name))
            fmt_name = layer.format if layer is not None and layer.format else ""
            reason = layer.format_reason if layer is not None and layer.format_reason else ""
            if fmt_name and reason:
                layers, variants = reasons.setdefault((fmt_name, reason), ({}, {}))
                layers.setdefault(name, None)
                variants.setdefault(v.id, None)
            cells.append({"format": fmt_name, "reason": reason})
        if any(c["format"] for c in cells):
            format_rows.append({"layer": name, "cells": cells})
    return {
        "heatmap": heatmap(
            title="Achieved sparsity per layer (%)", rows=rows, cols=[v.id for v in pruned], values=values, notes=notes
        ),
        "structured": ({"variants": [v.id for v in struct_vs], "rows": structured_rows} if structured_rows else None),
        "formats": (
            {
                "variants": [v.id for v in format_vs],
                "rows": format_rows,
                "reasons": reason_rows(reasons, len(format_vs)),
            }
            if format_rows
            else None
        ),
    }
