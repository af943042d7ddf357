"""Compact CPU formats for batch-1 decode: ``bitmap`` and ``nm24`` (2:4), run by the compiled kernel.

At batch 1 a Linear layer is a matrix-vector product whose time is the bytes of the weight
read from memory. fp32 dense reads 4 B per weight; the kernel's CSR (fp32 values + uint16
column indices) reads 6 B per 2 weights at 50 %, which is no faster. These formats store
one bit per input instead of a 16-bit index per kept weight:

* ``bitmap``: per row, one uint16 mask per 16 inputs and the kept fp32 values packed in
  input order, with int32 row pointers into the values: 4 B per kept weight + 1 bit per
  weight + 4 B per row (2.125 B per weight at 50 %, 0.525 B at 90 %).
* ``nm24``: 2:4 sparsity (at most 2 non-zeros in every group of 4 inputs): the same masks,
  with exactly 2 value slots per group (a group with fewer non-zeros stores explicit zeros),
  so no row pointers are needed: 4 B per 2 weights + 1 bit per weight (2.125 B per weight).

Both values arrays end with 16 zero floats (:data:`PAD`, 64 B per layer): the kernel's vector
loads may read past the last row. ``stored_bytes`` counts every stored array, padding included.

The kernel (``pa_compact_mm`` in ``spmm.cpp``) expands 16 packed values into their lanes by
the mask (AVX-512 ``vexpandps``) and multiplies them with the masked input, with a scalar
path that sums in the same order (identical results). It is written for one token; more
tokens run the same row loop for 4 tokens at a time (each block expanded once; a token's
result equals its single-token result). That is correct but slower than the CSR kernel and
than dense for prefill-sized batches (about 3x dense at 128 tokens, 576x576): the per-layer
choice times it and keeps the faster format.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from audit.deploy.modules import DeployedLinear, SemiStructuredLinear, _bias_copy, _kernel

BLOCK = 16
"""Inputs per mask word."""
PAD = 16
"""Zero floats after the last value: the kernel's vector loads may read up to 16 floats past a row."""
_BITS = torch.arange(BLOCK, dtype=torch.int32)


def pack_masks(keep: torch.Tensor) -> torch.Tensor:
    """(out, ceil(in/16)) int16 (uint16 bits): bit j of word w is ``keep[:, 16 w + j]``."""
    out_f, in_f = keep.shape
    nb = (in_f + BLOCK - 1) // BLOCK
    padded = torch.zeros(out_f, nb * BLOCK, dtype=torch.int32)
    padded[:, :in_f] = keep.to(torch.int32)
    words = (padded.reshape(out_f, nb, BLOCK) << _BITS).sum(-1, dtype=torch.int32)
    return words.to(torch.uint16).view(torch.int16).contiguous()


def unpack_masks(masks: torch.Tensor, in_features: int) -> torch.Tensor:
    """The (out, in) bool keep-matrix of :func:`pack_masks`' words."""
    words = masks.to(torch.int32) & 0xFFFF
    bits = (words[..., None] >> _BITS) & 1
    return bits.reshape(masks.shape[0], -1)[:, :in_features].bool()


def nm24_slots(weight: torch.Tensor) -> torch.Tensor:
    """The (out, in) bool slots of a 2:4 weight: its non-zeros plus, in a group with fewer than 2, the
    lowest-index zeros, so that every group of 4 inputs has exactly 2 slots.

    Raises:
        ValueError: ``in_features`` is not a multiple of 4, or a group holds more than 2 non-zeros.
    """
    out_f, in_f = weight.shape
    if in_f % 4:
        raise ValueError(f"nm24 needs in_features divisible by 4 (groups of 4 inputs), found {out_f}x{in_f}")
    nz = (weight.detach() != 0).reshape(out_f, in_f // 4, 4)
    counts = nz.sum(-1)
    if bool((counts > 2).any()):
        row, group = (counts > 2).nonzero()[0].tolist()
        raise ValueError(
            f"nm24 needs 2:4 sparsity (at most 2 non-zeros in every group of 4 inputs); found "
            f"{int(counts[row, group])} in row {row}, inputs {4 * group}-{4 * group + 3}, "
            f"and {int((counts > 2).sum())} such group(s) in all"
        )
    key = nz.to(torch.int32) * 8 + (3 - torch.arange(4, dtype=torch.int32))  # non-zeros first, then low index
    keep = torch.zeros_like(nz).scatter_(-1, key.topk(2, dim=-1).indices, True)
    return keep.reshape(out_f, in_f)


is_2_4 = SemiStructuredLinear.is_2_4
"""At most 2 non-zeros in every group of 4 consecutive inputs (in_features divisible by 4), as for CUDA 2:4."""


class CompactLinear(DeployedLinear):
    """Shared code: masks, packed values, optional row pointers, run by ``pa_compact_mm``."""

    fixed_stride: ClassVar[bool] = False
    scalar: bool = False
    """Force the kernel's portable scalar path (tests compare it with the AVX-512 path)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        masks: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        rowptr: torch.Tensor | None = None,
    ) -> None:
        super().__init__(in_features, out_features)
        _kernel()  # fail here, at deployment, if the kernel is unavailable
        nb = (in_features + BLOCK - 1) // BLOCK
        if masks.shape != (out_features, nb) or masks.dtype != torch.int16:
            raise ValueError(f"{self.format_name}: masks must be int16 ({out_features}, {nb}), found "
                             f"{masks.dtype} {tuple(masks.shape)}")  # fmt: skip
        self.register_buffer("masks", masks.contiguous())
        if values.numel() < PAD or bool((values[-PAD:] != 0).any()):
            raise ValueError(f"{self.format_name}: values must end with {PAD} zeros of padding")
        self.register_buffer("values", values.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32).contiguous())
        if not self.fixed_stride:
            assert rowptr is not None
            self.register_buffer("rowptr", rowptr.to(torch.int32).contiguous())
        self._check_sizes()
        self._call: tuple[Any, ...] | None = None

    def __getstate__(self) -> dict[str, Any]:  # deepcopy / pickle: the bound pointers are per object
        state = self.__dict__.copy()
        state["_call"] = None
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> CompactLinear:  # .to(), .float(), ...: re-read pointers
        self._call = None
        return super()._apply(fn, recurse)

    def _bind(self) -> tuple[Any, ...]:
        """The kernel entry point and this layer's constant pointer arguments (checked once)."""
        lib = _kernel()
        tensors = [self.masks, self.values] + ([] if self.fixed_stride else [self.rowptr])
        if any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
            raise RuntimeError(f"{type(self).__name__} tensors must be contiguous CPU tensors")
        const = (
            None if self.fixed_stride else self.rowptr.data_ptr(),
            self.masks.data_ptr(),
            self.values.data_ptr(),
            self.bias.data_ptr() if self.bias is not None else None,
        )
        self._call = (lib.lib.pa_compact_mm, const, (*tensors, self.bias))
        return self._call

    def _check_sizes(self) -> None:
        raise NotImplementedError

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> CompactLinear:
        return cls(
            in_features,
            out_features,
            tensors["masks"],
            tensors["values"],
            tensors.get("bias"),
            tensors.get("rowptr"),
        )

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        fn, const, _ = self.__dict__.get("_call") or self._bind()
        dtype = x2d.dtype
        x = x2d if dtype == torch.float32 and x2d.is_contiguous() else x2d.to(torch.float32).contiguous()
        if x.device.type != "cpu":
            raise RuntimeError("the compiled sparse kernel runs on CPU only")
        n = x.shape[0]
        y = torch.empty((n, self.out_features), dtype=torch.float32)
        fn(
            *const,
            x.data_ptr(),
            y.data_ptr(),
            n,
            self.in_features,
            self.out_features,
            torch.get_num_threads(),
            int(self.scalar),
        )
        return y if dtype == torch.float32 else y.to(dtype)

    def dense_weight(self) -> torch.Tensor:
        w = torch.zeros(self.out_features, self.in_features, dtype=torch.float32)
        w[unpack_masks(self.masks, self.in_features)] = self.values[:-PAD]
        return w

    def stored_bytes(self) -> int:
        parts = [self.masks, self.values] + ([] if self.fixed_stride else [self.rowptr])
        return sum(t.numel() * t.element_size() for t in parts)


class BitmapLinear(CompactLinear):
    """Bitmap: uint16 masks per 16 inputs, packed fp32 values, int32 row pointers (any sparsity)."""

    format_name = "bitmap"

    def _check_sizes(self) -> None:
        if self.rowptr.shape != (self.out_features + 1,) or int(self.rowptr[-1]) != self.values.numel() - PAD:
            raise ValueError(f"bitmap: rowptr must have {self.out_features + 1} entries ending at the value count")

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, **kw: Any) -> BitmapLinear:
        w = weight.detach().float().cpu()
        keep = w != 0
        rowptr = torch.zeros(w.shape[0] + 1, dtype=torch.int32)
        rowptr[1:] = torch.cumsum(keep.sum(1), 0)
        return cls(w.shape[1], w.shape[0], pack_masks(keep), _padded(w[keep]), _bias_copy(_cpu(bias)), rowptr)

    @property
    def nnz(self) -> int:
        return int(self.values.numel()) - PAD


class NM24Linear(CompactLinear):
    """2:4 on CPU: the bitmap's masks with exactly 2 fp32 value slots per group of 4 inputs."""

    format_name = "nm24"
    fixed_stride = True

    def _check_sizes(self) -> None:
        if self.in_features % 4 or self.values.numel() != self.out_features * self.in_features // 2 + PAD:
            raise ValueError(f"nm24: needs in_features divisible by 4 and in/2 values per row "
                             f"({self.out_features}x{self.in_features}, {self.values.numel()} values)")  # fmt: skip

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, **kw: Any) -> NM24Linear:
        w = weight.detach().float().cpu()
        keep = nm24_slots(w)
        return cls(w.shape[1], w.shape[0], pack_masks(keep), _padded(w[keep]), _bias_copy(_cpu(bias)))

    @property
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.values))


def _padded(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values, torch.zeros(PAD, dtype=values.dtype)])


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().cpu()
