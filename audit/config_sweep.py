"""The sections of :class:`audit.config.AuditConfig` that say what is done to the model: the
pruning ``sweep:`` (methods, sparsities, seeds, layers, calibration) and ``deploy:`` (how each
pruned variant is converted, proven equivalent and timed).

Every name here is re-exported by :mod:`audit.config`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from audit.config_base import StrictModel, _err, plugin_params
from audit.deploy.formats import DEFAULT_FORMATS, DENSE, FORMATS, is_known, spec_of
from audit.registry import PRUNERS, PluginParams


class MethodConfig(StrictModel):
    """One pruning method of the sweep with its params."""

    name: str = Field(description="A registered pruning method (`prune-audit ls pruners`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The method's params (see Pruner params below).")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        return value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in PRUNERS:
            raise _err("unknown_method", PRUNERS.unknown_message(name), PRUNERS.suggest(name))
        return name

    @model_validator(mode="after")
    def _params(self) -> MethodConfig:
        object.__setattr__(self, "params", plugin_params(PRUNERS, "method", self.name, self.params))
        return self

    def typed_params(self) -> PluginParams:
        return PRUNERS.get(self.name).params.model_validate(self.params)


class CalibrationConfig(StrictModel):
    """Calibration examples for data-aware pruners (Wanda, SparseGPT, gradient)."""

    split: str | None = Field(None, description="Split to draw from (default: data.splits.calibration).")
    n: int = Field(128, ge=1, le=100_000, description="Calibration examples drawn for each sweep point.")
    seed: int = Field(
        0, ge=0, description="With each point's seed, seeds the draw: `default_rng([calibration.seed, point seed])`."
    )


class LayerSelection(StrictModel):
    """Which Linear layers are pruned; regexes match module names."""

    include: list[str] | None = Field(
        None,
        description="Regexes; a Linear layer is pruned if its name matches one. Unset: the model adapter's default "
        "(a classifier's: every Linear layer inside the encoder blocks).",
    )
    exclude: list[str] = Field(default_factory=list, description="Regexes; a matching Linear layer is not pruned.")
    overrides: dict[str, float] = Field(
        default_factory=dict,
        description="Regex -> sparsity for matching layers (overrides the sweep level).",
    )


class SelectionConfig(StrictModel):
    """The examples the allocation search judges its candidates on (never the eval examples)."""

    split: str = Field(
        description="A data split other than data.splits.eval (e.g. validation, or the calibration split). Rows "
        "whose text (and text pair) also occurs in the eval split are dropped, so the two are disjoint."
    )
    n: int | None = Field(
        None, ge=1, le=1_000_000, description="At most this many rows, a seeded sample (unset: the whole split)."
    )
    seed: int = Field(0, ge=0, description="Seeds the sample of `n` rows.")


class AllocateConfig(StrictModel):
    """Policy-guided per-block sparsity allocation: search per-block sparsities whose weight-weighted mean is
    ``target`` until the policy passes on a selection split, then audit the chosen allocation on the eval split
    as one more variant (``<method>-alloc``).

    Each evaluation prunes the dense model with a candidate ``profile: blocks`` allocation, runs the suites the
    policy's rules name on the selection split and judges the policy. From the start (OWL or uniform at the
    target), a failing candidate moves ``step`` of sparsity from the block whose restoring to dense improved the
    failing rules most per weight (measured once on the start, one evaluation per block) to the least sensitive
    one, keeping the weighted mean at the target; the search stops at the first passing allocation or when
    ``budget`` evaluations are spent.

    ```yaml
    sweep:
      methods: [wanda]
      sparsities: [0.5, 0.6]
      allocate:
        method: wanda
        policy: default          # unset: the run's policy
        target: 0.6
        budget: 12               # evaluations on the selection split (start + probes + trials)
        selection: {split: validation}
        start: owl
        step: 0.05
    ```
    """

    method: str | int = Field(
        description="One of sweep.methods: its name (when only one entry has it) or its index in the list."
    )
    policy: str | None = Field(
        None, description="Built-in policy name or path judged on the selection split (unset: the run's policy)."
    )
    target: float = Field(description="The overall (weight-weighted) sparsity every candidate keeps, in (0, 1).")
    budget: int = Field(
        12, ge=1, le=10_000, description="Most evaluations on the selection split (start + probes + trials)."
    )
    selection: SelectionConfig = Field(description="The selection split (disjoint from the eval split).")
    start: str = Field("owl", description="owl: OWL's per-block sparsities at the target; uniform: every block at it.")
    step: float = Field(0.05, gt=0.0, le=0.5, description="Sparsity moved off the most sensitive block per trial.")
    min_block_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="No block goes below this sparsity.")
    max_block_sparsity: float = Field(0.95, gt=0.0, lt=1.0, description="No block goes above this sparsity.")

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        if value not in ("owl", "uniform"):
            raise _err("allocate_start", f"sweep.allocate.start must be owl or uniform, found {value!r}")
        return value

    @model_validator(mode="after")
    def _range(self) -> AllocateConfig:
        if not (math.isfinite(self.target) and 0.0 < self.target < 1.0):
            raise _err("allocate_target", f"sweep.allocate.target must be in (0, 1), found {self.target!r}")
        if not (self.min_block_sparsity <= self.target <= self.max_block_sparsity):
            raise _err(
                "allocate_bounds",
                f"sweep.allocate.target {self.target:g} lies outside [min_block_sparsity, max_block_sparsity] = "
                f"[{self.min_block_sparsity:g}, {self.max_block_sparsity:g}]",
                "widen the block bounds or change the target",
            )
        return self


ALLOCATABLE = ("magnitude", "wanda", "sparsegpt")
"""Methods whose params take a per-block profile (``profile: blocks``)."""


class SweepConfig(StrictModel):
    """Methods × sparsities × seeds; the dense model is always the baseline."""

    methods: list[MethodConfig] = Field(
        default_factory=lambda: [MethodConfig(name="magnitude")],
        description="Methods: names, or `{name, params}` (a method may appear twice with different params).",
    )
    sparsities: list[float] = Field(
        default_factory=lambda: [0.5], description="Target sparsities in [0, 1) (N:M methods fix their own)."
    )
    seeds: list[int] = Field(default_factory=lambda: [0], description="One variant per seed at every level.")
    layers: LayerSelection = Field(default_factory=LayerSelection, description="Which Linear layers are pruned.")
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Calibration data of data-aware methods."
    )
    allocate: AllocateConfig | None = Field(
        None,
        exclude_if=lambda v: v is None,  # a config without it dumps (and fingerprints) as before
        description="Policy-guided per-block allocation (searched on a selection split, audited on eval).",
    )

    @model_validator(mode="after")
    def _allocate(self) -> SweepConfig:
        alloc = self.allocate
        if alloc is None:
            return self
        alloc_method(self)  # raises when it names no single method
        return self

    @field_validator("sparsities")
    @classmethod
    def _range(cls, values: list[float]) -> list[float]:
        if not values:
            raise _err("sweep_empty", "sweep.sparsities is empty; list at least one level")
        for v in values:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v < 1.0):
                raise _err(
                    "sparsity_range",
                    f"sparsity must be in [0, 1), found {v!r}",
                    "0.5 means half of the weights are zero",
                )
        if len(set(values)) != len(values):
            raise _err("sparsity_dup", f"sweep.sparsities has duplicates: {values}")
        return values

    @field_validator("sparsities")
    @classmethod
    def _owl_band(cls, values: list[float], info: ValidationInfo) -> list[float]:
        """A method with ``profile: owl`` keeps every block sparsity ``S ± lambda`` in [0, 1) at every level."""
        for i, method in enumerate(info.data.get("methods") or []):
            owl = method.params.get("owl") if method.params.get("profile") == "owl" else None
            if not owl:
                continue
            lam = float(owl["lambda"])
            bad = next((v for v in values if not (v - lam >= 0.0 and v + lam < 1.0)), None)
            if bad is not None:
                raise _err(
                    "owl_lambda",
                    f"sweep.methods[{i}] ({method.name}, profile owl): lambda {lam:g} at sparsity {bad:g} gives "
                    f"block sparsities in [{bad - lam:g}, {bad + lam:g}]; every S_l must be in [0, 1)",
                    f"lambda must be at most {min(min(values), 1.0 - max(values) - 1e-9):.4g} for these "
                    "sparsities (owl.lambda), or drop the offending level",
                )
        return values

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int]) -> list[int]:
        if not values:
            raise _err("sweep_empty", "sweep.seeds is empty; list at least one seed")
        if any(v < 0 for v in values):
            raise _err("seed_range", f"seeds must be non-negative, found {values}")
        if len(set(values)) != len(values):
            raise _err("seed_dup", f"sweep.seeds has duplicates: {values}")
        return values

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[MethodConfig]) -> list[MethodConfig]:
        if not values:
            raise _err("sweep_empty", "sweep.methods is empty; list at least one method")
        return values


def alloc_method(sweep: SweepConfig) -> tuple[int, MethodConfig]:
    """(index, entry) of the sweep method ``sweep.allocate.method`` names; a config error when none or several."""
    alloc = sweep.allocate
    assert alloc is not None
    names = [m.name for m in sweep.methods]
    if isinstance(alloc.method, int):
        if not 0 <= alloc.method < len(names):
            raise _err(
                "allocate_method",
                f"sweep.allocate.method is index {alloc.method}, but sweep.methods has {len(names)} entries",
                f"use an index in 0-{len(names) - 1} or a method name ({', '.join(names)})",
            )
        i = alloc.method
    else:
        found = [i for i, n in enumerate(names) if n == alloc.method]
        if len(found) != 1:
            what = "is not among" if not found else f"appears {len(found)} times in"
            raise _err(
                "allocate_method",
                f"sweep.allocate.method {alloc.method!r} {what} sweep.methods ({', '.join(names)})",
                "name one listed method, or give its index in sweep.methods",
            )
        i = found[0]
    method = sweep.methods[i]
    if method.name not in ALLOCATABLE:
        raise _err(
            "allocate_method",
            f"sweep.allocate.method is {method.name!r}, which takes no per-block sparsities",
            f"allocate one of {', '.join(ALLOCATABLE)} (unstructured)",
        )
    p = method.params
    if p.get("n") is not None or p.get("scope") == "global" or p.get("profile", "uniform") == "blocks":
        raise _err(
            "allocate_method",
            f"sweep.methods[{i}] ({method.name}) has an N:M pattern, scope global or a blocks profile; the "
            "allocation sets each block's sparsity itself",
            "allocate an unstructured, layer-scoped entry (profile uniform or owl)",
        )
    return i, method


class DeployConfig(StrictModel):
    """How each pruned variant is deployed, proven equivalent and measured.

    Every pruned variant is converted to the form that ships before any suite runs:
    layers without zeros stay dense (structured pruning), other layers get the fastest
    format measured for their shape and density (``kernel``: the compiled sparse kernel;
    ``csr``/``bsr``: torch's CSR/BSR; ``semi24``: 2:4 on CUDA), or stay dense where no
    sparse format is at least ``min_speedup`` times faster. The deployed model must
    match its masked-dense reference on a probe batch within ``tolerance``, else the
    variant is an ERROR.

    ```yaml
    deploy:
      formats: [kernel, csr, bsr]
      speed_seq_len: 128
      save_variants: true     # <output_dir>/variants/<variant id>/ (safetensors + config)
    ```
    """

    enabled: bool = Field(True, description="Deploy, verify and measure every pruned variant.")
    formats: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FORMATS), description="Sparse formats that may be chosen (registered)."
    )
    bsr_blocks: list[int] = Field(default_factory=lambda: [4, 8, 16, 32], description="BSR block sizes to try.")
    force_format: str | None = Field(
        None,
        description="Use this format (dense, kernel, csr, bsr<b>, semi24 or a registered format's name) wherever "
        "it applies, without timing (for inspection; skips the speed guard).",
    )
    min_speedup: float = Field(
        1.1, ge=1.0, description="A sparse format must be this much faster than dense at every timed token count."
    )
    max_density: float = Field(0.5, gt=0.0, le=1.0, description="Denser layers stay dense without timing.")
    max_block_density: float = Field(0.5, gt=0.0, le=1.0, description="BSR is tried up to this block density.")
    choose_tokens: list[int] = Field(
        default_factory=lambda: [128, 1024], description="Token counts (batch x sequence) at which formats are timed."
    )
    regime_split_tokens: int | None = Field(
        None,
        ge=1,
        description="Decide each layer's format per regime: the choose_tokens counts at or below this many tokens "
        "are the decode regime, those above it the prefill regime, each decided under min_speedup on its own. A layer "
        "whose regimes pick different formats holds both and routes each call by its token count (recorded as "
        "<decode>|<prefill>, e.g. bitmap|kernel; its bytes are both formats'). choose_tokens must then list counts "
        "on both sides (e.g. [1, 128]). Unset (default): one format per layer, faster at every count.",
    )
    timing_min_s: float = Field(0.2, gt=0.0, le=60.0, description="Minimum timing time per format and token count.")
    timing_cache: bool = Field(True, description="Reuse format timings across runs (user cache directory).")
    probe_size: int = Field(64, ge=1, le=100_000, description="Eval examples in the equivalence probe batch.")
    tolerance: float | None = Field(
        None,
        gt=0.0,
        description="A fixed largest allowed |deployed - masked-dense| logit difference; unset (default), it is "
        "scaled to the logits: tolerance_factor x eps(dtype) x max(1, max|logit|) x sqrt(K x D) "
        "(audit/deploy/verify.py).",
    )
    tolerance_factor: float = Field(
        2.0, gt=0.0, le=1e6, description="c of the scaled tolerance (measured worst case: 0.1; see verify.py)."
    )
    measure_speed: bool = Field(True, description="Time batch-1 latency and batch throughput, dense vs deployed.")
    speed_cache: bool = Field(
        True,
        description="Reuse this machine's speed measurement of an unchanged deployed variant (same weights, "
        "formats and settings), so that re-running an audit re-gates the same figure.",
    )
    speed_seq_len: int = Field(128, ge=1, le=8192, description="Sequence length (tokens) of the speed timings.")
    speed_batch_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="Batch size of the throughput timings (metrics `speedup_b<N>`, `throughput_b<N>`).",
    )
    speed_min_time_s: float = Field(
        0.2, gt=0.0, le=600.0, description="Minimum timing time of each model, batch size and round."
    )
    speed_rounds: int = Field(
        7,
        ge=3,
        le=101,
        description="Interleaved dense/deployed timing rounds after a warm-up; speed-ups are the median "
        "per-round ratio with an order-statistic CI of the median (7 rounds: [min, max], 98.4 %)",
    )
    save_variants: bool = Field(False, description="Save each deployed variant under <output_dir>/variants/<id>/.")

    @field_validator("bsr_blocks")
    @classmethod
    def _blocks(cls, values: list[int]) -> list[int]:
        if not values or any(not (2 <= v <= 256) for v in values):
            raise _err("bsr_blocks", f"bsr_blocks must be block sizes between 2 and 256, found {values}")
        return sorted(set(values))

    @field_validator("choose_tokens")
    @classmethod
    def _tokens(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise _err("choose_tokens", f"choose_tokens must list positive token counts, found {values}")
        return sorted(set(values))

    @model_validator(mode="after")
    def _regimes(self) -> DeployConfig:
        split = self.regime_split_tokens
        if split is not None:
            decode = [t for t in self.choose_tokens if t <= split]
            prefill = [t for t in self.choose_tokens if t > split]
            if not decode or not prefill:
                side = "at or below" if not decode else "above"
                raise _err(
                    "regime_split_tokens",
                    f"regime_split_tokens {split} needs choose_tokens on both sides of it, but none of "
                    f"{self.choose_tokens} is {side} {split}: list a decode count and a prefill count "
                    f"(e.g. choose_tokens: [1, 128] with regime_split_tokens: 8), or unset regime_split_tokens",
                )
        return self

    @field_validator("formats")
    @classmethod
    def _formats(cls, values: list[str]) -> list[str]:
        bad = next((v for v in values if v not in FORMATS), None)
        if bad is not None:
            listable = ", ".join(sorted(s.name for s in FORMATS if not s.method_only))
            raise _err("deploy_format", f"unknown deploy format {bad!r}; known: {listable}", FORMATS.suggest(bad))
        quant = next((v for v in values if FORMATS.get(v).method_only), None)
        if quant is not None:
            what = "a quantized format" if FORMATS.get(quant).quantized else "a method's format"
            raise _err(
                "deploy_format",
                f"deploy.formats lists {quant!r}, {what}: it serves only layers {FORMATS.get(quant).producer} "
                "produced, and is never chosen for a plain weight",
                f"drop {quant!r} from deploy.formats and add a sweep method instead, e.g. "
                f"sweep.methods: [{{name: {quant}}}]",
            )
        return list(dict.fromkeys(values))

    @field_validator("force_format")
    @classmethod
    def _force_format(cls, value: str | None) -> str | None:
        if value is not None and not is_known(value):
            raise _err(
                "deploy_format", f"force_format must be {DENSE} or a deploy format's name (bsr<b>), found {value!r}"
            )
        if value is not None and value != DENSE and spec_of(value).method_only:
            raise _err(
                "deploy_format",
                f"force_format is {value!r}, {'a quantized format' if spec_of(value).quantized else 'a method format'}"
                f" that serves only layers {spec_of(value).producer} produced: it cannot be forced onto other weights",
                f"unset deploy.force_format and add a sweep method instead, e.g. sweep.methods: [{{name: {value}}}]",
            )
        return value
