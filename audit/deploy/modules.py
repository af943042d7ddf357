"""Deployed Linear layers: each stores only what its format needs and runs its own kernel.

The layer classes of the built-in formats (the name is what :class:`~audit.results.LayerRecord`
records; which format applies where, and how it converts and reloads, is
:mod:`audit.deploy.format_classes`):

* ``dense``: an ordinary :class:`torch.nn.Linear` (structured variants are physically
  smaller dense layers and stay in this format).
* ``kernel``: :class:`KernelLinear`, CSR rows of the weight with int32 row pointers and
  uint16 column indices (int32 when ``in_features`` > 65535), run by the compiled
  feature-major SpMM kernel (:mod:`audit.deploy.kernel`).
* ``bitmap`` and ``nm24`` (2:4 on CPU): compact formats for batch-1 decode, a bit per input
  and packed fp32 values, run by the same compiled kernel (:mod:`audit.deploy.compact`).
* ``csr``: :class:`TorchCSRLinear`, torch's CSR tensor with int32 indices (never the
  int64 default, which costs time and 50 % more bytes), ``torch.addmm(b, W, x.T).T``.
* ``bsr<b>``: :class:`TorchBSRLinear`, torch's BSR tensor with ``b x b`` blocks.
* ``semi24``: :class:`SemiStructuredLinear`, PyTorch's 2:4 semi-structured sparsity
  (CUDA only; fp16/bf16 weights).
* ``<decode>|<prefill>`` (``bitmap|kernel``, ``bitmap|dense``): :class:`audit.deploy.regime.RegimeLinear`,
  one format per regime, routed by the call's token count (``deploy.regime_split_tokens``).

Every deployed module keeps its tensors as plain dense buffers (so ``state_dict`` and
safetensors work), reports the bytes it stores, and can rebuild its dense weight (used
by the backward pass and by tests; never on the forward path).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from audit.deploy.formats import DENSE


def csr_arrays(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row pointers int32, column indices int64, values) of the non-zeros of a 2-D weight."""
    w = weight.detach()
    nz = w != 0
    counts = nz.sum(dim=1)
    rowptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64, device=w.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    rows, cols = nz.nonzero(as_tuple=True)
    values = w[rows, cols].contiguous()
    return rowptr.to(torch.int32), cols, values


def _bias_copy(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().clone().contiguous()


def _kernel() -> Any:
    from audit.deploy.kernel import kernel_status, load_kernel

    lib = load_kernel()
    if lib is None:
        raise RuntimeError(kernel_status().describe())
    return lib


class _InputGrad(torch.autograd.Function):
    """Gradient with respect to the input only (the weights of an audited model are frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: DeployedLinear) -> torch.Tensor:  # type: ignore[override]
        ctx.module = module
        return module._run(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        w = ctx.module.dense_weight().to(grad.dtype)
        return grad @ w, None


class DeployedLinear(nn.Module):
    """Base class: ``y = x @ W.T + b`` with W stored in a sparse format."""

    format_name: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    # -- interface -------------------------------------------------------------------
    @property
    def format(self) -> str:
        return self.format_name

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        """The format's forward on a 2-D input (tokens, in_features)."""
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense (out, in) tensor, zeros included."""
        raise NotImplementedError

    def stored_bytes(self) -> int:
        """Bytes of the stored weight representation (values and indices; bias excluded)."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """What :meth:`from_state` needs besides the tensors (saved in the manifest)."""
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors :meth:`from_state` rebuilds this module from (saved to safetensors)."""
        return {name: t for name, t in self._buffers.items() if t is not None}

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, **kw: Any) -> DeployedLinear:
        raise NotImplementedError

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> DeployedLinear:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.dense_weight()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 2
        x2 = x if flat else x.reshape(-1, self.in_features)
        y = _InputGrad.apply(x2, self) if x2.requires_grad and torch.is_grad_enabled() else self._run(x2)
        return y if flat else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


class KernelLinear(DeployedLinear):
    """CSR weight (int32 row pointers, uint16 column indices) run by the compiled kernel."""

    def __getstate__(self) -> dict[str, Any]:  # deepcopy / pickle: the bound pointers are per object
        state = self.__dict__.copy()
        state["_call"] = None
        return state

    format_name = "kernel"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rowptr: torch.Tensor,
        cols: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__(in_features, out_features)
        _kernel()  # fail here, at deployment, if the kernel is unavailable
        self.register_buffer("rowptr", rowptr.to(torch.int32).contiguous())
        self.register_buffer("cols", cols.contiguous())
        self.register_buffer("values", values.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32).contiguous())
        self._call: tuple[Any, ...] | None = None

    @staticmethod
    def index_dtype(in_features: int) -> torch.dtype:
        """uint16 indices (stored as int16 bits) when they fit, else int32."""
        return torch.int16 if in_features <= 65536 else torch.int32

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, **kw: Any) -> KernelLinear:
        out_f, in_f = weight.shape
        rowptr, cols, values = csr_arrays(weight.float().cpu())
        if cls.index_dtype(in_f) == torch.int16:
            cols = cols.to(torch.int32).to(torch.uint16).view(torch.int16)
        else:
            cols = cols.to(torch.int32)
        return cls(in_f, out_f, rowptr, cols, values, _bias_copy(bias.cpu() if bias is not None else None))

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> KernelLinear:
        return cls(
            in_features, out_features, tensors["rowptr"], tensors["cols"], tensors["values"], tensors.get("bias")
        )

    def _col_index(self) -> torch.Tensor:
        if self.cols.dtype == torch.int16:
            return self.cols.to(torch.int64) & 0xFFFF
        return self.cols.to(torch.int64)

    def _apply(self, fn: Any, recurse: bool = True) -> KernelLinear:  # .to(), .float(), ...: re-read pointers
        self._call = None
        return super()._apply(fn, recurse)

    def _bind(self) -> Any:
        """The kernel entry point with this layer's constant arguments bound (data pointers)."""
        lib = _kernel()
        for name, t in (("rowptr", self.rowptr), ("cols", self.cols), ("values", self.values)):
            if t.device.type != "cpu" or not t.is_contiguous():
                raise RuntimeError(f"KernelLinear.{name} must be a contiguous CPU tensor")
        fn = lib.lib.pa_spmm_u16 if self.cols.dtype == torch.int16 else lib.lib.pa_spmm_i32
        const = (
            self.rowptr.data_ptr(),
            self.cols.data_ptr(),
            self.values.data_ptr(),
            self.bias.data_ptr() if self.bias is not None else None,
        )
        keep = (self.rowptr, self.cols, self.values, self.bias)  # the pointers stay valid while these live
        self._call = (lib, fn, const, keep)
        return self._call

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        call = self.__dict__.get("_call") or self._bind()
        lib, fn, const, _ = call
        dtype = x2d.dtype
        x = x2d if dtype == torch.float32 and x2d.is_contiguous() else x2d.to(torch.float32).contiguous()
        if x.device.type != "cpu":
            raise RuntimeError("the compiled sparse kernel runs on CPU only")
        n = x.shape[0]
        y = torch.empty((n, self.out_features), dtype=torch.float32)
        work = lib.workspace(n, self.in_features)
        fn(*const, x.data_ptr(), y.data_ptr(), n, self.in_features, self.out_features, torch.get_num_threads(), work)
        return y if dtype == torch.float32 else y.to(dtype)

    def dense_weight(self) -> torch.Tensor:
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype)
        counts = (self.rowptr[1:] - self.rowptr[:-1]).to(torch.int64)
        rows = torch.repeat_interleave(torch.arange(self.out_features), counts)
        w[rows, self._col_index()] = self.values
        return w

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rowptr, self.cols, self.values))

    @property
    def nnz(self) -> int:
        return int(self.values.numel())


class _TorchSparseLinear(DeployedLinear):
    """Shared code of torch's compressed formats (int32 indices, ``torch.addmm``)."""

    layout: ClassVar[torch.layout]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        crow: torch.Tensor,
        col: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("crow", crow.to(torch.int32).contiguous())
        self.register_buffer("col", col.to(torch.int32).contiguous())
        self.register_buffer("values", values.contiguous())
        self.register_buffer("bias", None if bias is None else bias.contiguous())
        self._cache: tuple[tuple[int, ...], torch.Tensor] | None = None

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> _TorchSparseLinear:
        return cls(in_features, out_features, tensors["crow"], tensors["col"], tensors["values"], tensors.get("bias"))

    def _sparse(self) -> torch.Tensor:
        """The torch sparse tensor over the buffers (rebuilt only when a buffer changed)."""
        key = tuple(t.data_ptr() for t in (self.crow, self.col, self.values))
        if self._cache is None or self._cache[0] != key:
            make = torch.sparse_csr_tensor if self.layout == torch.sparse_csr else torch.sparse_bsr_tensor
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
                w = make(
                    self.crow, self.col, self.values, size=(self.out_features, self.in_features), check_invariants=False
                )
            self._cache = (key, w)
        return self._cache[1]

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        w = self._sparse()
        x = x2d.to(self.values.dtype)
        if self.bias is not None:
            y = torch.addmm(self.bias[:, None], w, x.T).T
        else:
            y = (w @ x.T).T
        return y.to(x2d.dtype)

    def dense_weight(self) -> torch.Tensor:
        return self._sparse().to_dense()

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.crow, self.col, self.values))

    def __getstate__(self) -> dict[str, Any]:  # deepcopy / pickle: drop the cached sparse view
        state = self.__dict__.copy()
        state["_cache"] = None
        return state


class TorchCSRLinear(_TorchSparseLinear):
    """torch CSR (int32 indices) through MKL's sparse BLAS."""

    format_name = "csr"
    layout = torch.sparse_csr

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, **kw: Any) -> TorchCSRLinear:
        out_f, in_f = weight.shape
        crow, col, values = csr_arrays(weight)
        return cls(in_f, out_f, crow, col, values, _bias_copy(bias))


class TorchBSRLinear(_TorchSparseLinear):
    """torch BSR with square ``block x block`` blocks (int32 indices)."""

    layout = torch.sparse_bsr

    def __init__(self, *args: Any, block: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.block = int(block)

    @property
    def format(self) -> str:
        return f"bsr{self.block}"

    def meta(self) -> dict[str, Any]:
        return {"block": self.block}

    @staticmethod
    def block_mask(weight: torch.Tensor, block: int) -> torch.Tensor:
        """(out/b, in/b) bool: which blocks hold a non-zero."""
        out_f, in_f = weight.shape
        nz = (weight.detach() != 0).reshape(out_f // block, block, in_f // block, block)
        return nz.any(dim=3).any(dim=1)

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, **kw: Any) -> TorchBSRLinear:
        block = int(kw["block"])
        out_f, in_f = weight.shape
        if out_f % block or in_f % block:
            raise ValueError(f"bsr{block} needs both dimensions divisible by {block}, got {out_f}x{in_f}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
            bsr = weight.detach().to_sparse_bsr((block, block))
        return cls(
            in_f,
            out_f,
            bsr.crow_indices(),
            bsr.col_indices(),
            bsr.values(),
            _bias_copy(bias),
            block=block,
        )

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> TorchBSRLinear:
        return cls(
            in_features,
            out_features,
            tensors["crow"],
            tensors["col"],
            tensors["values"],
            tensors.get("bias"),
            block=int(meta["block"]),
        )


class SemiStructuredLinear(DeployedLinear):
    """2:4 semi-structured sparsity through ``torch.sparse.to_sparse_semi_structured`` (CUDA only).

    The dense (masked) weight is what is saved; it is compressed again on load.
    """

    format_name = "semi24"

    def __init__(self, in_features: int, out_features: int, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(in_features, out_features)
        from torch.sparse import to_sparse_semi_structured

        if weight.device.type != "cuda":
            raise RuntimeError("2:4 semi-structured sparsity needs a CUDA device")
        self.weight = nn.Parameter(to_sparse_semi_structured(weight.detach().contiguous()), requires_grad=False)
        self.register_buffer("bias", _bias_copy(bias))

    @staticmethod
    def is_2_4(weight: torch.Tensor) -> bool:
        """At most 2 non-zeros in every group of 4 consecutive inputs."""
        out_f, in_f = weight.shape
        if in_f % 4:
            return False
        return bool(((weight.detach() != 0).reshape(out_f, in_f // 4, 4).sum(-1) <= 2).all())

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, **kw: Any) -> SemiStructuredLinear:
        out_f, in_f = weight.shape
        return cls(in_f, out_f, weight, bias)

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> SemiStructuredLinear:
        return cls(in_features, out_features, tensors["weight"], tensors.get("bias"))

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x2d.to(self.weight.dtype), self.weight, self.bias).to(x2d.dtype)

    def dense_weight(self) -> torch.Tensor:
        return self.weight.to_dense()

    def stored_bytes(self) -> int:
        w = self.weight
        parts = [getattr(w, name, None) for name in ("packed", "meta", "packed_t", "meta_t")]
        return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.dense_weight()}


def format_of(module: nn.Module) -> str:
    """The recorded format name of a layer (``dense`` for an ``nn.Linear``)."""
    return module.format if isinstance(module, DeployedLinear) else DENSE


def top_level_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Linear`` and :class:`DeployedLinear` that is not inside a deployed layer.

    A deployed layer may hold modules of its own (a per-regime layer holds one per regime,
    :class:`audit.deploy.regime.RegimeLinear`); those are part of it, not layers of the model.
    """
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in inside):
            continue
        if isinstance(module, (nn.Linear, DeployedLinear)):
            out.append((name, module))
        if isinstance(module, DeployedLinear):
            inside.append(name + ".")
    return out
