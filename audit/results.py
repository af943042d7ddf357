"""The result model: what a run measured, in a versioned, torch-free schema.

``results.json`` is a serialised :class:`RunResult`. Measuring and judging are
separate: the verdict is computed from a ``RunResult`` by :mod:`audit.policy`, so
``prune-audit check`` can re-gate a saved file without loading a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_serializer, model_validator

from audit.errors import UsageError

SCHEMA_VERSION = "1.0"
BASELINE_ID = "dense"


class Record(BaseModel):
    """Base of result records: unknown keys are errors, so schema drift is caught."""

    model_config = ConfigDict(extra="forbid")


def _finite(value: Any) -> float | None:
    """NaN and infinities are stored as null (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


Num = Annotated[float | None, BeforeValidator(_finite)]


class GroupValue(Record):
    """A metric's value for one group."""

    value: Num
    ci_low: Num = None
    ci_high: Num = None
    n: int = 0
    small_n: bool = False


class Measurement(Record):
    """One metric of one suite on one dataset, with its CI and per-group values.

    ``groups`` maps a sensitive feature (or ``"a&b"`` for an intersection) to
    group → :class:`GroupValue`.
    """

    suite: str
    dataset: str
    metric: str
    value: Num
    ci_low: Num = None
    ci_high: Num = None
    ci_method: str | None = None
    n: int = 0
    groups: dict[str, dict[str, GroupValue]] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.dataset}/{self.metric}"


class QuantLayerRecord(Record):
    """How a quantization method stored one layer (absent for layers it did not quantize)."""

    scheme: str = Field(description="int8_dynamic, int8_dynamic_token, int8_weight or int4_weight.")
    bits: int = Field(description="Bits per stored weight.")
    granularity: str = Field(description="What one scale covers (per output channel, per group of g inputs).")
    activations: str = Field(description="How the layer's inputs are represented when it runs.")
    kernel: str = Field(description="The torch operator that runs the deployed layer.")
    zeros_before: int = Field(0, description="Zero weights before quantizing (a hybrid's pruned weights).")
    zeros_kept: bool = Field(True, description="Every one of them is still exactly zero after quantizing.")


class ActivationLayerRecord(Record):
    """How an activation-sparsity method gates one layer's input (absent for other methods)."""

    gate: str = Field(description="Where the gate sits: 'input' (TEAL) or the path of the gated activation (CATS).")
    threshold: float = Field(description="Inputs of magnitude below this are zeroed (calibrated).")
    target: float = Field(description="The activation sparsity the threshold was calibrated for.")
    calibrated_sparsity: float = Field(description="Share of calibration activations below the threshold.")
    tokens: int = Field(description="Calibration tokens the threshold was calibrated on.")


class ActivationRecord(Record):
    """An activation-sparsity variant: weights unchanged, activations gated per input."""

    mode: str = Field(description="teal (each layer's input) or cats (a gated MLP's activation output).")
    target: float
    calibrated_sparsity: float = Field(description="Over every gate, weighted by its inputs' width.")
    gates: int
    max_tokens: int = Field(description="Calls of at most this many tokens run the skipping kernel.")


class LayerRecord(Record):
    """What pruning and deployment did to one Linear layer."""

    name: str
    shape: list[int]
    shape_after: list[int] | None = None
    total: int
    nonzero: int
    target_sparsity: float
    achieved_sparsity: float
    heads_removed: list[int] = Field(default_factory=list)
    neurons_removed: int = 0
    format: str | None = None
    format_reason: str | None = None
    bytes_dense: int | None = Field(None, description="Bytes of the weight stored densely.")
    bytes_deployed: int | None = Field(None, description="Bytes of the weight in its deployed format.")
    format_speedup: float | None = Field(
        None, description="Dense time / deployed-format time for this layer, as measured when choosing."
    )
    quant: QuantLayerRecord | None = Field(None, description="The layer's integer grid, when a method quantized it.")
    activation: ActivationLayerRecord | None = Field(
        None, description="The layer's activation gate, when an activation-sparsity method gated it."
    )

    @model_serializer(mode="wrap")
    def _drop_no_gate(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("activation") is None:
            data.pop("activation", None)
        return data


class CalibrationRecord(Record):
    """Which examples a data-aware pruner saw.

    The sample is drawn with ``numpy.random.default_rng([seed, point_seed])``: the
    configured calibration seed and the sweep point's seed, so that each seed of the
    sweep sees its own calibration sample.
    """

    dataset: str
    split: str
    n: int
    seed: int
    fingerprint: str
    point_seed: int | None = None
    batches: int | None = None
    tokens: int | None = None


class BlockProfileRecord(Record):
    """One transformer block under a layer-wise sparsity profile (OWL, or explicit ``blocks``)."""

    block: str
    index: int
    weights: int = Field(description="Weights of the block's layers the profile allocated.")
    layers: int
    outlier_ratio: float | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="D_l: fraction of the block's Wanda scores above M x their mean (OWL only).",
    )
    target_sparsity: float = Field(description="S_l, given to every allocated layer of the block.")
    achieved_sparsity: float


class ProfileRecord(Record):
    """A layer-wise sparsity profile's decision (absent from the record under ``uniform``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(description="owl, or blocks (explicit per-block sparsities, e.g. a sweep.allocate choice).")
    M: float | None = Field(None, exclude_if=lambda v: v is None, description="OWL's M (OWL only).")
    lambda_: float | None = Field(None, alias="lambda", exclude_if=lambda v: v is None, description="OWL only.")
    target_sparsity: float
    weighted_target: float = Field(description="Mean of the blocks' S_l weighted by their weights (= the target).")
    achieved_sparsity: float = Field(description="Zeros / weights over the allocated layers.")
    blocks: list[BlockProfileRecord] = Field(default_factory=list)


class TrainingRecord(Record):
    """How a method that fine-tunes while it prunes trained: its schedule, steps, data and teacher.

    The data is the point's calibration sample (``PruningRecord.calibration``); ``teacher``
    is ``None`` when the loss used the labels only.
    """

    procedure: str = Field(description="gradual (Zhu & Gupta), movement (Sanh et al.) or imp (lottery ticket).")
    schedule: list[float] = Field(description="Sparsity after each pruning step, in order.")
    optimizer_steps: int = Field(description="Optimizer steps taken in all.")
    examples: int = Field(description="Labelled calibration examples the steps drew batches from.")
    learning_rate: float
    weight_decay: float = 0.0
    objective: str = Field(description="The loss: labels, or labels + distillation (or distillation alone).")
    teacher: str | None = Field(None, description="The model distilled from (None: no distillation).")
    alpha: float | None = Field(None, description="Weight of the distillation term.")
    temperature: float | None = None
    rewind_step: int | None = Field(None, description="IMP: steps into the first round the weights rewind to.")
    loss_first: float | None = Field(None, description="Mean loss of the first cycle's steps.")
    loss_last: float | None = Field(None, description="Mean loss of the last cycle's steps.")


class PruningRecord(Record):
    """Every pruning decision for one sweep point, counted on the real tensors."""

    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    criterion: str = ""
    structured: bool = False
    seed: int
    target_sparsity: float
    achieved_sparsity: float = Field(description="Zeros / weights over the pruned layers.")
    model_sparsity: float = Field(description="Zeros / parameters over the whole model.")
    params_total: int
    params_nonzero: int
    prunable_total: int
    prunable_nonzero: int
    layers: list[LayerRecord] = Field(default_factory=list)
    heads_removed: dict[str, list[int]] = Field(default_factory=dict)
    neurons_removed: dict[str, int] = Field(default_factory=dict)
    calibration: CalibrationRecord | None = None
    mask_fingerprint: str | None = None
    wall_time_s: float = 0.0
    notes: list[str] = Field(default_factory=list)
    profile: ProfileRecord | None = Field(None, description="The layer-wise sparsity profile (omitted: uniform).")
    training: TrainingRecord | None = Field(
        None, description="Fine-tuning during pruning: schedule, steps, data, teacher (omitted: none)."
    )
    activation: ActivationRecord | None = Field(
        None, description="Activation sparsity: mode, target, calibrated gates (omitted: weights pruned)."
    )

    @model_serializer(mode="wrap")
    def _drop_uniform(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("profile", "training", "activation"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class EquivalenceRecord(Record):
    """Deployed model vs masked-dense reference on a fixed probe batch."""

    n: int
    max_abs_logit_diff: float
    agreement: float
    tolerance: float
    passed: bool
    nonfinite: int = Field(0, description="Probe examples with a non-finite deployed logit.")
    flipped_beyond_tolerance: int = Field(
        0, description="Predictions that differ although the reference was not a near-tie."
    )
    tolerance_basis: str | None = Field(None, description="How the tolerance was set (scaled rule or fixed).")


class SpeedRecord(Record):
    """Latency and throughput, dense vs deployed, timed in interleaved rounds after a warm-up.

    Speed-ups are the median of the per-round ratios (dense time / deployed time, both
    timed in the same round), with a distribution-free CI of that median
    (``ci_method``). A deployment that computes exactly what the dense model computes
    (no sparse layer, same shapes) is ``identical``: speed-up 1.0 by construction, not timed.
    """

    seq_len: int
    threads: int
    latency_b1_ms_dense: float | None = None
    latency_b1_ms_deployed: float | None = None
    latency_b1_ms_deployed_ci: list[float] | None = None
    throughput_dense: float | None = Field(None, description="Sequences per second at ``batch_size``.")
    throughput_deployed: float | None = None
    throughput_deployed_ci: list[float] | None = None
    speedup_b1: float | None = None
    speedup_b1_ci: list[float] | None = None
    speedup_batch: float | None = Field(None, description="Throughput speed-up at ``batch_size``.")
    speedup_batch_ci: list[float] | None = None
    batch_size: int = Field(32, description="Batch size of the throughput measurement.")
    rounds: int = Field(1, description="Interleaved dense/deployed timing rounds (after a warm-up).")
    ci_method: str | None = None
    identical: bool = Field(False, description="No sparse layer and the dense model's shapes: 1.0 by construction.")
    note: str | None = None
    per_round: dict[str, list[float]] = Field(default_factory=dict, description="Per-round speed-ups.")
    cached: bool = Field(
        False, description="Reused from this machine's speed cache (same model, formats, settings): see ``note``."
    )
    decode_new_tokens: int | None = Field(
        None, description="Causal LMs: tokens generated per timed greedy decode at batch 1 (KV cache on)."
    )
    decode_prompt_tokens: int | None = Field(None, description="Causal LMs: prompt length before the timed decode.")
    decode_tps_dense: float | None = Field(None, description="Dense decode tokens per second (median of rounds).")
    decode_tps_deployed: float | None = None
    decode_tps_deployed_ci: list[float] | None = None
    decode_speedup: float | None = Field(None, description="Dense decode time / deployed decode time (median).")
    decode_speedup_ci: list[float] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in [k for k in data if k.startswith("decode_")]:
            if data[key] is None:
                data.pop(key)
        return data

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """Results written before the batch size was part of the names (``*_b32``)."""
        if isinstance(data, dict):
            for old, new in (
                ("throughput_b32_dense", "throughput_dense"),
                ("throughput_b32_deployed", "throughput_deployed"),
                ("speedup_b32", "speedup_batch"),
            ):
                if old in data and new not in data:
                    data = {**data, new: data[old]}
                data = {k: v for k, v in data.items() if k != old}
        return data


class GenerationRecord(Record):
    """Causal LMs: greedy continuations of the deployed model against its masked-dense reference."""

    prompts: int
    new_tokens: int = Field(description="Greedy tokens generated per prompt (at most; EOS ends one early).")
    token_agreement: float = Field(description="Mean share of the reference's tokens reproduced at their position.")
    exact: int = Field(description="Prompts whose continuation is identical.")
    diverged: int = Field(0, description="Prompts whose continuation differs somewhere.")
    diverged_beyond_tie: int = Field(
        0, description="Divergences where the reference's top-2 margin at that step was not a near-tie."
    )
    tolerance: float = Field(description="The logit tolerance: a near-tie is a top-2 margin below twice it.")
    passed: bool


class DeploymentRecord(Record):
    """How a variant is deployed: formats per layer, equivalence, speed and size."""

    formats: dict[str, int] = Field(default_factory=dict)
    weight_bytes_dense: int = 0
    weight_bytes_deployed: int = 0
    equivalence: EquivalenceRecord | None = None
    speed: SpeedRecord | None = None
    saved_to: str | None = None
    notes: list[str] = Field(default_factory=list)
    device: str = "cpu"
    kernel: str | None = Field(None, description="The compiled kernel's build, or why it is unavailable.")
    linear_bytes_dense: int = Field(0, description="Bytes of all Linear weights stored densely.")
    linear_bytes_deployed: int = Field(0, description="Bytes of all Linear weights as deployed.")
    timings_measured: int = Field(0, description="Format timings measured for this variant (not from the cache).")
    timings_cached: int = Field(0, description="Format timings taken from the timing cache.")
    kept_dense: dict[str, int] = Field(
        default_factory=dict,
        description="Layers left dense, by reason: no_zeros, above_max_density, no_speedup, not_applicable, forced.",
    )
    wall_time_s: float = 0.0
    generation: GenerationRecord | None = Field(
        None, description="Causal LMs: greedy-continuation agreement with the masked model (omitted otherwise)."
    )

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("generation") is None:
            data.pop("generation", None)
        return data


class SuiteError(Record):
    """A suite that crashed on a variant: becomes ERROR under the policy."""

    suite: str
    error_type: str
    message: str
    traceback: str = ""


class PointRecord(Record):
    """The sweep point a variant was produced from (``method`` is ``dense`` for the baseline)."""

    id: str
    method: str
    label: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    sparsity: float
    seed: int
    key: str


class SuiteTiming(Record):
    """Where one suite's time went on one variant (seconds of ``time.perf_counter``, see :mod:`audit.timing`).

    ``inference_s + (attack_s - attack_inference_s) + statistics_s == total_s``.
    """

    total_s: float = Field(description="Wall time of the suite's run on this variant.")
    inference_s: float | None = Field(
        None,
        description="Wall time inside the variant model's forward calls, those made by attacks included "
        "(null when the model is not a torch module).",
    )
    attack_s: float | None = Field(
        None,
        description="Wall time inside the attack loop: search, transformations, constraints and the model "
        "queries it makes (null for a suite that runs no attack).",
    )
    attack_inference_s: float | None = Field(None, description="The part of ``inference_s`` spent inside attacks.")
    statistics_s: float = Field(
        0.0,
        description="The rest of the suite: tokenization and batching, bootstrap, tests, MetricFrame "
        "(total - inference - attack search).",
    )
    forward_calls: int = Field(0, description="Forward calls of the model (outermost; generate() steps each count).")
    reused_inference_s: float = Field(
        0.0,
        description="Forward time of scores this suite took from an earlier suite of the same variant "
        "instead of recomputing them (the eval set's logits, computed once per variant); not part of total_s.",
    )
    forward_ratio: float | None = Field(
        None,
        description="total_s / (inference_s + reused_inference_s): the suite's time over the pure forward time "
        "of the texts it evaluates, for a suite that runs no attack (null otherwise).",
    )


class VariantTiming(Record):
    """A variant's time split: pruning, deployment, each suite, and the overhead left over.

    ``overhead_s`` is ``total_s`` less every part measured in this run (model copy,
    store I/O, saving the deployed variant, ...). A part listed in ``reused`` was
    taken from the result store: its seconds are those of the run that made it and are
    not part of this run's ``total_s``.
    """

    total_s: float = Field(description="This run's wall time for the variant (its ``wall_time_s``).")
    prune_s: float = Field(0.0, description="Pruning, calibration included.")
    deploy_s: float = Field(0.0, description="Deployment: format choice, conversion, equivalence and speed timing.")
    suites: dict[str, SuiteTiming] = Field(default_factory=dict)
    overhead_s: float = 0.0
    suites_forward_ratio: float | None = Field(
        None,
        description="The suites that run no attack together: their total_s / their inference_s, so the "
        "forwards of a set scored once and shared count once (null when none timed a forward).",
    )
    reused: list[str] = Field(
        default_factory=list, description="Parts (prune, deploy, suite names) reused from the result store."
    )


class VariantResult(Record):
    """Everything measured on one variant (the dense baseline is one too)."""

    id: str
    point: PointRecord
    pruning: PruningRecord | None = None
    deployment: DeploymentRecord | None = None
    measurements: list[Measurement] = Field(default_factory=list)
    errors: list[SuiteError] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    not_applicable: dict[str, str] = Field(
        default_factory=dict,
        description="Metric ids a suite could not produce on this data, with the reason (e.g. no group "
        "columns); rules on them are SKIP, not ERROR.",
    )
    examples: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="Illustrative rows per suite, for the report."
    )
    wall_time_s: float = 0.0
    timing: VariantTiming | None = Field(
        None, description="Where the variant's time went (omitted in results of versions that did not record it)."
    )

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("timing") is None:
            data.pop("timing", None)
        return data

    @property
    def is_baseline(self) -> bool:
        return self.id == BASELINE_ID

    def measurement(self, metric_id: str) -> Measurement | None:
        for m in self.measurements:
            if m.id == metric_id:
                return m
        return None


class DatasetIdentity(Record):
    """A dataset as evaluated: where it came from and its content fingerprint."""

    id: str
    source: str
    split: str | None = None
    n: int
    fingerprint: str
    columns: dict[str, Any] = Field(default_factory=dict)
    max_length: int | None = None
    """Tokenizer truncation length the texts were encoded with (None: not recorded)."""
    truncated: int | None = None
    """How many of the ``n`` texts (with their pairs) were longer than ``max_length``
    tokens and were cut to it (None: not recorded)."""
    truncation_conflicts: list[int] | None = None
    """``[groups, texts]``: groups of different inputs that are identical once truncated to
    ``max_length`` tokens yet carry different labels, and how many texts they hold (the model
    cannot tell them apart; None: not recorded)."""

    @property
    def truncation_note(self) -> str | None:
        """A limitation line when texts were truncated, else None."""
        if not self.truncated:
            return None
        share = self.truncated / self.n if self.n else 0.0
        note = (
            f"dataset {self.id}: {self.truncated} of {self.n} texts ({share:.1%}) are longer than "
            f"max_length={self.max_length} tokens and were truncated; the model saw only their first "
            f"{self.max_length} tokens"
        )
        if self.truncation_conflicts and self.truncation_conflicts[0]:
            groups, texts = self.truncation_conflicts
            note += (
                f"; {groups} group(s) of different texts ({texts} texts) become identical once truncated "
                "but carry different labels, so no model can classify all of them correctly"
            )
        return note


class ModelIdentity(Record):
    """The audited model: source, revision and a fingerprint of its files."""

    source: str
    revision: str | None = None
    fingerprint: str
    architecture: str = ""
    num_labels: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    params_total: int = 0
    kind: str | None = None
    """The model kind when not a classifier (``causal-lm``); omitted from the record when None."""
    gguf: dict[str, Any] | None = None
    """A model loaded from a GGUF file: its record (sha256, ``file_type``, ``quantized_upstream``...)."""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("kind", "gguf"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Provenance(Record):
    """How the run can be reproduced."""

    tool_version: str
    git_sha: str | None = None
    python: str
    platform: str
    packages: dict[str, str] = Field(default_factory=dict)
    seed: int
    started_at: str
    finished_at: str | None = None
    command: str | None = None
    config_fingerprint: str = ""
    threads: int | None = None


class MetricInfo(Record):
    """A metric declaration as stored in results (copied from the suite's spec)."""

    suite: str
    name: str
    meaning: str
    higher_is_better: bool | None
    range: list[float | None] = Field(default_factory=lambda: [0.0, 1.0])
    unit: str = ""
    citation: str = ""
    reference: float | None = None
    """The "no effect" / "unbiased" value the report draws as a line (:attr:`audit.registry.MetricSpec.reference`)."""
    module: dict[str, str] | None = Field(None, exclude_if=lambda v: v is None)
    """An extra metric's ``evaluate`` module (``path`` as configured, ``sha256`` of the file); else None."""


class RuleResult(Record):
    """One policy rule applied to one variant."""

    rule: str
    variant: str
    metric: str
    status: Literal["PASS", "WARN", "FAIL", "ERROR", "SKIP"]
    severity: Literal["fail", "warn"]
    observed: float | None = None
    baseline: float | None = None
    compared: float | None = None
    bound: str = ""
    message: str = ""
    rationale: str = ""
    waived_by: str | None = None


class WaiverInfo(Record):
    """A policy waiver as applied to a run (for the report's audit trail)."""

    rule: str
    variants: list[str] = Field(default_factory=list)
    metric: str = "*"
    approver: str
    reason: str
    expires: str
    active: bool = Field(description="Not expired on the day of evaluation.")
    used: bool = Field(False, description="Turned at least one FAIL or ERROR into a WARN.")


class PolicySource(Record):
    """Where the judging policy was read from and the line of each rule (for SARIF locations).

    Recorded by the policy loader so that reporters can point at a rule without reading
    the file again.
    """

    file: str | None = Field(
        None,
        description="The policy file: relative to the working directory of the run (POSIX separators) when it "
        "lies under it, else absolute; a built-in is `policies/<name>.yaml` inside the prune-audit package; "
        "null for a policy given as text.",
    )
    builtin: str | None = Field(None, description="The built-in policy's name, when it is one.")
    lines: dict[str, int] = Field(
        default_factory=dict, description="Rule id -> 1-based line of the rule's entry in the policy YAML."
    )


class Verdict(Record):
    """The gate decision."""

    policy: str
    policy_fingerprint: str
    status: Literal["PASS", "WARN", "FAIL", "ERROR", "NO_RESULTS"]
    exit_code: int
    counts: dict[str, int] = Field(default_factory=dict)
    rules: list[RuleResult] = Field(default_factory=list)
    max_compliant_sparsity: dict[str, float | None] = Field(default_factory=dict)
    evaluated_at: str = ""
    notes: list[str] = Field(default_factory=list)
    policy_name: str = ""
    policy_description: str = ""
    fail_on_error: bool = True
    waivers: list[WaiverInfo] = Field(default_factory=list)
    policy_rules: list[dict[str, Any]] = Field(
        default_factory=list, description="The policy's rules as evaluated (for the report's protocol and charts)."
    )
    policy_source: PolicySource | None = Field(
        None, description="The policy's file and rule lines (omitted when unknown, e.g. results of older versions)."
    )

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("policy_source") is None:
            data.pop("policy_source", None)
        return data


class AttributionGroup(Record):
    """One group of layers given back its dense weights, and the share of the regression's gap it explains."""

    name: str = Field(description="`all`, a block (`<block>`), a block's kind (`<block>:attention`) or one layer.")
    level: Literal["all", "block", "type", "layer"]
    block: int | None = Field(None, description="The block's index (null: every layer, or outside the blocks).")
    kind: str | None = Field(None, description="attention, ffn, layers (not told apart) or other; null for a block.")
    layers: list[str] = Field(default_factory=list, description="The Linear layers restored together.")
    value: Num = Field(None, description="The measure on the defining examples with this group restored.")
    share: Num = Field(None, description="(restored - variant) / (dense - variant): share of the gap explained.")
    ci_low: Num = None
    ci_high: Num = None
    forward_passes: int = Field(0, description="Example forward passes this evaluation cost.")


class GroupDiagnostic(Record):
    """Tran et al. (2022)'s explanatory diagnostics for one group, dense vs variant."""

    feature: str = Field(description="Group column (`a&b` for an intersection); `all` for every defining example.")
    group: str
    n: int
    grad_norm_dense: Num = Field(None, description="Norm of the gradient of the group's mean loss (dense).")
    grad_norm_variant: Num = Field(None, description="The same for the variant, over the weights it keeps.")
    margin_dense: Num = Field(None, description="Mean top minus runner-up class probability (dense).")
    margin_variant: Num = None


class HoldoutCheck(Record):
    """One of the search's findings (the group that explained most at its level) re-measured on held-out examples."""

    name: str = Field(description="The group, as in `groups`.")
    level: Literal["block", "type", "layer"]
    layers: list[str] = Field(default_factory=list)
    share_selection: Num = Field(None, description="Its share on the selection examples, where the search chose it.")
    value: Num = Field(None, description="The measure on the held-out examples with this group restored.")
    share: Num = Field(None, description="Its share of the held-out gap: (restored - variant) / (dense - variant).")
    ci_low: Num = None
    ci_high: Num = None


class AttributionHoldout(Record):
    """The search ran on a seeded part of the defining examples; its findings are re-measured on the rest.

    A share the search chose because it was largest on the selection examples is biased
    upwards there (it won a comparison); the held-out share is not, because those examples
    took no part in choosing it.
    """

    fraction: float = Field(description="attribution.holdout: the fraction of the defining examples held out.")
    n_selection: int = Field(description="Defining examples the search ran on.")
    n_holdout: int = Field(description="Defining examples held out from it.")
    dense_value: Num = None
    variant_value: Num = None
    gap: Num = Field(None, description="dense_value - variant_value on the held-out examples.")
    checks: list[HoldoutCheck] = Field(default_factory=list)
    forward_passes: int = Field(0, description="Example forward passes of the held-out check (within the budget).")
    ci_method: str | None = None
    note: str | None = Field(None, description="Why there are no checks, or what limits them.")


class RegressionAttribution(Record):
    """One significant regression traced back to the pruning decisions of its variant.

    Every share is measured on the same examples, and its CI comes from the same paired
    bootstrap resamples of them for every group (``ci_method``).
    """

    variant: str
    metric: str = Field(description="The regressing measurement's id (`suite/dataset/metric`).")
    test: str = Field(description="Path of its test in the measurement's details (`paired`, `paired_groups.f.g`).")
    q_value: Num = None
    delta: Num = Field(None, description="The regression's recorded change (variant minus dense).")
    rules: list[str] = Field(default_factory=list, description="Policy rules that failed or warned on it.")
    status: Literal["complete", "partial", "not_attributable"] = Field(
        description="complete: every group down to the granularity was evaluated; partial: the budget ended the "
        "search; not_attributable: see reason."
    )
    reason: str | None = None
    dataset: str | None = None
    scope: str | None = Field(None, description="Which examples define the regression (a set, a group).")
    measure: str | None = Field(None, description="What is re-measured on them (e.g. accuracy).")
    n_examples: int = 0
    dense_value: Num = None
    variant_value: Num = None
    gap: Num = Field(None, description="dense_value - variant_value on the defining examples.")
    budget_forward_passes: int = 0
    forward_passes: int = Field(0, description="Example forward passes the search spent.")
    granularity: str = "layer"
    groups: list[AttributionGroup] = Field(default_factory=list)
    not_evaluated: list[str] = Field(default_factory=list, description="Groups the budget did not reach.")
    ci_method: str | None = None
    diagnostics: list[GroupDiagnostic] = Field(default_factory=list)
    diagnostics_note: str | None = None
    diagnostic_passes: int = Field(0, description="Example forward+backward passes of the diagnostics (apart).")
    holdout: AttributionHoldout | None = Field(
        None, description="The findings re-measured on defining examples the search did not see (attribution.holdout)."
    )
    notes: list[str] = Field(default_factory=list)
    wall_time_s: float = Field(
        0.0,
        description="Seconds this regression's attribution took (its variant's rebuild "
        "included when it was the first of the variant's regressions).",
    )


class AllocationRuleValue(Record):
    """One policy rule on one allocation candidate, judged on the selection split."""

    rule: str
    metric: str
    status: Literal["PASS", "WARN", "FAIL", "ERROR", "SKIP"]
    compared: float | None = Field(None, description="The value the rule's bound was checked against.")
    bound: str = ""


class AllocationStep(Record):
    """One evaluation of the allocation search on the selection split."""

    index: int
    kind: Literal["start", "probe", "trial"] = Field(
        description="start: the starting allocation; probe: the start with one block restored to dense (its "
        "sensitivity); trial: a moved allocation."
    )
    sparsities: list[float] = Field(description="Per block (in block order), the target sparsity.")
    weighted_sparsity: float = Field(description="Mean of the block sparsities weighted by the blocks' weights.")
    status: str = Field(description="The policy's verdict on this candidate (PASS, WARN, FAIL, ERROR).")
    violation: float | None = Field(
        description="Sum over failing fail-severity rules of how far the value is past its bound (0: passes; "
        "None: a rule gave ERROR, so it cannot be measured)."
    )
    rules: list[AllocationRuleValue] = Field(default_factory=list)
    accepted: bool = Field(False, description="This candidate is the chosen allocation.")
    note: str = ""


class AllocationRecord(Record):
    """``sweep.allocate``: the search for per-block sparsities that pass the policy on the selection split."""

    method: str
    variant: str = Field(description="Id of the chosen allocation's variant, audited on the eval split.")
    policy: str
    policy_fingerprint: str
    target_sparsity: float
    budget: int
    evaluations: int = Field(description="Evaluations spent on the selection split (start + probes + trials).")
    start: str
    step: float
    bounds: list[float] = Field(description="[min, max] block sparsity.")
    selection_split: str
    eval_split: str
    selection_n: int = Field(description="Selection rows used (after dropping those also in the eval split).")
    selection_dropped: int = Field(description="Rows of the selection split dropped because their text is in eval.")
    selection_fingerprint: str = ""
    suites: list[str] = Field(description="Suites run on the selection split (those the policy's rules name).")
    not_held_out: list[str] = Field(
        default_factory=list,
        description="Datasets a suite measured during the search that are not the selection split (the suite's "
        "own data, also used by the eval audit): rules on them were not judged on held-out examples.",
    )
    blocks: list[str] = Field(description="Block names, in order.")
    block_weights: list[int]
    sensitivity: list[float | None] = Field(
        default_factory=list,
        description="Per block: decrease in violation per million weights when the block is restored to dense in "
        "the start allocation (None: not probed).",
    )
    passed: bool = Field(description="The chosen allocation passed the policy on the selection split.")
    chosen: int = Field(description="Index of the chosen step.")
    outcome: str = Field(description="Why the search stopped, in words.")
    steps: list[AllocationStep] = Field(default_factory=list)


class RunResult(Record):
    """A whole audit run: the dense baseline, every variant, and how it was made."""

    schema_version: str = SCHEMA_VERSION
    run_id: str
    title: str = "prune-audit report"
    provenance: Provenance
    config: dict[str, Any]
    model: ModelIdentity
    datasets: list[DatasetIdentity] = Field(default_factory=list)
    metrics: dict[str, MetricInfo] = Field(default_factory=dict)
    task_formats: dict[str, list[str]] = Field(default_factory=dict)
    """Per suite that declares them, the task formats it scored (prompt templates with their choices, sentence
    pairs, ...): :attr:`audit.registry.SuiteSpec.task_formats` of its params, evaluated when the run finished."""
    baseline: VariantResult
    variants: list[VariantResult] = Field(default_factory=list)
    verdict: Verdict | None = None
    statistics: dict[str, Any] = Field(default_factory=dict)
    limitations: list[str] = Field(default_factory=list)
    attribution: list[RegressionAttribution] | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="Regression attribution (`attribution.enabled`): each attributed regression's layer groups "
        "and their shares of its gap (omitted when attribution did not run).",
    )

    allocation: AllocationRecord | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="Policy-guided allocation (`sweep.allocate`): the search on the selection split, step by step, "
        "and the chosen allocation (omitted when it did not run).",
    )

    def all_variants(self) -> list[VariantResult]:
        return [self.baseline, *self.variants]

    def metric_info(self, metric_id: str) -> MetricInfo | None:
        """Declaration for a full id ``suite/dataset/metric``."""
        suite, _, rest = metric_id.partition("/")
        name = rest.rsplit("/", 1)[-1]
        return self.metrics.get(f"{suite}/{name}")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False, allow_nan=False) + "\n"


def load_results(path: str | Path) -> RunResult:
    """Read and validate a ``results.json``; every failure is a :class:`UsageError`."""
    p = Path(path)
    if not p.is_file():
        raise UsageError("results file not found", where=str(path), hint="pass the results.json a run wrote")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError("results file is not UTF-8 JSON", where=str(path)) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"invalid JSON: {exc.msg}", where=f"{path}:{exc.lineno}:{exc.colno}") from None
    if not isinstance(raw, dict):
        raise UsageError("expected a JSON object", where=str(path))
    version = raw.get("schema_version")
    if version is None:
        raise UsageError("not a prune-audit results file (no schema_version)", where=str(path))
    major = str(version).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise UsageError(
            f"results schema_version {version} is not readable by this version (expects "
            f"{SCHEMA_VERSION.split('.')[0]}.x)",
            where=str(path),
            hint="re-run the audit with this version of prune-audit",
        )
    try:
        return RunResult.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise UsageError(f"invalid results file at {loc}: {err['msg']}", where=str(path)) from None


def results_schema() -> dict[str, Any]:
    """JSON Schema of ``results.json``."""
    schema = RunResult.model_json_schema()
    schema["title"] = f"prune-audit results (schema_version {SCHEMA_VERSION})"
    schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    return schema
