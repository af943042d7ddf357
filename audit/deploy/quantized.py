"""Quantized Linear layers: the reference a quantization method leaves, and the kernels that deploy it.

A quantization method (:mod:`audit.pruning.quantize`) rounds each selected layer's weight onto
an integer grid and replaces the ``nn.Linear`` by a :class:`QuantReferenceLinear`: an
``nn.Linear`` holding the *dequantized* fp32 weight (``q * scale``) and, for dynamic int8,
fake-quantizing its input exactly as the kernel will. That module is the variant's
reference (what the deployed model must compute). Deployment (:mod:`audit.deploy.convert`)
turns it into the deployed module of its scheme, run by one of the pinned torch's CPU kernels:

- ``int8_dynamic``: :class:`DynamicInt8Linear`, ``quantized::linear_dynamic`` on an fbgemm-packed
  weight (the ``x86`` engine). Stored: the int8 weight and one fp32 scale per output channel (zero
  point 0). Activations uint8, one scale and zero point per call (7-bit range).
- ``int8_dynamic_token``: :class:`TokenInt8Linear`, ``aten::_int_mm`` (int8 x int8 -> int32, oneDNN),
  then the two scales. Stored as ``int8_dynamic``. Activations int8, symmetric, one scale per token
  (row) on every call, -127..127.
- ``int8_weight``: :class:`WeightInt8Linear`, ``aten::_weight_int8pack_mm``. Stored: the int8 weight
  and one scale per output channel. Activations bf16 (or fp32).
- ``int4_weight``: :class:`WeightInt4Linear`, ``aten::_weight_int4pack_mm_for_cpu``. Stored: 4-bit
  weights packed two per byte, one scale per group of ``group_size`` inputs.

The weight-only kernels run in the activation dtype they are given. In the pinned torch their
bf16 path is the vectorized one and their fp32 path a slow fallback: measured on an AMD EPYC
(Zen 4, one thread), 1536x384 at 64 rows, ``_weight_int8pack_mm`` takes 32 ms in fp32 against
1.3 ms in bf16 (dense fp32: 0.8 ms), and ``_weight_int4pack_mm_for_cpu`` 65 ms against 0.9 ms.
So weight-only layers run in bf16 by default (``activations: bf16``): the input is rounded to
bf16, the kernel accumulates in fp32 and rounds its output to bf16, the fp32 bias is added after.
The scales are rounded to bf16 when the layer is quantized, so the dequantized weight is exactly
what the kernel multiplies. ``activations: fp32`` keeps the exact fp32 path.

Every grid is symmetric with zero point 0 (int4: the kernel's ``(q - 8) * scale + zero`` with
zero 0), so a pruned (zero) weight stays exactly zero: a hybrid keeps its mask.

``int8_dynamic_token`` is the scheme of torchao's ``Int8DynamicActivationInt8WeightConfig`` (torchao is
the maintained successor of ``torch.ao.quantization``): per-token symmetric int8 activations, per-channel
int8 weights. torchao 0.18 (on PyPI, for torch >= 2.11) runs that config on a CPU, outside
``torch.compile``, as ``torch._int_mm`` followed by the two rescales; this module calls the same op
directly rather than taking torchao's tensor subclasses into deployed models (which this project stores,
fingerprints and reloads as plain modules with buffers). Per-tensor ``int8_dynamic`` lets one outlier
token set the grid of every token in the call (``bench/int8_dynamic_lm``: on SmolLM2 a 1000x coarser
step than per token); the per-token grid does not. ``torch.quantize_per_channel`` and the quantized
tensor constructors are deprecated in the pinned torch (pytorch/pytorch#184982); their
warning is silenced where this module calls them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from audit.deploy.modules import DeployedLinear

SCHEMES = ("int8_dynamic", "int8_dynamic_token", "int8_weight", "int4_weight")
DYNAMIC = ("int8_dynamic", "int8_dynamic_token")
"""The schemes that quantize their own input on every call."""
ACTIVATIONS = ("bf16", "fp32")
"""Activation dtypes of the weight-only schemes (the dynamic ones quantize their own)."""
BF16_STEP = 2.0**-7
"""One bf16 rounding step relative to the value's leading power of two (8 significant bits)."""
REDUCE_RANGE = True
"""Dynamic int8 activations use 7 bits (0..127), as ``torch.ao.nn.quantized.dynamic.Linear`` asks of
``quantized::linear_dynamic``: fbgemm's ``vpmaddubsw`` saturates 16-bit sums of u8 x s8 products on
CPUs without VNNI, and the halved range keeps those sums in range."""


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=r".*are deprecated and will be removed.*")
        yield


@dataclass(frozen=True)
class QuantInfo:
    """What one quantized layer is: scheme, bits, granularity, activations, kernel."""

    scheme: str
    bits: int
    granularity: str
    activations: str
    kernel: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "bits": self.bits,
            "granularity": self.granularity,
            "activations": self.activations,
            "kernel": self.kernel,
        }


def _weight_only_activations(activations: str) -> str:
    if activations == "bf16":
        return "bf16 (weight-only): input and output rounded to bf16, fp32 accumulation"
    if activations == "fp32":
        return "fp32 (weight-only)"
    raise ValueError(f"unknown activations {activations!r}; known: {', '.join(ACTIVATIONS)}")


def describe(scheme: str, group_size: int | None = None, activations: str = "bf16") -> QuantInfo:
    """The :class:`QuantInfo` of a scheme (``activations``: the weight-only schemes' dtype)."""
    if scheme == "int8_dynamic":
        return QuantInfo(
            scheme, 8, "per output channel, symmetric (zero point 0)",
            "uint8, one scale and zero point per call over the whole input (dynamic), 7-bit range",
            f"quantized::linear_dynamic (fbgemm-packed int8 weight; engine {torch.backends.quantized.engine})",
        )  # fmt: skip
    if scheme == "int8_dynamic_token":
        return QuantInfo(
            scheme, 8, "per output channel, symmetric (zero point 0)",
            "int8, symmetric, one scale per token (row) on every call (dynamic), -127..127",
            "aten::_int_mm (int8 x int8 -> int32), then per-token x per-channel rescale",
        )  # fmt: skip
    if scheme == "int8_weight":
        return QuantInfo(
            scheme, 8, "per output channel, symmetric (zero point 0)", _weight_only_activations(activations),
            f"aten::_weight_int8pack_mm ({activations})",
        )  # fmt: skip
    if scheme == "int4_weight":
        return QuantInfo(
            scheme, 4, f"per group of {group_size} inputs, symmetric (zero 0)", _weight_only_activations(activations),
            f"aten::_weight_int4pack_mm_for_cpu ({activations})",
        )  # fmt: skip
    raise ValueError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")


# -- the integer grids -------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 ``[out, in]`` in -127..127, fp32 scales ``[out]``): symmetric per output channel."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales.contiguous()


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 ``[out, in]`` in 1..15, i.e. ``q + 8`` for q in -7..7; fp32 scales ``[out, in / group_size]``)."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    groups = w.reshape(out_f, in_f // group_size, group_size)
    scales = (groups.abs().amax(dim=-1) / 7.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(groups / scales[..., None]).clamp(-7, 7) + 8
    return q.to(torch.int32).reshape(out_f, in_f).contiguous(), scales.contiguous()


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    out_f, in_f = q.shape
    groups = (q.reshape(out_f, in_f // group_size, group_size) - 8).float()
    return (groups * scales[..., None]).reshape(out_f, in_f)


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to bf16 (round to nearest even), back in fp32."""
    return x.to(torch.bfloat16).to(torch.float32)


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """One bf16 rounding step at each value of ``x`` (fp32; the smallest normal's step at 0)."""
    tiny = torch.finfo(torch.bfloat16).tiny
    exp = torch.floor(torch.log2(x.abs().float().clamp_min(tiny)))
    return torch.exp2(exp) * BF16_STEP


def fake_quant_dynamic(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as ``quantized::linear_dynamic`` rounds it: uint8, one scale and zero point over
    the whole tensor (``torch.quantize_per_tensor_dynamic``, the same choice of parameters), dequantized.
    """
    with _quiet():
        return torch.quantize_per_tensor_dynamic(x.float(), torch.quint8, REDUCE_RANGE).dequantize()


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 ``x`` in -127..127, fp32 scales ``[..., 1]``): symmetric, one scale per row of the last dim."""
    xf = x.float()
    scales = (xf.abs().amax(dim=-1, keepdim=True) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(xf / scales).clamp_(-127, 127).to(torch.int8), scales


def fake_quant_token(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as :class:`TokenInt8Linear` rounds it (:func:`quantize_per_token`), dequantized."""
    q, scales = quantize_per_token(x)
    return q.float() * scales


def int8_token_exact(
    x: torch.Tensor, q_weight: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The per-token int8 layer evaluated exactly: ``x`` on its per-token grid, the integer sums in fp64
    (exact: each is at most 127² x in_features, far below 2^53), then the two scales and the bias in the
    order :class:`TokenInt8Linear` applies them. A plain fp64 GEMM, independent of ``_int_mm``.
    """
    shape = x.shape
    q, row_scales = quantize_per_token(x.reshape(-1, shape[-1]))
    acc = (q.double() @ q_weight.double().T).float()
    y = acc * row_scales * w_scales
    if bias is not None:
        y = y + bias
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


# -- the reference -----------------------------------------------------------------------
class QuantReferenceLinear(nn.Linear):
    """A quantized layer before deployment: the dequantized fp32 weight, the integers and scales.

    A dynamic scheme also fake-quantizes its input (per call or per token); a weight-only scheme
    with ``activations: bf16`` rounds its input and its output (before the bias) to bf16, as its
    kernel does (both straight-through for gradients).

    ``int8_dynamic_token`` without gradients evaluates its integer model exactly
    (:func:`int8_token_exact`), so the reference has no summation-order freedom: on SmolLM2, fp32
    summation-order differences alone, flipping per-token roundings from layer to layer, moved the
    logits by up to 4.4 against a tolerance of 2.4 (``bench/results/quantization_lm_token``, first
    run). With gradients it is the dequantized product with a straight-through input grid.
    """

    def __init__(
        self, linear: nn.Linear, scheme: str, group_size: int | None = None, activations: str = "bf16"
    ) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        if activations not in ACTIVATIONS:
            raise ValueError(f"unknown activations {activations!r}; known: {', '.join(ACTIVATIONS)}")
        self.scheme = scheme
        self.group_size = group_size
        self.activations = "fp32" if scheme in DYNAMIC else activations
        w = linear.weight.detach()
        if scheme == "int4_weight":
            if group_size is None:
                raise ValueError("int4_weight needs a group size")
            q, scales = quantize_int4(w, group_size)
        else:
            q, scales = quantize_int8(w)
        if self.bf16:
            # the kernel multiplies bf16 scales: keep the rounded ones, so that the weight below is its weight
            scales = bf16_round(scales).clamp_min(torch.finfo(torch.bfloat16).tiny)
        deq = dequantize_int4(q, scales, group_size) if scheme == "int4_weight" else q.float() * scales[:, None]
        self.q, self.scales = q, scales
        self.zeros_kept = bool(((w == 0) & (deq.to(w.device) != 0)).sum() == 0)
        """Every weight that was zero before quantizing is zero after (a hybrid's mask survived)."""
        self.weight = nn.Parameter(deq.to(device=w.device), requires_grad=False)
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)

    @property
    def bf16(self) -> bool:
        """A weight-only layer that runs its kernel in bf16."""
        return self.scheme not in DYNAMIC and self.activations == "bf16"

    @property
    def info(self) -> QuantInfo:
        return describe(self.scheme, self.group_size, self.activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scheme in DYNAMIC:
            fake = fake_quant_dynamic if self.scheme == "int8_dynamic" else fake_quant_token
            fq = fake(x.detach()).to(x.dtype)
            x = x + (fq - x).detach() if x.requires_grad else fq
        if self.scheme == "int8_dynamic_token" and not x.requires_grad:
            return int8_token_exact(x, self.q, self.scales, self.bias)
        if not self.bf16:
            return F.linear(x, self.weight, self.bias)
        xr = bf16_round(x.detach()).to(x.dtype)
        x = x + (xr - x).detach() if x.requires_grad else xr
        y = F.linear(x, self.weight)
        yr = bf16_round(y.detach()).to(y.dtype)
        y = y + (yr - y).detach() if y.requires_grad else yr
        return y if self.bias is None else y + self.bias

    def deploy(self) -> DeployedLinear:
        """The deployed module of this layer's scheme, from its integers and scales (not re-quantized)."""
        bias = None if self.bias is None else self.bias.detach().float().cpu().clone()
        if self.scheme == "int8_dynamic":
            return DynamicInt8Linear(
                self.in_features, self.out_features, self.q.cpu().clone(), self.scales.cpu().clone(), bias
            )
        if self.scheme == "int8_dynamic_token":
            return TokenInt8Linear(
                self.in_features, self.out_features, self.q.cpu().clone(), self.scales.cpu().clone(), bias
            )
        if self.scheme == "int8_weight":
            return WeightInt8Linear(
                self.in_features,
                self.out_features,
                self.q.cpu().clone(),
                self.scales.cpu().clone(),
                bias,
                self.activations,
            )
        return WeightInt4Linear.from_int4(
            self.q.cpu().clone(), self.scales.cpu().clone(), bias, int(self.group_size or 0), self.activations
        )

    def extra_repr(self) -> str:
        extra = f", activations={self.activations}" if self.scheme not in DYNAMIC else ""
        return f"{super().extra_repr()}, scheme={self.scheme}{extra}"


def check_quant_layer(
    ref: QuantReferenceLinear, dep: nn.Module, *, factor: float = 2.0, rows: int = 16, seed: int = 0
) -> tuple[float, float]:
    """``(max |Δ|, tolerance)`` of a deployed quantized layer against its reference on a seeded N(0, 1) input.

    The per-layer form of :func:`audit.deploy.verify.scaled_tolerance`: ``factor x eps x max(1, max|y|) x
    sqrt(in_features)``. Both sides multiply the same integers and scales (and, for dynamic int8, the same
    7-bit input grid: one input, so no upstream rounding flip), so only summation order differs: measured
    at most 0.39 of the bound (K 64 to 1536, every scheme), while a scale 1 % off gives over 2000 times it.
    This catches a wrong scale, zero point, packing or bias that the model-level check of a dynamic int8
    variant (whose tolerance adds a whole activation step) would let through.

    A bf16 weight-only layer rounds its output to bf16: where the two summation orders straddle a
    rounding boundary the outputs differ by one bf16 step of that value, so each element is first
    allowed that one step (:func:`bf16_ulp` of the reference) and the excess is held to the same bound.
    """
    import math

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, ref.in_features, generator=gen)
    with torch.inference_mode():
        y_ref = ref(x)
        delta = (dep(x).double() - y_ref.double()).abs()
        if ref.bf16:
            pre_bias = y_ref if ref.bias is None else y_ref - ref.bias
            delta = (delta - bf16_ulp(pre_bias).double()).clamp_min(0.0)
        diff = float(delta.max())
        y_ref = y_ref.double()
    eps = float(torch.finfo(torch.float32).eps)
    tol = factor * eps * max(1.0, float(y_ref.abs().max())) * math.sqrt(ref.in_features)
    return diff, tol


# -- the deployed modules ------------------------------------------------------------------
class _QuantLinear(DeployedLinear):
    """Shared: int weight and scales as buffers, fp32 bias, CPU."""

    scheme: ClassVar[str] = ""

    def __getstate__(self) -> dict[str, Any]:  # deepcopy / pickle: a packed weight is rebuilt on demand
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> _QuantLinear:
        self._packed = None
        return super()._apply(fn, recurse)

    @property
    def info(self) -> QuantInfo:
        return describe(self.scheme, getattr(self, "group_size", None), getattr(self, "activations", "fp32"))

    @property
    def format(self) -> str:
        return self.format_name

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for n, t in self._buffers.items() if t is not None and n != "bias")

    def _out(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return y if dtype == torch.float32 else y.to(dtype)


class _Int8Weights(_QuantLinear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        q: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        activations: str = "fp32",
    ) -> None:
        super().__init__(in_features, out_features)
        if activations not in ACTIVATIONS:
            raise ValueError(f"unknown activations {activations!r}; known: {', '.join(ACTIVATIONS)}")
        self.activations = activations
        if q.dtype != torch.int8 or tuple(q.shape) != (out_features, in_features):
            raise ValueError(
                f"expected an int8 [{out_features}, {in_features}] weight, found {q.dtype} {tuple(q.shape)}"
            )
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scales", scales.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32).contiguous())
        self._packed: Any = None

    def dense_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]

    def meta(self) -> dict[str, Any]:
        return {"activations": self.activations}

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> _Int8Weights:
        # saved before weight-only layers had a bf16 path: fp32
        act = str(meta.get("activations", "fp32"))
        return cls(in_features, out_features, tensors["qweight"], tensors["scales"], tensors.get("bias"), act)


class DynamicInt8Linear(_Int8Weights):
    """Dynamic int8: ``quantized::linear_dynamic`` on an fbgemm-packed per-channel int8 weight.

    fbgemm keeps its own packed copy of the weight beside the ``qweight`` buffer (which is what is
    saved and counted as stored: one byte per weight plus the scales).
    """

    format_name = "int8_dynamic"
    scheme = "int8_dynamic"

    def _pack(self) -> Any:
        if self._packed is None:
            zero = torch.zeros(self.out_features, dtype=torch.long)
            with _quiet():
                qw = torch._make_per_channel_quantized_tensor(self.qweight, self.scales.double(), zero, 0)
                self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)
        return self._packed

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        dtype = x2d.dtype
        x = x2d if dtype == torch.float32 else x2d.float()
        y = torch.ops.quantized.linear_dynamic(x.contiguous(), self._pack(), reduce_range=REDUCE_RANGE)
        return self._out(y, dtype)


class TokenInt8Linear(_Int8Weights):
    """Dynamic int8 per token: each row of the input on its own symmetric int8 grid
    (:func:`quantize_per_token`), ``aten::_int_mm`` against the int8 weight (exact int32 sums), then
    ``x`` the row's scale and the output channel's scale, plus the bias. ``_int_mm`` reads the stored
    ``qweight`` transposed in place: no second copy of the weight.
    """

    format_name = "int8_dynamic_token"
    scheme = "int8_dynamic_token"

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        dtype = x2d.dtype
        q, row_scales = quantize_per_token(x2d)
        acc = torch._int_mm(q.contiguous(), self.qweight.t())
        y = acc.float() * row_scales * self.scales
        if self.bias is not None:
            y = y + self.bias
        return self._out(y, dtype)


class WeightInt8Linear(_Int8Weights):
    """Weight-only int8: ``aten::_weight_int8pack_mm(x, int8 [out, in], scales [out])`` plus the bias."""

    format_name = "int8_weight"
    scheme = "int8_weight"

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        dtype = x2d.dtype
        if self.activations == "bf16":
            if self._packed is None:  # the scales as the bf16 kernel reads them (exactly: stored bf16-rounded)
                self._packed = self.scales.to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(x2d.to(torch.bfloat16).contiguous(), self.qweight, self._packed)
            y = y.float()
        else:
            x = x2d if dtype == torch.float32 else x2d.float()
            y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.qweight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return self._out(y, dtype)


class WeightInt4Linear(_QuantLinear):
    """Weight-only int4: ``aten::_weight_int4pack_mm_for_cpu`` on the weight packed by
    ``aten::_convert_weight_to_int4pack_for_cpu`` (two 4-bit values per byte), with the scales and
    zeros ``[in / group_size, out, 2]`` the kernel reads (zeros all 0: a symmetric grid).
    """

    format_name = "int4_weight"
    scheme = "int4_weight"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        packed: torch.Tensor,
        scale_zeros: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int,
        activations: str = "fp32",
    ) -> None:
        super().__init__(in_features, out_features)
        if activations not in ACTIVATIONS:
            raise ValueError(f"unknown activations {activations!r}; known: {', '.join(ACTIVATIONS)}")
        self.activations = activations
        self.group_size = int(group_size)
        self.register_buffer("packed", packed.contiguous())
        self.register_buffer("scale_zeros", scale_zeros.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32).contiguous())
        self._packed = None

    @classmethod
    def from_int4(
        cls,
        q: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int,
        activations: str = "fp32",
    ) -> WeightInt4Linear:
        out_f, in_f = q.shape
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        scale_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=-1).transpose(0, 1).contiguous()
        return cls(in_f, out_f, packed, scale_zeros, bias, group_size, activations)

    def meta(self) -> dict[str, Any]:
        return {"group_size": self.group_size, "activations": self.activations}

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> WeightInt4Linear:
        return cls(
            in_features, out_features, tensors["packed"], tensors["scale_zeros"], tensors.get("bias"),
            int(meta["group_size"]), str(meta.get("activations", "fp32")),
        )  # fmt: skip

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        dtype = x2d.dtype
        if self.activations == "bf16":
            if self._packed is None:  # scales and zeros as the bf16 kernel reads them (stored bf16-rounded)
                self._packed = self.scale_zeros.to(torch.bfloat16)
            x = x2d.to(torch.bfloat16).contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self._packed).float()
        else:
            x = x2d if dtype == torch.float32 else x2d.float()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.contiguous(), self.packed, self.group_size, self.scale_zeros
            )
        if self.bias is not None:
            y = y + self.bias
        return self._out(y, dtype)

    def dense_weight(self) -> torch.Tensor:
        # the kernel's own product with the identity: the weight as the kernel sees it, no Python unpacking
        eye = torch.eye(self.in_features, dtype=torch.float32)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size, self.scale_zeros).T


QUANT_MODULES: dict[str, type[_QuantLinear]] = {
    m.format_name: m for m in (DynamicInt8Linear, TokenInt8Linear, WeightInt8Linear, WeightInt4Linear)
}


# -- the formats -----------------------------------------------------------------------------
from audit.deploy.format_classes import Candidate, DeployFormat  # noqa: E402 - after the modules they serve


class QuantizedFormat(DeployFormat):
    """A quantized format: it serves only the layers a quantization method produced.

    It is never a timing candidate (a plain weight has no integer grid to deploy): the converter
    deploys each :class:`QuantReferenceLinear` in its scheme's format whatever ``deploy.formats``,
    ``deploy.force_format`` or the timings say, since another format would not compute the
    quantized model that was audited.
    """

    def unavailable(self, device: str, dtype: torch.dtype) -> str | None:
        return None if device == "cpu" else f"{self.name}: the pinned torch's kernel is the CPU one"

    def worth_noting(self, weight: torch.Tensor) -> bool:
        return False

    def applies_to(self, weight: torch.Tensor, density: float, config: Any) -> tuple[list[Candidate], list[str]]:
        return [], [f"{self.name}: serves only layers quantized by a quantization method"]


class Int8DynamicFormat(QuantizedFormat):
    name = "int8_dynamic"
    module = DynamicInt8Linear


class Int8DynamicTokenFormat(QuantizedFormat):
    name = "int8_dynamic_token"
    module = TokenInt8Linear


class Int8WeightFormat(QuantizedFormat):
    name = "int8_weight"
    module = WeightInt8Linear


class Int4WeightFormat(QuantizedFormat):
    name = "int4_weight"
    module = WeightInt4Linear
