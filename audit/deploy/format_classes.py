"""What each deploy format does: whether it applies, how a layer converts, is timed and reloads.

One :class:`DeployFormat` subclass per registered :class:`~audit.deploy.formats.FormatSpec`
(the spec's ``impl`` names it). The converter (:mod:`audit.deploy.convert`), the timing of
candidates (:class:`audit.deploy.choose.LayerTimer`), saving and loading
(:mod:`audit.deploy.io`) and the record ask these classes; nothing else tests format names.
A third-party format subclasses :class:`DeployFormat` (and a
:class:`~audit.deploy.modules.DeployedLinear` for its layers) and registers a spec naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from audit.deploy.compact import BitmapLinear, NM24Linear, is_2_4
from audit.deploy.formats import DENSE, FORMATS, regime_parts, spec_of
from audit.deploy.modules import (
    DeployedLinear,
    KernelLinear,
    SemiStructuredLinear,
    TorchBSRLinear,
    TorchCSRLinear,
    format_of,
)

if TYPE_CHECKING:
    from audit.config import DeployConfig

Candidate = tuple[str, float]
"""(recorded format name, density to time it at)."""


def quantize_density(density: float, step: float = 0.01) -> float:
    """Round a density to the cache's grid (never to 0: a layer with non-zeros keeps some)."""
    q = round(density / step) * step
    return max(step, min(1.0, q))


def synthetic_weight(
    shape: tuple[int, int], density: float, *, block: int = 1, seed: int = 0, device: str = "cpu", dtype: Any = None
) -> torch.Tensor:
    """A random weight with exactly round(density · blocks) non-zero ``block x block`` blocks."""
    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = shape
    w = torch.randn(out_f, in_f, generator=gen)
    nb_r, nb_c = out_f // block, in_f // block
    nblocks = nb_r * nb_c
    keep = max(1, int(round(density * nblocks)))
    mask = torch.zeros(nblocks, dtype=torch.bool)
    mask[torch.randperm(nblocks, generator=gen)[:keep]] = True
    mask = mask.reshape(nb_r, nb_c)
    if block > 1:
        mask = mask.repeat_interleave(block, 0).repeat_interleave(block, 1)
    w = w * mask
    return w.to(device=device, dtype=dtype or torch.float32)


def synthetic_2_4(shape: tuple[int, int], *, seed: int = 0, device: str = "cpu", dtype: Any = None) -> torch.Tensor:
    """A random weight with exactly 2 non-zeros in every group of 4 inputs."""
    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = shape
    w = torch.randn(out_f, in_f, generator=gen)
    scores = torch.rand(out_f, in_f // 4, 4, generator=gen)
    keep = scores.argsort(dim=-1)[..., 2:]
    mask = torch.zeros(out_f, in_f // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
    return (w * mask.reshape(out_f, in_f)).to(device=device, dtype=dtype or torch.float16)


class DeployFormat:
    """One deploy format: its layer class, when it applies, how a layer converts, times and reloads."""

    name: ClassVar[str] = ""
    module: ClassVar[type[nn.Module]] = nn.Module
    """The class of the layers this format deploys (a :class:`DeployedLinear`, or ``nn.Linear`` for dense)."""

    # -- choosing ----------------------------------------------------------------------
    def unavailable(self, device: str, dtype: torch.dtype) -> str | None:
        """Why this format cannot run here at all (device, dtype, a missing kernel); None when it can."""
        return None

    def worth_noting(self, weight: torch.Tensor) -> bool:
        """Whether the format's unavailability matters for this weight (worth a note in the record)."""
        return True

    def applies_to(
        self, weight: torch.Tensor, density: float, config: DeployConfig
    ) -> tuple[list[Candidate], list[str]]:
        """The candidates this format offers for a weight, and why other variants of it do not apply."""
        return [(self.name, quantize_density(density))], []

    # -- building ----------------------------------------------------------------------
    def convert(self, recorded: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        """The deployed module of format ``recorded`` for a (masked) weight and bias."""
        return self.module.from_linear(weight, bias)  # type: ignore[attr-defined,no-any-return]

    def synthetic(
        self, recorded: str, shape: tuple[int, int], density: float, *, device: str, dtype: Any = None
    ) -> torch.Tensor:
        """A random weight of this shape and density that the format applies to (for timing)."""
        return synthetic_weight(shape, density, device=device, dtype=dtype)

    def load(
        self,
        in_features: int,
        out_features: int,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any],
        *,
        device: str = "cpu",
    ) -> nn.Module:
        """Rebuild a saved layer from its tensors and manifest ``meta`` (:func:`audit.deploy.io.load_deployed`)."""
        return self.module.from_state(in_features, out_features, tensors, meta)  # type: ignore[attr-defined,no-any-return]

    # -- the record --------------------------------------------------------------------
    def stored_bytes(self, module: nn.Module) -> int:
        """Bytes of the stored weight representation (values and indices; bias excluded)."""
        assert isinstance(module, DeployedLinear)
        return module.stored_bytes()


class DenseFormat(DeployFormat):
    """``nn.Linear``: what a layer stays when no sparse format wins."""

    name = DENSE
    module = nn.Linear

    def convert(self, recorded: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
        with torch.no_grad():
            lin.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
            if bias is not None:
                lin.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return lin

    def synthetic(
        self, recorded: str, shape: tuple[int, int], density: float, *, device: str, dtype: Any = None
    ) -> torch.Tensor:
        return synthetic_weight(shape, 1.0, device=device, dtype=dtype)

    def stored_bytes(self, module: nn.Module) -> int:
        assert isinstance(module, nn.Linear)
        return module.weight.numel() * module.weight.element_size()


class KernelFormat(DeployFormat):
    """The compiled CSR SpMM kernel (:mod:`audit.deploy.kernel`): CPU and fp32 only."""

    name = "kernel"
    module = KernelLinear

    def unavailable(self, device: str, dtype: torch.dtype) -> str | None:
        if device != "cpu":
            return f"{self.name}: CPU only"
        if dtype != torch.float32:
            return f"{self.name}: fp32 only (weights are {dtype})"
        from audit.deploy.kernel import kernel_status

        status = kernel_status()
        return None if status.available else f"{self.name}: {status.describe()}"


class BitmapFormat(KernelFormat):
    """The compiled kernel's bitmap format (:class:`~audit.deploy.compact.BitmapLinear`): CPU, fp32."""

    name = "bitmap"
    module = BitmapLinear


class _TwoFour:
    """Shared by the 2:4 formats: they apply to, are worth noting for, and time on 2:4 weights only."""

    name: ClassVar[str]
    synthetic_dtype: ClassVar[torch.dtype]

    def worth_noting(self, weight: torch.Tensor) -> bool:
        return is_2_4(weight)  # 2:4 kernels only matter for 2:4 weights

    def applies_to(
        self, weight: torch.Tensor, density: float, config: DeployConfig
    ) -> tuple[list[Candidate], list[str]]:
        if not is_2_4(weight):
            return [], [f"{self.name}: weight is not 2:4 sparse"]
        return [(self.name, 0.5)], []

    def synthetic(
        self, recorded: str, shape: tuple[int, int], density: float, *, device: str, dtype: Any = None
    ) -> torch.Tensor:
        return synthetic_2_4(shape, device=device, dtype=dtype or self.synthetic_dtype)


class NM24Format(_TwoFour, KernelFormat):
    """2:4 sparsity on CPU (:class:`~audit.deploy.compact.NM24Linear`): fp32 weights with 2 of every 4 inputs zero."""

    name = "nm24"
    module = NM24Linear
    synthetic_dtype = torch.float32


class CSRFormat(DeployFormat):
    """torch's CSR tensor (int32 indices)."""

    name = "csr"
    module = TorchCSRLinear


class BSRFormat(DeployFormat):
    """torch's BSR tensor, one candidate per block size of ``deploy.bsr_blocks`` (``bsr<b>``)."""

    name = "bsr"
    module = TorchBSRLinear

    @staticmethod
    def block(recorded: str) -> int:
        return int(recorded[3:])

    def applies_to(
        self, weight: torch.Tensor, density: float, config: DeployConfig
    ) -> tuple[list[Candidate], list[str]]:
        out: list[Candidate] = []
        skipped: list[str] = []
        for b in config.bsr_blocks:
            if weight.shape[0] % b or weight.shape[1] % b:
                skipped.append(f"bsr{b}: shape not divisible by {b}")
                continue
            bd = float(TorchBSRLinear.block_mask(weight, b).float().mean())
            if bd > config.max_block_density:
                skipped.append(f"bsr{b}: {bd:.0%} of blocks hold a non-zero")
                continue
            out.append((f"bsr{b}", quantize_density(bd)))
        return out, skipped

    def convert(self, recorded: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        return TorchBSRLinear.from_linear(weight, bias, block=self.block(recorded))

    def synthetic(
        self, recorded: str, shape: tuple[int, int], density: float, *, device: str, dtype: Any = None
    ) -> torch.Tensor:
        return synthetic_weight(shape, density, block=self.block(recorded), device=device, dtype=dtype)


class Semi24Format(_TwoFour, DeployFormat):
    """PyTorch's 2:4 semi-structured sparsity: CUDA, fp16/bf16, weights with 2 of every 4 inputs zero."""

    name = "semi24"
    module = SemiStructuredLinear
    synthetic_dtype = torch.float16

    def unavailable(self, device: str, dtype: torch.dtype) -> str | None:
        if device != "cuda":
            return "semi24: PyTorch's 2:4 semi-structured kernels need a CUDA device (none here)"
        if dtype not in (torch.float16, torch.bfloat16):
            return f"semi24: needs fp16/bf16 weights for 2:4 (weights are {dtype})"
        return None

    def load(
        self,
        in_features: int,
        out_features: int,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any],
        *,
        device: str = "cpu",
    ) -> nn.Module:
        return super().load(
            in_features, out_features, {k: v.to(device) for k, v in tensors.items()}, meta, device=device
        )


DENSE_FORMAT = DenseFormat()
_INSTANCES: dict[str, DeployFormat] = {}


def implementation(name: str) -> DeployFormat:
    """The format class (instantiated once) of a registered format name (``bsr``) ."""
    if name not in _INSTANCES:
        cls = FORMATS.get(name).load()
        if not (isinstance(cls, type) and issubclass(cls, DeployFormat)):
            from audit.errors import PluginError

            raise PluginError(f"deploy format {name!r}: {FORMATS.get(name).impl} is not a DeployFormat subclass")
        _INSTANCES[name] = cls()
    return _INSTANCES[name]


def format_for(recorded: str) -> DeployFormat:
    """The format of a recorded name: ``dense``, ``csr``, ``bsr16`` (→ the ``bsr`` format) ...

    A per-regime name (``bitmap|kernel``) gives :class:`audit.deploy.regime.RegimeFormat`, once both
    of its formats are known (a :class:`~audit.errors.PluginError` otherwise).
    """
    if recorded == DENSE:
        return DENSE_FORMAT
    parts = regime_parts(recorded)
    if parts is not None:
        for part in parts:
            if part != DENSE:
                spec_of(part)  # an unknown side is a PluginError, as for a single format
        from audit.deploy.regime import REGIME_FORMAT

        return REGIME_FORMAT
    return implementation(spec_of(recorded).name)


def stored_bytes(module: nn.Module) -> int:
    """Bytes of a layer's stored weight, as its format counts them."""
    return format_for(format_of(module)).stored_bytes(module)
