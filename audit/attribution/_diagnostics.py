"""Tran et al. (2022)'s explanatory diagnostics of group gaps: gradient norm and margin, dense vs variant."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from audit.attribution._layers import _modules, fresh_predictor, restorable_layers
from audit.results import GroupDiagnostic

if TYPE_CHECKING:
    from audit.suite import DefiningExamples

CITATION = "Tran et al. 2022, Pruning has a disparate impact on model accuracy (NeurIPS)"


def _margins(proba: np.ndarray) -> np.ndarray:
    if proba.shape[1] < 2:
        return np.zeros(len(proba))
    top2 = np.sort(proba, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _grad_norm(
    model: Any,
    adapter: Any,
    predictor: Any,
    texts: list[str],
    pairs: list[str] | None,
    labels: np.ndarray,
    params: list[Any],
    masks: list[Any] | None,
) -> float:
    """``||grad mean CE||_2`` over ``params`` (each gradient times its mask, when given)."""
    import torch

    enc = predictor.encode(texts, pairs)
    bs = len(enc.batches[0]["input_ids"]) if enc.batches else 1
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            for k, batch in enumerate(enc.batches):
                rows = enc.order[k * bs : k * bs + len(batch["input_ids"])]
                # a cached encoding may have been made under inference mode (a suite's scoring):
                # its tensors cannot enter a graph, copies made here can
                batch = {key: t.clone().to(predictor.device) for key, t in batch.items()}
                y = torch.as_tensor(labels[rows], dtype=torch.long, device=predictor.device)
                loss = adapter.loss(model, batch, y, reduction="sum")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for acc, g in zip(total, grads, strict=True):
                    if g is not None:
                        acc += g.detach().to(torch.float64)
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    sq = 0.0
    for i, acc in enumerate(total):
        g = acc / max(len(texts), 1)
        if masks is not None:
            g = g * masks[i]
        sq += float((g * g).sum())
    return float(np.sqrt(sq))


def diagnostics(
    *, dense: Any, variant: Any, adapter: Any, predictor: Any, examples: DefiningExamples
) -> tuple[list[GroupDiagnostic], int, str]:
    """Per group of each group column of the regression's whole set (and ``all``): gradient norm and margin.

    Returns the rows, the example passes they cost (forward for the margins, forward and
    backward for the gradients, both models) and a sentence saying what was computed.
    """
    import torch

    predictor = fresh_predictor(predictor)
    texts, pairs, labels = examples.texts, examples.text_pairs, np.asarray(examples.labels)
    n = len(texts)
    layers: list[str] = []
    p_dense = predictor.proba(dense, texts, pairs)
    p_var = predictor.proba(variant, texts, pairs)
    passes = 2 * n
    m_dense, m_var = _margins(p_dense), _margins(p_var)
    grads = getattr(adapter, "kind", "") == "classifier"
    if grads:
        layers, _, refusal = restorable_layers(dense, variant, adapter)
        grads = refusal is None and bool(layers)
    params_d = params_v = masks = None
    if grads:
        dmods, vmods = _modules(dense), _modules(variant)
        params_d = [dmods[nm].weight for nm in layers]
        params_v = [vmods[nm].weight for nm in layers]
        masks = [(w.detach() != 0).to(torch.float64) for w in params_v]
    parts: list[tuple[str, str, np.ndarray]] = [("all", "all", np.arange(n))]
    for feat, values in sorted(examples.groups.items()):
        for g in sorted(set(values.tolist())):
            parts.append((feat, str(g), np.flatnonzero(values == g)))
    rows = []
    for feat, group, idx in parts:
        row = GroupDiagnostic(
            feature=feat,
            group=group,
            n=len(idx),
            margin_dense=float(m_dense[idx].mean()) if len(idx) else None,
            margin_variant=float(m_var[idx].mean()) if len(idx) else None,
        )
        if grads and len(idx) and feat != "all":
            sub_t = [texts[i] for i in idx]
            sub_p = None if pairs is None else [pairs[i] for i in idx]
            row.grad_norm_dense = _grad_norm(dense, adapter, predictor, sub_t, sub_p, labels[idx], params_d, None)
            row.grad_norm_variant = _grad_norm(variant, adapter, predictor, sub_t, sub_p, labels[idx], params_v, masks)
            passes += 2 * len(idx)
        rows.append(row)
    if grads and rows:
        sub_all = rows[0]
        sub_all.grad_norm_dense = _grad_norm(dense, adapter, predictor, texts, pairs, labels, params_d, None)
        sub_all.grad_norm_variant = _grad_norm(variant, adapter, predictor, texts, pairs, labels, params_v, masks)
        passes += 2 * n
    what = (
        "gradient norm of each group's mean cross-entropy over the pruned Linear layers' weights (the variant's: "
        "over the weights it keeps) and mean margin (top minus runner-up class probability)"
        if grads
        else "mean margin (top minus runner-up class probability); no gradient norm: "
        + (
            "the model is not a classifier"
            if getattr(adapter, "kind", "") != "classifier"
            else "no layer to take it over"
        )
    )
    note = f"{what}, dense vs variant, per group of the whole set {examples.dataset} ({CITATION})"
    return rows, passes, note
