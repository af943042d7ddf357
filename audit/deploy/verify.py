"""Equivalence proof: the deployed model against its masked-dense reference on a probe batch."""

from __future__ import annotations

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


def compare(reference: np.ndarray, deployed: np.ndarray, *, tolerance: float) -> EquivalenceRecord:
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
    )


def failure_message(eq: EquivalenceRecord) -> str:
    return (
        f"deployed model differs from its masked-dense reference on {eq.n} probe examples: "
        f"max |Δlogit| {eq.max_abs_logit_diff:.3g} (tolerance {eq.tolerance:g}), "
        f"prediction agreement {eq.agreement:.3f}"
        + (f", {eq.nonfinite} examples with non-finite logits" if eq.nonfinite else "")
        + (
            f", {eq.flipped_beyond_tolerance} predictions flipped beyond a near-tie"
            if eq.flipped_beyond_tolerance
            else ""
        )
    )
