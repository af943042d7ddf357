"""Equivalence proof: the deployed model against its masked-dense reference on a probe batch.

The tolerance scales with the logits (:func:`scaled_tolerance`)::

    atol = c * eps * max(1, max|reference logit|) * sqrt(K * D)

Why: a deployed sparse layer computes the same dot products as its masked-dense
``nn.Linear`` in another summation order. The probabilistic rounding-error bound for a
length-K dot product (Higham & Mary, SIAM J. Sci. Comput. 2019) is of order
``sqrt(K) * eps`` relative to the layer's output scale; the D sparse layers of a model
round independently, so their errors add in quadrature (``sqrt(D)``); LayerNorm keeps
the error relative to the hidden state, and the logits inherit that relative error, so
the absolute bound scales with the logits (floored at 1, since a near-zero logit vector
says nothing about the hidden scale). K is the largest ``in_features`` of a sparse layer,
D the number of sparse layers, eps the machine epsilon of the weights' dtype (1.19e-7
for fp32). Measured (``bench/speed_repeat.py --dlogit``, magnitude 50 % and 90 %, formats
kernel and csr, random-token probes): max |Δlogit| / (eps * max|logit| * sqrt(K * D))
was at most 0.10 on a tiny BERT (K=64, D=12-14) and 0.07 on MiniLM-L6 (K=1536, D=36-38);
relative to the logits at most 2e-6. ``c = 2`` (``deploy.tolerance_factor``) leaves a
20x margin over the worst of these (more where the floor of 1 applies); a fixed
``deploy.tolerance`` overrides the rule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from audit.results import EquivalenceRecord


class EquivalenceError(RuntimeError):
    """The deployed model does not compute what the masked-dense model computes."""


@torch.inference_mode()
def probe_logits(model: Any, batches: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """Logits of ``model`` on tokenized batches, concatenated in batch order (float64)."""
    device = next(model.parameters()).device
    outs = []
    for batch in batches:
        if device.type != "cpu":
            batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else out[0]
        outs.append(logits.detach().double().cpu().numpy())
    if not outs:
        return np.zeros((0, 0))
    return np.concatenate(outs, axis=0)


DEFAULT_FACTOR = 2.0
"""``c`` of the scaled tolerance (see the module docstring for its measurement)."""


def scaled_tolerance(
    reference: np.ndarray, *, eps: float, in_features: int, sparse_layers: int, factor: float = DEFAULT_FACTOR
) -> tuple[float, str]:
    """The equivalence tolerance for these reference logits, and how it was computed (one line)."""
    scale = max(1.0, float(np.nanmax(np.abs(reference)))) if reference.size else 1.0
    k, d = max(1, int(in_features)), max(1, int(sparse_layers))
    tol = factor * eps * scale * math.sqrt(k * d)
    basis = (
        f"scaled: {factor:g} x eps {eps:.3g} x max(1, max|logit| {scale:.3g}) x sqrt(K {k} x D {d}) = {tol:.3g} "
        f"(K: widest sparse layer input, D: sparse layers)"
    )
    return tol, basis


def tolerance_for(model: Any, reference: np.ndarray, *, factor: float = DEFAULT_FACTOR) -> tuple[float, str]:
    """:func:`scaled_tolerance` for a deployed model: K, D and eps read from its layers."""
    from torch import nn

    from audit.deploy.modules import DeployedLinear, top_level_linears

    sparse = [m for _, m in top_level_linears(model) if isinstance(m, DeployedLinear)]
    layers = sparse or [m for m in model.modules() if isinstance(m, nn.Linear)]
    k = max((int(m.in_features) for m in layers), default=1)
    dtype = next(model.parameters()).dtype
    for m in sparse:
        values = getattr(m, "values", None)
        if isinstance(values, torch.Tensor):
            dtype = values.dtype
            break
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            dtype = w.dtype
            break
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float32).eps)
    return scaled_tolerance(reference, eps=eps, in_features=k, sparse_layers=len(sparse), factor=factor)


DYNAMIC_FACTOR = 8.0
"""``c_q`` of the dynamic-int8 term (see :func:`dynamic_int8_tolerance`)."""


def dynamic_int8_tolerance(reference: np.ndarray, tol: float, basis: str) -> tuple[float, str]:
    """The scaled tolerance plus one activation step for a model with dynamic int8 layers.

    ``+ c_q * max(1, max|logit|) * 2^-7``. Why: the kernel and the reference round every input to
    the same 7-bit grid, but a summation-order difference upstream (the scaled term) can put an
    activation of a later layer on the other side of a rounding boundary, which moves it by one full
    step (1/127 of its range, not eps); that difference then carries to the logits like any relative
    perturbation. Measured on the demo MiniLM-L6 (K 1536, D 36): max |Δlogit| 0.027 at max|logit|
    2.1, i.e. 1.6 steps; ``c_q = 8`` leaves a 5x margin. The term is loose (a scale a few per cent off
    can stay within it), which is why each quantized layer's kernel is first checked on its own
    against its reference layer, at the tight per-layer tolerance
    (:func:`audit.deploy.quantized.check_quant_layer`).
    """
    scale = max(1.0, float(np.nanmax(np.abs(reference)))) if reference.size else 1.0
    extra = DYNAMIC_FACTOR * scale * 2.0**-7
    return tol + extra, f"{basis}; + dynamic int8: {DYNAMIC_FACTOR:g} x {scale:.3g} x 2^-7 = {extra:.3g}"


BF16_FACTOR = 8.0
"""``c_b`` of the bf16 weight-only term (see :func:`bf16_weight_only_tolerance`)."""


def bf16_weight_only_tolerance(reference: np.ndarray, tol: float, basis: str) -> tuple[float, str]:
    """The tolerance plus one bf16 step for a model with weight-only layers running in bf16.

    ``+ c_b * max(1, max|logit|) * 2^-7``. The kernel and the reference round each such layer's
    input and output to bf16 alike, but where the two summation orders straddle a rounding boundary
    an output moves by one bf16 step (2^-7 of its leading power of two) and carries on to the logits
    as a relative perturbation, the same reasoning as :func:`dynamic_int8_tolerance`. Each layer's
    kernel is first checked alone at the tight per-layer bound.
    """
    from audit.deploy.quantized import BF16_STEP

    scale = max(1.0, float(np.nanmax(np.abs(reference)))) if reference.size else 1.0
    extra = BF16_FACTOR * scale * BF16_STEP
    return tol + extra, f"{basis}; + bf16 weight-only: {BF16_FACTOR:g} x {scale:.3g} x 2^-7 = {extra:.3g}"


def compare(
    reference: np.ndarray, deployed: np.ndarray, *, tolerance: float, basis: str | None = None
) -> EquivalenceRecord:
    """Max absolute logit difference and prediction agreement.

    Passes when the largest difference is within ``tolerance`` and every prediction
    that differs was a near-tie in the reference (top-2 margin below ``2 * tolerance``),
    which is all that summation-order differences can flip.
    """
    if reference.shape != deployed.shape:
        raise EquivalenceError(f"logit shapes differ: reference {reference.shape}, deployed {deployed.shape}")
    n = int(reference.shape[0])
    if n == 0:
        raise EquivalenceError("the probe batch is empty: nothing to compare")
    diff = np.abs(reference - deployed)
    bad = ~np.isfinite(diff)
    nonfinite = int(bad.any(axis=1).sum())
    max_diff = float(np.where(bad, 0.0, diff).max())
    ref_pred = reference.argmax(axis=1)
    dep_pred = deployed.argmax(axis=1)
    agree = ref_pred == dep_pred
    if reference.shape[1] > 1:
        top2 = np.sort(reference, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
    else:
        margin = np.abs(reference[:, 0])
    unexplained = int(np.sum(~agree & (margin >= 2 * tolerance)))
    passed = nonfinite == 0 and max_diff <= tolerance and unexplained == 0
    return EquivalenceRecord(
        n=n,
        max_abs_logit_diff=max_diff,
        agreement=float(agree.mean()),
        tolerance=float(tolerance),
        passed=bool(passed),
        nonfinite=nonfinite,
        flipped_beyond_tolerance=unexplained,
        tolerance_basis=basis,
    )


def failure_message(eq: EquivalenceRecord) -> str:
    return (
        f"deployed model differs from its masked-dense reference on {eq.n} probe examples: "
        f"max |Δlogit| {eq.max_abs_logit_diff:.3g} (tolerance {eq.tolerance:.3g}), "
        f"prediction agreement {eq.agreement:.3f}"
        + (f", {eq.nonfinite} examples with non-finite logits" if eq.nonfinite else "")
        + (
            f", {eq.flipped_beyond_tolerance} predictions flipped beyond a near-tie"
            if eq.flipped_beyond_tolerance
            else ""
        )
    )
