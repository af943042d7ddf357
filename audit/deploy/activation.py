"""Activation sparsity: the gates an activation-sparsity method leaves, and the kernel that deploys them.

An activation-sparsity method (:mod:`audit.pruning.activation`, TEAL and CATS) changes no weight.
It calibrates a magnitude threshold per gate and zeroes, on every input, the activations whose
magnitude is below it:

* ``teal`` (Liu et al. 2024, TEAL): the *input* of each selected Linear layer is gated. The layer
  becomes an :class:`ActSparseReferenceLinear` (an ``nn.Linear`` with a :class:`MagnitudeGate` on
  its input).
* ``cats`` (Lee et al. 2024, CATS): on a gated MLP (``down(act(gate(x)) * up(x))``) the output of
  the activation function is gated: ``act_fn`` becomes a :class:`GatedActivation`, and
  ``down_proj``, whose input is then zero wherever the gate closed, an
  :class:`ActSparseReferenceLinear` without a gate of its own.

Those modules are the variant's reference (the thresholded dense model). Deployment turns each
:class:`ActSparseReferenceLinear` into an :class:`ActSparseLinear`, which stores the weight
input-major (``[in, out]``) and, for calls of at most ``max_tokens`` tokens (decode, short inputs),
runs the compiled kernel ``pa_act_mm`` (:mod:`audit.deploy.kernel`): the rows of the weight whose
input is zero are never read, so the bytes read fall with the activation density. Longer calls
multiply the gated input with the whole weight (the same function; a GEMM reads the weight once for
all tokens, which per-token skipping cannot beat). The equivalence check compares the deployed model
with the thresholded dense reference, and every layer is first checked on its own
(:func:`check_act_layer`).

:func:`metered` counts, per input, what each gated layer read: the suite ``compute``
(:mod:`suites.compute`) turns that into per-input active fractions and FLOPs estimates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from audit.deploy.format_classes import Candidate, DeployFormat
from audit.deploy.modules import DeployedLinear

FORMAT = "act_sparse"
DEFAULT_MAX_TOKENS = 1
"""Calls of at most this many tokens run the skipping kernel (decode); see ``max_tokens``."""


class MagnitudeGate(nn.Module):
    """``x`` with every entry of magnitude below ``threshold`` set to zero (TEAL's / CATS' sparsifier)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.threshold
        if float(t) <= 0.0:
            return x
        return x.masked_fill(x.abs() < t.to(x.dtype), 0.0)

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.4g}"


class GatedActivation(nn.Module):
    """CATS: an MLP's activation function followed by a :class:`MagnitudeGate` on its output."""

    def __init__(self, act: nn.Module, threshold: float) -> None:
        super().__init__()
        self.act = act
        self.gate = MagnitudeGate(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.act(x))


class ActSparseReferenceLinear(nn.Linear):
    """A Linear layer whose input is gated (``gated``: TEAL) or arrives sparse (CATS' ``down_proj``).

    ``threshold`` 0 with ``gated`` False: no gate of its own, zeros in the input are skipped.
    """

    def __init__(
        self, linear: nn.Linear, threshold: float, *, gated: bool = True, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = linear.weight
        if linear.bias is not None:
            self.bias = linear.bias
        self.gated = bool(gated)
        self.max_tokens = int(max_tokens)
        self.gate = MagnitudeGate(threshold if gated else 0.0)

    @property
    def threshold(self) -> float:
        return float(self.gate.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.gate(x), self.weight, self.bias)

    def deploy(self) -> ActSparseLinear:
        bias = None if self.bias is None else self.bias.detach().float().cpu()
        return ActSparseLinear(
            self.weight.detach().float().cpu().T.contiguous(), bias, self.threshold, self.gated, self.max_tokens
        )


class ActSparseLinear(DeployedLinear):
    """Deployed activation-sparse layer: input-major weight ``wt`` ``[in, out]``, its gate, the kernel.

    ``max_tokens``: calls with at most this many tokens run ``pa_act_mm`` (skipping the weight rows
    of zero inputs); longer calls run ``x_gated @ wt`` (torch's GEMM). Without the compiled kernel the
    short calls run ``x[:, nz] @ wt[nz]`` in torch (correct, not faster).
    """

    format_name = FORMAT

    def __init__(
        self, wt: torch.Tensor, bias: torch.Tensor | None, threshold: float, gated: bool, max_tokens: int
    ) -> None:
        super().__init__(int(wt.shape[0]), int(wt.shape[1]))
        self.register_buffer("wt", wt.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32).contiguous())
        self.gated = bool(gated)
        self.max_tokens = int(max_tokens)
        self.gate = MagnitudeGate(threshold if gated else 0.0)

    @property
    def threshold(self) -> float:
        return float(self.gate.threshold)

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        dtype = x2d.dtype
        x = self.gate(x2d if dtype == torch.float32 else x2d.float()).contiguous()
        if x.shape[0] > self.max_tokens:
            y = torch.addmm(self.bias, x, self.wt) if self.bias is not None else x @ self.wt
        else:
            y = _skip_zero_inputs(self.wt, self.bias, x)
        return y if dtype == torch.float32 else y.to(dtype)

    def dense_weight(self) -> torch.Tensor:
        return self.wt.T

    def stored_bytes(self) -> int:
        return self.wt.numel() * self.wt.element_size()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"wt": self.wt}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def meta(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "gated": self.gated, "max_tokens": self.max_tokens}

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> ActSparseLinear:
        return cls(
            tensors["wt"], tensors.get("bias"), float(meta["threshold"]), bool(meta["gated"]), int(meta["max_tokens"])
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold:.4g}, max_tokens={self.max_tokens}"


def _skip_zero_inputs(wt: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    from audit.deploy.kernel import load_kernel

    lib = load_kernel()
    if lib is not None:
        return lib.act_mm(wt, bias, x)
    rows = []
    for r in range(x.shape[0]):
        nz = torch.nonzero(x[r]).flatten()
        y = x[r, nz] @ wt[nz]
        rows.append(y + bias if bias is not None else y)
    return torch.stack(rows) if rows else x.new_zeros((0, wt.shape[1]))


def active_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Per token, how many inputs ``module`` reads: the non-zeros after its gate (None: not activation-sparse)."""
    if not isinstance(module, (ActSparseReferenceLinear, ActSparseLinear)):
        return None
    return (module.gate(x) != 0).sum(dim=-1)


def check_act_layer(
    ref: ActSparseReferenceLinear, dep: ActSparseLinear, *, factor: float = 2.0, seed: int = 0
) -> tuple[float, float]:
    """``(max |Δ|, tolerance)`` of a deployed layer against its reference, on seeded N(0, 1) inputs of
    1 and ``max_tokens + 1`` tokens (both paths), with a third of each input exactly zero.

    The tolerance is :func:`audit.deploy.quantized.check_quant_layer`'s: ``factor x eps x max(1, max|y|)
    x sqrt(in_features)``; both sides multiply the same fp32 numbers, only the summation order differs.
    """
    gen = torch.Generator().manual_seed(seed)
    worst, tol = 0.0, 0.0
    eps = float(torch.finfo(torch.float32).eps)
    for rows in (1, ref.max_tokens + 1):
        x = torch.randn(rows, ref.in_features, generator=gen)
        x[torch.rand(x.shape, generator=gen) < 1 / 3] = 0.0
        with torch.inference_mode():
            y_ref = ref(x).double()
            worst = max(worst, float((dep(x).double() - y_ref).abs().max()))
        tol = max(tol, factor * eps * max(1.0, float(y_ref.abs().max())) * math.sqrt(ref.in_features))
    return worst, tol


class ActivationSparseFormat(DeployFormat):
    """Serves only the layers an activation-sparsity method produced; never a timing candidate."""

    name = FORMAT
    module = ActSparseLinear

    def unavailable(self, device: str, dtype: torch.dtype) -> str | None:
        return None if device == "cpu" else f"{self.name}: the compiled kernel is the CPU one"

    def worth_noting(self, weight: torch.Tensor) -> bool:
        return False

    def applies_to(self, weight: torch.Tensor, density: float, config: Any) -> tuple[list[Candidate], list[str]]:
        return [], [f"{self.name}: serves only layers an activation-sparsity method gated"]


def gated_activations(model: nn.Module) -> dict[str, float]:
    """``{module path: threshold}`` of every CATS :class:`GatedActivation` (saved in the deploy manifest)."""
    return {name: float(m.gate.threshold) for name, m in model.named_modules() if isinstance(m, GatedActivation)}


def restore_gated_activations(model: nn.Module, gates: dict[str, float]) -> None:
    """Wrap the recorded activation functions of a rebuilt model in their gates again (loading a CATS variant)."""
    for name, threshold in gates.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, GatedActivation(getattr(parent, child), threshold))
