"""Specs of the built-in pruning methods: params models and metadata, no torch.

Each params model's docstring carries a YAML example of its sweep entry. Checks that
need no model (an N:M pattern with ``n >= m``, a gradual schedule that starts above
zero sparsity at ``steps: 0``) are made here, so that ``prune-audit validate`` reports
them with the file and line of the config. Checks that need the model's shapes (an
``m`` that does not divide a layer's input width, a head ratio that would remove every
head) are made by each pruner's ``validate``, before any pruning starts.

What "sparsity" means:

- unstructured methods (``magnitude``, ``wanda``, ``sparsegpt``, ``gradient``,
  ``gradual``, ``movement``, ``imp``): the fraction of zero weights in each pruned Linear layer (or across
  them, with ``scope: global``);
- N:M methods (``nm``, and ``wanda``/``sparsegpt`` with ``n``/``m`` set): at most ``n``
  non-zero weights in every group of ``m`` consecutive input weights of a row, so the
  pattern fixes the sparsity at ``1 - n/m``; the sweep runs such a method once per seed
  at that level, whatever ``sweep.sparsities`` lists;
- ``structured``: the fraction of attention heads and the fraction of FFN neurons
  physically removed in each transformer block. The achieved *weight* sparsity is
  counted on the real tensors against the original sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from audit.pruning.specs_activation import CatsParams, TealParams
from audit.pruning.specs_training import DistillParams, GradualParams, IMPParams, MovementParams
from audit.registry import PRUNERS, PluginParams, PrunerSpec

__all__ = ["CatsParams", "DistillParams", "GradualParams", "IMPParams", "MovementParams", "TealParams"]


class OwlParams(BaseModel):
    """OWL's hyper-parameters (Yin et al. 2024, arXiv:2310.05175): outlier threshold ``M``
    (a score is an outlier above ``M`` times its block's mean score) and the band ``lambda``
    (every block's sparsity stays within ``[S - lambda, S + lambda]``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    M: float = Field(5.0, gt=0.0, le=1e6, description="Outlier threshold, in multiples of the block's mean score.")
    lambda_: float = Field(
        0.08, alias="lambda", gt=0.0, lt=0.5, description="Half-width of the band of block sparsities around S."
    )


PROFILES = ("uniform", "owl", "blocks")


def parse_block_keys(blocks: dict[str, float]) -> dict[int, float]:
    """``{"0": 0.4, "1-3": 0.6}`` as ``{0: 0.4, 1: 0.6, 2: 0.6, 3: 0.6}``.

    Raises:
        ValueError: a key that is not ``i`` or ``i-j`` (``i <= j``), a block named twice, or a
            sparsity outside [0, 1).
    """
    out: dict[int, float] = {}
    for key, value in blocks.items():
        text = str(key).strip()
        lo, sep, hi = text.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ValueError(f"blocks: key {key!r} is not a block index or range (expected e.g. '0' or '1-3')")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"blocks: range {key!r} ends before it starts")
        v = float(value)
        if not (0.0 <= v < 1.0):
            raise ValueError(f"blocks: sparsity of {key!r} must be in [0, 1), found {value!r}")
        for i in range(a, b + 1):
            if i in out:
                raise ValueError(f"blocks: block {i} is given twice (in {key!r} and an earlier key)")
            out[i] = v
    if not out:
        raise ValueError("blocks: is empty; give every transformer block its sparsity, e.g. {'0-3': 0.6}")
    return out


class _Profiled(PluginParams):
    """A layer-wise sparsity profile: ``uniform`` (every layer at the sweep level), ``owl`` or ``blocks``.

    ``owl`` gives each transformer block its own sparsity from its share of outlier Wanda
    scores (calibration data needed, also for magnitude); ``owl:`` sets ``M`` and ``lambda``.
    ``blocks`` gives each transformer block the sparsity listed in ``blocks:`` (keys: a block
    index or an inclusive range ``i-j``; every block of the model must be listed); the sweep
    level then applies only to selected layers outside the blocks. ``sweep.allocate``
    produces its chosen allocation as a ``blocks`` profile. Under ``uniform`` the fields are
    left out of the params (and the store key).

    ```yaml
    sweep:
      methods:
        - {name: wanda, params: {profile: blocks, blocks: {"0": 0.5, "1": 0.7}}}
    ```
    """

    profile: Literal["uniform", "owl", "blocks"] = Field(
        "uniform",
        description="uniform: every layer at the sweep level; owl: per-block OWL sparsities; blocks: the "
        "per-block sparsities listed in `blocks`.",
    )
    owl: OwlParams | None = Field(None, description="OWL's M and lambda (profile: owl; default M 5, lambda 0.08).")
    blocks: dict[str, float] | None = Field(
        None,
        description="profile blocks: block index or inclusive range ('0', '1-3') -> that block's sparsity in [0, 1).",
    )

    @model_validator(mode="after")
    def _profile(self) -> _Profiled:
        if self.profile != "owl" and self.owl is not None:
            raise ValueError(f"owl settings are given but profile is {self.profile}; set profile: owl, or drop owl")
        if self.profile != "blocks" and self.blocks is not None:
            raise ValueError(f"blocks are given but profile is {self.profile}; set profile: blocks, or drop blocks")
        if self.profile == "owl" and self.owl is None:
            object.__setattr__(self, "owl", OwlParams())
        if self.profile == "blocks":
            if self.blocks is None:
                raise ValueError("profile blocks needs `blocks:` (block index or range -> sparsity)")
            parse_block_keys(self.blocks)
        if self.profile != "uniform":
            if getattr(self, "n", None) is not None:
                raise ValueError(
                    f"profile {self.profile} sets each block's sparsity, an N:M pattern fixes it: use one of them"
                )
            if getattr(self, "scope", "layer") == "global":
                raise ValueError(
                    f"profile {self.profile} sets each block's sparsity, scope global shares one threshold: "
                    "use scope layer"
                )
        return self

    @model_serializer(mode="wrap")
    def _drop_uniform(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("profile") == "uniform":
            data.pop("profile", None)
        for key in ("owl", "blocks"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def owl_params(self) -> OwlParams | None:
        """OWL's settings when the profile is owl, else None."""
        return self.owl if self.profile == "owl" else None

    @property
    def block_sparsities(self) -> dict[int, float] | None:
        """Block index -> sparsity when the profile is blocks, else None."""
        return parse_block_keys(self.blocks) if self.profile == "blocks" and self.blocks is not None else None


class MagnitudeParams(_Profiled):
    """Unstructured magnitude pruning (L1 of single weights).

    Deterministic: the seed does not change the mask.

    ```yaml
    sweep:
      methods:
        - name: magnitude
          params: {scope: global}   # or layer (default): same sparsity in every layer
    ```
    """

    scope: Literal["layer", "global"] = Field(
        "layer",
        description="layer: each layer pruned to the target; global: one threshold across layers.",
    )


class _NMPattern(PluginParams):
    """Optional N:M pattern: keep at most ``n`` weights in every ``m`` consecutive inputs."""

    n: int | None = Field(None, ge=1, description="Non-zero weights kept per group (N of N:M), e.g. 2 for 2:4.")
    m: int | None = Field(None, ge=2, le=128, description="Group size (M of N:M), e.g. 4 for 2:4.")

    @model_validator(mode="after")
    def _pattern(self) -> _NMPattern:
        if (self.n is None) != (self.m is None):
            raise ValueError("set both n and m for an N:M pattern (e.g. n: 2, m: 4), or neither")
        if self.n is not None and self.m is not None and not self.n < self.m:
            raise ValueError(f"N:M needs n < m (n weights kept of every m), found n={self.n}, m={self.m}")
        return self


class NMParams(_NMPattern):
    """N:M semi-structured magnitude pruning: in every group of ``m`` consecutive input
    weights of each output row, the ``m - n`` smallest |w| are zeroed (2:4 and 4:8 are
    50 % sparse and run on NVIDIA sparse tensor cores).

    Deterministic: the seed does not change the mask.

    ```yaml
    sweep:
      methods:
        - {name: nm, params: {n: 2, m: 4}}
        - {name: nm, params: {n: 4, m: 8}}
    ```
    """

    n: int | None = Field(2, ge=1, description="Non-zero weights kept per group (N of N:M).")
    m: int | None = Field(4, ge=2, le=128, description="Group size (M of N:M).")

    @model_validator(mode="after")
    def _required(self) -> NMParams:
        if self.n is None or self.m is None:
            raise ValueError("nm needs both n and m (e.g. n: 2, m: 4)")
        return self


class WandaParams(_NMPattern, _Profiled):
    """Wanda (Sun et al. 2023): score ``|W_ij| * ||X_j||_2`` with ``X`` the layer's input
    activations on the calibration set, compared within each output row; optionally
    N:M. Blocks are processed in order, each one seeing the outputs of the already
    pruned blocks before it.

    ```yaml
    sweep:
      methods:
        - wanda
        - {name: wanda, params: {n: 2, m: 4}}
    ```
    """


class SparseGPTParams(_NMPattern, _Profiled):
    """SparseGPT (Frantar & Alistarh 2023): one-shot pruning with second-order weight
    updates. ``H = 2 X X^T`` from calibration inputs, dampened by ``percdamp`` times its
    mean diagonal; columns are processed in blocks of ``blocksize`` with lazy batched
    updates; each block's mask is chosen adaptively by ``w^2 / [H^-1]_jj^2``; optional N:M.

    ```yaml
    sweep:
      methods:
        - {name: sparsegpt, params: {blocksize: 128, percdamp: 0.01}}
        - {name: sparsegpt, params: {n: 2, m: 4}}
    ```
    """

    blocksize: int = Field(128, ge=1, le=4096, description="Columns per lazy-update block.")
    percdamp: float = Field(0.01, gt=0.0, le=1.0, description="Dampening: fraction of mean(diag H) added to H.")

    @model_validator(mode="after")
    def _blocks(self) -> SparseGPTParams:
        if self.m is not None and self.blocksize % self.m != 0:
            raise ValueError(f"blocksize ({self.blocksize}) must be a multiple of m ({self.m})")
        return self


class GradientParams(PluginParams):
    """Gradient ("synaptic") importance from labelled calibration data.

    ``criterion: taylor`` scores each weight by ``sum_b |w * dL_b/dw|`` over calibration
    batches ``b`` (first-order Taylor, Molchanov et al. 2019); ``criterion: snip`` by
    ``|w * sum_b dL_b/dw|`` (connection sensitivity, Lee et al. 2019). The lowest scores
    are pruned per layer or across layers.

    ```yaml
    sweep:
      methods:
        - {name: gradient, params: {criterion: taylor, scope: layer}}
    ```
    """

    criterion: Literal["taylor", "snip"] = "taylor"
    scope: Literal["layer", "global"] = "layer"


class StructuredParams(PluginParams):
    """Structured pruning: whole attention heads and FFN neurons are removed, so the
    matrices shrink and the config records each block's kept heads and FFN width
    (``prune_audit_heads``, ``prune_audit_ffn_widths``). The sweep level is the
    fraction of heads and of FFN neurons removed in each block (rounded to the nearest
    whole head/neuron); removing every head of a block is refused. Units are ranked by
    the L2 (or L1) norm of their weights, or by an importance score from labelled
    calibration data: ``|sum x * dL/dx|`` of a gate on each head's context / each
    neuron's activation (Michel et al. 2019; Molchanov et al. 2017). Save and reload
    with :func:`audit.pruning.structured.save_pruned` /
    :func:`~audit.pruning.structured.load_pruned`. BERT-family encoders only.

    ```yaml
    sweep:
      methods:
        - {name: structured, params: {units: [heads, ffn], criterion: l2}}
        - {name: structured, params: {units: [heads], criterion: importance}}
    ```
    """

    units: list[Literal["heads", "ffn"]] = Field(
        default_factory=lambda: ["heads", "ffn"], min_length=1, description="What is removed."
    )
    criterion: Literal["l2", "l1", "importance"] = "l2"

    @model_validator(mode="after")
    def _unique(self) -> StructuredParams:
        if len(set(self.units)) != len(self.units):
            raise ValueError(f"units lists a unit twice: {self.units}")
        return self


class _QuantParams(PluginParams):
    """Shared by the quantization methods: an optional mask pruner run first (a hybrid).

    ``prune`` names an unstructured or N:M method (``magnitude``, ``wanda``, ``sparsegpt``,
    ``nm``, ``gradient``, ``gradual``, ``movement``, ``imp``) and ``prune_params`` its params; the layers are pruned
    at the sweep's sparsities (or the pattern's), then quantized. Without ``prune`` the method
    runs once per seed at sparsity 0 (its recorded achieved sparsity counts the weights that
    round to zero). The zero of every grid is exact, so a pruned weight stays zero.
    """

    prune: str | None = Field(None, description="A mask pruner run before quantizing (hybrid), e.g. wanda.")
    prune_params: dict[str, Any] = Field(default_factory=dict, description="That pruner's params.")

    @model_validator(mode="after")
    def _inner(self) -> _QuantParams:
        if self.prune is None:
            if self.prune_params:
                raise ValueError(
                    f"prune_params are given ({', '.join(sorted(self.prune_params))}) but no prune method; "
                    "set prune (e.g. prune: wanda) or drop prune_params"
                )
            return self
        if self.prune not in PRUNERS:
            raise ValueError(f"prune: {PRUNERS.unknown_message(self.prune)}")
        inner = PRUNERS.get(self.prune)
        if inner.structured or isinstance(inner, QuantizerSpec):
            kind = "removes units (shapes change)" if inner.structured else "is itself a quantization method"
            raise ValueError(
                f"prune: {self.prune!r} {kind}; a hybrid prunes with a mask method "
                "(magnitude, wanda, sparsegpt, nm, gradient, gradual, movement, imp) and then quantizes"
            )
        try:
            parsed = inner.params.model_validate(self.prune_params)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"prune_params for {self.prune!r}: {where}: {first['msg']}") from None
        object.__setattr__(self, "prune_params", parsed.model_dump(mode="json", exclude_defaults=True))
        return self

    def inner_params(self) -> PluginParams | None:
        """The hybrid's pruner params, validated (None without ``prune``)."""
        return None if self.prune is None else PRUNERS.get(self.prune).params.model_validate(self.prune_params)


class Int8DynamicParams(_QuantParams):
    """Dynamic int8 quantization, deployed on ``quantized::linear_dynamic`` (fbgemm, CPU): each
    selected layer's weight int8 per output channel (symmetric), its input quantized to uint8
    on every call (one scale and zero point over the call's whole input, 7-bit range).

    ```yaml
    sweep:
      methods:
        - int8_dynamic
        - {name: int8_dynamic, params: {prune: wanda}}            # hybrid: Wanda at the sweep level, then int8
    ```
    """


class Int8DynamicTokenParams(_QuantParams):
    """Dynamic int8 per token, deployed on ``aten::_int_mm`` (CPU): each selected layer's weight int8
    per output channel (symmetric), its input quantized on every call to int8 with one symmetric scale
    per token (row), as torchao's ``Int8DynamicActivationInt8WeightConfig``. Unlike ``int8_dynamic``,
    one outlier token does not coarsen the grid of the others (see ``bench/int8_dynamic_lm``).

    ```yaml
    sweep:
      methods:
        - int8_dynamic_token
        - {name: int8_dynamic_token, params: {prune: wanda}}
    ```
    """


class _WeightOnly(_QuantParams):
    activations: Literal["bf16", "fp32"] = Field(
        "bf16",
        description=(
            "The dtype the weight-only kernel runs in. bf16 (default): its vectorized CPU path; the layer's "
            "input and output are rounded to bf16 (fp32 accumulation, fp32 bias), and the audited reference "
            "rounds the same way. fp32: exact, but the pinned torch's fp32 path of these kernels is a slow "
            "fallback (measured 25-70x slower than bf16 at 64 rows)."
        ),
    )


class Int8WeightParams(_WeightOnly):
    """Weight-only int8, deployed on ``aten::_weight_int8pack_mm`` (CPU): weight int8 per output
    channel (symmetric, bf16-rounded scales), activations bf16 (``activations: fp32`` for the exact path).

    ```yaml
    sweep:
      methods:
        - int8_weight
        - {name: int8_weight, params: {prune: wanda, prune_params: {n: 2, m: 4}}}
    ```
    """


class Int4WeightParams(_WeightOnly):
    """Weight-only int4, deployed on ``aten::_weight_int4pack_mm_for_cpu`` (CPU): weight int4
    (symmetric, -7..7) with one scale per ``group_size`` consecutive inputs of a row; every
    quantized layer's input width must be a multiple of ``group_size``. Activations bf16, as for
    ``int8_weight``.

    ```yaml
    sweep:
      methods:
        - {name: int4_weight, params: {group_size: 32}}
    ```
    """

    group_size: Literal[32, 64, 128, 256] = Field(32, description="Inputs per scale (the CPU kernel's group sizes).")


@dataclass(frozen=True)
class QuantizerSpec(PrunerSpec):
    """A quantization method: what it needs is its hybrid pruner's, and it fixes sparsity 0 without one."""

    scheme: str = ""

    def _inner(self, params: PluginParams) -> tuple[PrunerSpec, PluginParams] | None:
        inner = params.inner_params()  # type: ignore[attr-defined]
        return None if inner is None else (PRUNERS.get(params.prune), inner)  # type: ignore[attr-defined]

    def uses_calibration(self, params: PluginParams) -> bool:
        inner = self._inner(params)
        return inner is not None and inner[0].uses_calibration(inner[1])

    def uses_labels(self, params: PluginParams) -> bool:
        inner = self._inner(params)
        return inner is not None and inner[0].uses_labels(inner[1])

    def implied_sparsity(self, params: dict[str, Any]) -> float | None:
        parsed = self.params.model_validate(params)
        if parsed.prune is None:  # type: ignore[attr-defined]
            return 0.0
        return PRUNERS.get(parsed.prune).implied_sparsity(parsed.prune_params)  # type: ignore[attr-defined]


def _quantizer(name: str, params: type[PluginParams], summary: str, criterion: str) -> PrunerSpec:
    return PRUNERS.register(
        QuantizerSpec(
            name=name, impl="audit.pruning.quantize:QuantizePruner", params=params,
            tags=("quantization", "hybrid"), summary=summary, criterion=criterion, scheme=name,
        )
    )  # fmt: skip


def _builtin(name: str, cls: str, params: type[PluginParams], tags: tuple[str, ...], **spec: Any) -> PrunerSpec:
    """Register a built-in pruner implemented by ``audit.pruning.<name>:<cls>``."""
    return PRUNERS.register(PrunerSpec(name=name, impl=f"audit.pruning.{name}:{cls}", params=params, tags=tags, **spec))


def _importance(params: StructuredParams) -> bool:
    return params.criterion == "importance"


def _owl(params: MagnitudeParams) -> bool:
    return params.profile == "owl"


MAGNITUDE = _builtin(
    "magnitude", "MagnitudePruner", MagnitudeParams, ("unstructured", "profile"), calibration_when=_owl,
    summary="Unstructured magnitude pruning (|w|), layer-wise or global; torch.nn.utils.prune.",
    criterion="|w| (L1 magnitude)",
)  # fmt: skip
NM = _builtin(
    "nm", "NMPruner", NMParams, ("semi-structured", "n:m"), nm=True,
    summary="N:M semi-structured magnitude pruning (2:4, 4:8): n kept of every m inputs per row.",
    criterion="|w| within each group of m consecutive inputs",
)  # fmt: skip
WANDA = _builtin(
    "wanda", "WandaPruner", WandaParams, ("unstructured", "n:m", "calibration", "profile"), nm=True,
    needs_calibration=True,
    summary="Wanda: |W|·||X|| with calibration activations, per output row; optionally N:M.",
    criterion="|W_ij|·||X_j||_2 per output row (Sun et al. 2023)",
)  # fmt: skip
SPARSEGPT = _builtin(
    "sparsegpt", "SparseGPTPruner", SparseGPTParams, ("unstructured", "n:m", "calibration", "profile"), nm=True,
    needs_calibration=True,
    summary="SparseGPT one-shot second-order pruning with weight reconstruction; optionally N:M.",
    criterion="w²/[H⁻¹]²_jj per block with OBS updates (Frantar & Alistarh 2023)",
)  # fmt: skip
GRADIENT = _builtin(
    "gradient", "GradientPruner", GradientParams, ("unstructured", "calibration", "labels"),
    needs_calibration=True, needs_labels=True,
    summary="Gradient (synaptic) importance |w·dL/dw| from labelled calibration data (Taylor/SNIP).",
    criterion="|w·∂L/∂w| (first-order Taylor / SNIP)",
)  # fmt: skip
STRUCTURED = _builtin(
    "structured", "StructuredPruner", StructuredParams, ("structured",),
    structured=True, calibration_when=_importance, labels_when=_importance,
    summary="Removes attention heads and FFN neurons physically (shapes shrink; HF config patched).",
    criterion="head / neuron weight norm, or gradient importance",
)  # fmt: skip
GRADUAL = _builtin(
    "gradual", "GradualPruner", GradualParams, ("unstructured", "calibration", "labels", "fine-tuning", "opt-in"),
    needs_calibration=True, needs_labels=True,
    summary="Gradual magnitude pruning on a cubic schedule with recovery fine-tuning (opt-in, slow).",
    criterion="|w| after each fine-tuning cycle (Zhu & Gupta 2017)",
)  # fmt: skip

MOVEMENT = _builtin(
    "movement", "MovementPruner", MovementParams,
    ("unstructured", "calibration", "labels", "fine-tuning", "opt-in"),
    needs_calibration=True, needs_labels=True,
    summary="Movement pruning: scores -sum W·dL/dW' accumulated while fine-tuning, top-k masks (opt-in, slow).",
    criterion="movement score −Σ W·∂L/∂W' over fine-tuning steps (Sanh et al. 2020)",
)  # fmt: skip
IMP = _builtin(
    "imp", "IMPPruner", IMPParams, ("unstructured", "calibration", "labels", "fine-tuning", "opt-in"),
    needs_calibration=True, needs_labels=True,
    summary="Iterative magnitude pruning with weight rewinding (lottery tickets; opt-in, slow).",
    criterion="|w| after each round's fine-tuning, survivors rewound (Frankle et al. 2019; Chen et al. 2020)",
)  # fmt: skip

INT8_DYNAMIC = _quantizer(
    "int8_dynamic", Int8DynamicParams,
    "Dynamic int8 (weights per channel, activations per call) on quantized::linear_dynamic; optional pruner first.",
    "round-to-nearest int8, symmetric per output channel",
)  # fmt: skip
INT8_DYNAMIC_TOKEN = _quantizer(
    "int8_dynamic_token", Int8DynamicTokenParams,
    "Dynamic int8 (weights per channel, activations per token) on aten::_int_mm; optional pruner first.",
    "round-to-nearest int8, symmetric per output channel",
)  # fmt: skip
INT8_WEIGHT = _quantizer(
    "int8_weight", Int8WeightParams,
    "Weight-only int8 per output channel on aten::_weight_int8pack_mm; optional pruner first.",
    "round-to-nearest int8, symmetric per output channel",
)  # fmt: skip
INT4_WEIGHT = _quantizer(
    "int4_weight", Int4WeightParams,
    "Weight-only int4 per group of inputs on aten::_weight_int4pack_mm_for_cpu; optional pruner first.",
    "round-to-nearest int4, symmetric per group of inputs",
)  # fmt: skip


def validate_point_params(point: object) -> None:
    """Re-validate a sweep point's params against its method's params model (torch-free),
    and check that a method that needs calibration data has a calibration split.

    Raises :class:`audit.errors.UsageError` naming the point, before any work starts.
    """
    from pydantic import ValidationError

    from audit.errors import UsageError

    spec = PRUNERS.get(point.method)  # type: ignore[attr-defined]
    try:
        params = spec.params.model_validate(point.params)  # type: ignore[attr-defined]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise UsageError(
            f"invalid params for {point.method}: {first['msg']}",  # type: ignore[attr-defined]
            where=f"sweep point {point.id}",  # type: ignore[attr-defined]
        ) from None
    calib = getattr(point, "calibration", None) or {}
    if spec.uses_calibration(params) and not calib.get("split"):
        raise UsageError(
            f"method {spec.name!r} needs calibration data but no calibration split is configured",
            where=f"sweep point {point.id}",  # type: ignore[attr-defined]
            hint="set data.splits.calibration (or sweep.calibration.split) to a split with labelled examples",
        )
