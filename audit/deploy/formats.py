"""The registry of deploy formats (torch-free): which sparse formats a layer may be deployed in.

A format is described by a :class:`FormatSpec` (its name, a one-line summary and the
``"module:attr"`` of its :class:`~audit.deploy.format_classes.DeployFormat` class, imported
only when a layer is deployed), registered like pruners and suites: built-ins here, third
parties through an entry point in the group ``prune_audit.deploy_formats``::

    [project.entry-points."prune_audit.deploy_formats"]
    blocked_ell = "my_pkg.formats:BLOCKED_ELL_FORMAT"     # a FormatSpec

or :func:`register_format` at import time. The names a config's ``deploy.formats`` lists,
the names recorded per layer (``LayerRecord.format``, ``DeploymentRecord.formats``) and the
names in a saved variant's manifest all resolve through :func:`spec_of`. A *parametric*
format records ``<name><int>`` (``bsr16``: BSR with 16 x 16 blocks).

``dense`` (``nn.Linear``) is not in the registry: it is always allowed, it is what a layer
stays when no sparse format wins, and it is the name :data:`DENSE`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from audit.errors import PluginError
from audit.registry import PluginSpec, Registry

DENSE = "dense"
"""The recorded format of an ordinary ``nn.Linear``."""

REGIME_SEP = "|"
"""Joins the two formats of a layer deployed per regime (``deploy.regime_split_tokens``):
``<decode format>|<prefill format>``, e.g. ``bitmap|kernel`` or ``bitmap|dense``."""


def regime_format(decode: str, prefill: str) -> str:
    """The recorded name of a layer that runs ``decode`` at decode token counts and ``prefill`` above them."""
    return f"{decode}{REGIME_SEP}{prefill}"


def regime_parts(recorded: str) -> tuple[str, str] | None:
    """(decode format, prefill format) of a per-regime name (``bitmap|kernel``); None for a single format."""
    if REGIME_SEP not in recorded:
        return None
    decode, _, prefill = recorded.partition(REGIME_SEP)
    return decode, prefill


@dataclass(frozen=True)
class FormatSpec(PluginSpec):
    """A deploy format, known without importing torch.

    ``impl`` names a :class:`~audit.deploy.format_classes.DeployFormat` subclass.
    """

    parametric: bool = False
    """Recorded names are ``<name><int>`` (one per parameter value, e.g. ``bsr4`` ... ``bsr32``)."""
    opt_in: bool = False
    """Not in ``deploy.formats``' default: it only wins at decode token counts (``choose_tokens: [1]``),
    so timing it at the default prefill counts would cost audit time for a format never chosen."""
    quantized: bool = False
    """Serves only layers a quantization method produced (:mod:`audit.deploy.quantized`); never a
    timing candidate, never listed in ``deploy.formats``."""
    produced_by: str = ""
    """Set for another format that serves only layers a sweep method produced (``an activation-sparsity
    method``): never a timing candidate, never listed in ``deploy.formats``, like a quantized one."""
    equivalence_hint: str = ""
    """What a deployment that used this format and failed its equivalence check is told (in its notes)."""

    @property
    def method_only(self) -> bool:
        """Whether only the layers a sweep method produced are deployed in this format."""
        return self.quantized or bool(self.produced_by)

    @property
    def producer(self) -> str:
        return self.produced_by or "a quantization method"

    def accepts(self, recorded: str) -> bool:
        """Whether a recorded format name (``csr``, ``bsr16``) is this format's."""
        if not self.parametric:
            return recorded == self.name
        return re.fullmatch(re.escape(self.name) + r"[0-9]+", recorded) is not None


FORMATS: Registry[FormatSpec] = Registry("deploy format", "prune_audit.deploy_formats", FormatSpec)

BUILTIN_FORMATS: tuple[FormatSpec, ...] = (
    FormatSpec(
        "kernel",
        "audit.deploy.format_classes:KernelFormat",
        "the compiled feature-major CSR SpMM kernel (CPU, fp32)",
    ),
    FormatSpec(
        "bitmap",
        "audit.deploy.format_classes:BitmapFormat",
        "compiled kernel: a bit per input + packed fp32 values (CPU, fp32; built for batch-1 decode)",
        opt_in=True,
    ),
    FormatSpec(
        "nm24",
        "audit.deploy.format_classes:NM24Format",
        "compiled kernel: 2:4 sparsity, a bit per input + 2 fp32 values per 4 inputs (CPU, fp32; batch-1 decode)",
        opt_in=True,
    ),
    FormatSpec("csr", "audit.deploy.format_classes:CSRFormat", "torch's CSR tensor with int32 indices"),
    FormatSpec(
        "bsr",
        "audit.deploy.format_classes:BSRFormat",
        "torch's BSR tensor with b x b blocks (bsr<b>, b from deploy.bsr_blocks)",
        parametric=True,
    ),
    FormatSpec(
        "int8_dynamic",
        "audit.deploy.quantized:Int8DynamicFormat",
        "quantized::linear_dynamic: int8 weight per output channel, uint8 activations per call (CPU)",
        opt_in=True,
        quantized=True,
        equivalence_hint=(
            "int8_dynamic quantizes each call's whole input on one 7-bit grid, so one outlier token coarsens "
            "every other row's step (causal LMs: bench/int8_dynamic_lm); int8_dynamic_token gives each token "
            "its own grid"
        ),
    ),
    FormatSpec(
        "int8_dynamic_token",
        "audit.deploy.quantized:Int8DynamicTokenFormat",
        "aten::_int_mm: int8 weight per output channel, int8 activations per token on every call (CPU)",
        opt_in=True,
        quantized=True,
    ),
    FormatSpec(
        "int8_weight",
        "audit.deploy.quantized:Int8WeightFormat",
        "aten::_weight_int8pack_mm: weight-only int8 per output channel, fp32 activations (CPU)",
        opt_in=True,
        quantized=True,
    ),
    FormatSpec(
        "int4_weight",
        "audit.deploy.quantized:Int4WeightFormat",
        "aten::_weight_int4pack_mm_for_cpu: weight-only int4 per group of inputs, fp32 activations (CPU)",
        opt_in=True,
        quantized=True,
    ),
    FormatSpec(
        "act_sparse",
        "audit.deploy.activation:ActivationSparseFormat",
        "compiled kernel pa_act_mm: dense input-major weight, rows of zero (gated) inputs skipped (CPU, fp32)",
        opt_in=True,
        produced_by="an activation-sparsity method",
    ),
    FormatSpec(
        "semi24",
        "audit.deploy.format_classes:Semi24Format",
        "PyTorch's 2:4 semi-structured sparsity (CUDA, fp16/bf16)",
    ),
)
for _spec in BUILTIN_FORMATS:
    FORMATS.register(_spec)

DEFAULT_FORMATS: tuple[str, ...] = tuple(s.name for s in BUILTIN_FORMATS if not s.opt_in)
"""``deploy.formats``' default, in the order candidates are tried (ties keep this order)."""


def register_format(spec: FormatSpec, *, replace: bool = False) -> FormatSpec:
    """Register a third-party deploy format."""
    return FORMATS.register(spec, replace=replace)


def spec_of(recorded: str) -> FormatSpec:
    """The spec of a recorded sparse format name (``bsr16`` → ``bsr``).

    Raises:
        PluginError: No registered format records that name.
    """
    if recorded in FORMATS:
        spec = FORMATS.get(recorded)
        if spec.accepts(recorded):
            return spec
    for spec in FORMATS:
        if spec.accepts(recorded):
            return spec
    known = ", ".join(f"{s.name}<n>" if s.parametric else s.name for s in FORMATS)
    raise PluginError(f"unknown deploy format {recorded!r}; known: {DENSE}, {known}")


def is_known(recorded: str) -> bool:
    """Whether ``recorded`` is ``dense`` or a registered format's name."""
    if recorded == DENSE:
        return True
    try:
        spec_of(recorded)
    except PluginError:
        return False
    return True


def equivalence_hints(recorded: Iterable[str]) -> list[str]:
    """The hints of the registered formats among ``recorded`` names (both sides of a per-regime one), each once."""
    out: list[str] = []
    for name in recorded:
        for part in regime_parts(name) or (name,):
            if part != DENSE and is_known(part) and (hint := spec_of(part).equivalence_hint) and hint not in out:
                out.append(hint)
    return out
