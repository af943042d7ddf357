"""One pruned variant, deployed: convert, prove equivalence, measure speed and size.

:func:`deploy_variant` is what the runner calls after pruning a point. The model is
converted in place, so afterwards only the deployed model exists: the masked-dense
weights are gone and every suite runs on the deployed modules.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from audit.deploy.convert import Conversion, Converter
from audit.deploy.formats import DENSE, equivalence_hints
from audit.deploy.spec import measurements_of
from audit.deploy.speed import identical_to_dense, measure_speed, model_bytes
from audit.deploy.speed_cache import SpeedCache, speed_key, weights_fingerprint
from audit.deploy.verify import (
    DEFAULT_FACTOR,
    bf16_weight_only_tolerance,
    compare,
    dynamic_int8_tolerance,
    probe_logits,
    tolerance_for,
)
from audit.results import DeploymentRecord, Measurement, PruningRecord

if TYPE_CHECKING:
    from audit.config import DeployConfig

log = logging.getLogger(__name__)


@dataclass
class DeployContext:
    """What deployment needs for every variant of a run."""

    converter: Converter
    probe: list[dict[str, torch.Tensor]]
    dense: nn.Module
    tolerance: float | None = None
    """A fixed absolute tolerance; None scales it to the logits (:func:`audit.deploy.verify.tolerance_for`)."""
    tolerance_factor: float = DEFAULT_FACTOR
    measure_speed: bool = True
    speed_seq_len: int = 128
    speed_batch_size: int = 32
    speed_min_time: float = 0.2
    speed_rounds: int = 7
    threads: int | None = None
    speed_cache: SpeedCache | None = None
    """Per-machine speed records of unchanged deployments (None: always measure)."""
    adapter: Any = None
    """The model adapter: probe outputs and speed inputs (None: class logits, random token ids)."""
    tokenizer: Any = None
    """Causal LMs: the tokenizer the generation check prompts with."""
    prompts: list[str] = field(default_factory=list)
    """Causal LMs: the greedy-generation prompts (:func:`audit.deploy.lm.prompts_of` of the probe texts)."""
    _dense_bytes: int | None = field(default=None, repr=False)
    _dense_fingerprint: str | None = field(default=None, repr=False)

    @property
    def causal_lm(self) -> bool:
        return getattr(self.adapter, "kind", None) == "causal-lm"

    def keep_dense(self, model: nn.Module) -> set[str]:
        """Linear layers never converted: the adapter's ``protected_modules`` (a causal LM's head and embeddings)."""
        protected = getattr(self.adapter, "protected_modules", None)
        return set(protected(model)) if protected is not None else set()

    def outputs(self, model: nn.Module) -> Any:
        """What the equivalence check compares: the adapter's probe outputs (default: the probe logits)."""
        if self.adapter is not None:
            return self.adapter.probe_outputs(model, self.probe)
        return probe_logits(model, self.probe)

    @property
    def dense_fingerprint(self) -> str:
        if self._dense_fingerprint is None:
            self._dense_fingerprint = weights_fingerprint(self.dense)
        return self._dense_fingerprint

    @property
    def dense_bytes(self) -> int:
        if self._dense_bytes is None:
            self._dense_bytes = model_bytes(self.dense)
        return self._dense_bytes

    @classmethod
    def create(
        cls,
        config: DeployConfig,
        probe: list[dict[str, torch.Tensor]],
        dense: nn.Module,
        *,
        threads: int | None = None,
        adapter: Any = None,
        tokenizer: Any = None,
        prompts: list[str] | None = None,
    ) -> DeployContext:
        """The context of a run: its ``deploy:`` section used as it is, ``threads`` from ``runtime.threads``."""
        return cls(
            adapter=adapter,
            tokenizer=tokenizer,
            prompts=list(prompts or []),
            converter=Converter(config, threads=threads),
            probe=probe,
            dense=dense,
            tolerance=config.tolerance,
            tolerance_factor=config.tolerance_factor,
            measure_speed=config.measure_speed,
            speed_seq_len=config.speed_seq_len,
            speed_batch_size=config.speed_batch_size,
            speed_min_time=config.speed_min_time_s,
            speed_rounds=config.speed_rounds,
            threads=threads,
            speed_cache=SpeedCache.default() if config.speed_cache and config.measure_speed else None,
        )


@dataclass
class Deployed:
    """The outcome for one variant."""

    record: DeploymentRecord
    measurements: list[Measurement]
    conversion: Conversion

    @property
    def passed(self) -> bool:
        eq, gen = self.record.equivalence, self.record.generation
        return eq is not None and eq.passed and (gen is None or gen.passed)


def _fill_layer_records(pruning: PruningRecord | None, conversion: Conversion) -> None:
    if pruning is None:
        return
    by_name = {layer.name: layer for layer in conversion.layers}
    for rec in pruning.layers:
        dep = by_name.get(rec.name)
        if dep is None:
            continue
        rec.format = dep.format
        rec.format_reason = dep.reason
        if rec.shape_after is not None and dep.format == DENSE and dep.density == 1.0:
            rec.format_reason = (
                f"structured: physically smaller dense layer ({'x'.join(map(str, rec.shape))} -> "
                f"{'x'.join(map(str, rec.shape_after))}), no zeros to skip"
            )
        rec.bytes_dense = dep.bytes_dense
        rec.bytes_deployed = dep.bytes_deployed
        rec.format_speedup = dep.speedup


def deploy_variant(model: nn.Module, pruning: PruningRecord | None, ctx: DeployContext) -> Deployed:
    """Convert ``model`` in place, verify it against its own masked-dense logits, measure it.

    Speed is only measured once equivalence has passed: numbers of an unverified
    deployment are not presented.
    """
    from audit.deploy.kernel import kernel_status

    t0 = time.perf_counter()
    variant_fp = weights_fingerprint(model) if ctx.speed_cache is not None and ctx.measure_speed else None
    ref_gen = None
    if ctx.causal_lm and ctx.prompts and ctx.tokenizer is not None:
        from audit.deploy.lm import reference_generation

        ref_gen = reference_generation(model, ctx.tokenizer, ctx.prompts)
    reference = ctx.outputs(model)
    dynamic = any(getattr(m, "scheme", None) in ("int8_dynamic", "int8_dynamic_token") for m in model.modules())
    bf16 = any(getattr(m, "scheme", None) in ("int8_weight", "int4_weight") and getattr(m, "bf16", False)
               for m in model.modules())  # fmt: skip
    conversion = ctx.converter.convert(model, keep_dense=ctx.keep_dense(model))
    gc.collect()
    deployed_logits = ctx.outputs(model)
    if ctx.tolerance is not None:
        tol, basis = float(ctx.tolerance), f"fixed: deploy.tolerance = {ctx.tolerance:g}"
    else:
        tol, basis = tolerance_for(model, reference, factor=ctx.tolerance_factor)
        if dynamic:
            tol, basis = dynamic_int8_tolerance(reference, tol, basis)
        if bf16:
            tol, basis = bf16_weight_only_tolerance(reference, tol, basis)
    eq = compare(reference, deployed_logits, tolerance=tol, basis=basis)
    _fill_layer_records(pruning, conversion)
    linear_dense = sum(layer.bytes_dense for layer in conversion.layers)
    linear_deployed = sum(layer.bytes_deployed for layer in conversion.layers)
    device = next(model.parameters()).device.type
    record = DeploymentRecord(
        formats=conversion.formats(),
        weight_bytes_dense=ctx.dense_bytes,
        weight_bytes_deployed=model_bytes(model),
        equivalence=eq,
        notes=list(conversion.notes),
        device=device,
        kernel=kernel_status().describe() if device == "cpu" else None,
        linear_bytes_dense=linear_dense,
        linear_bytes_deployed=linear_deployed,
        timings_measured=conversion.timings_measured,
        timings_cached=conversion.timings_cached,
        kept_dense=conversion.kept_dense(),
    )
    if ref_gen is not None:
        from audit.deploy.lm import check_generation

        record.generation = check_generation(model, ctx.tokenizer, ref_gen, tolerance=tol)
    passed = eq.passed and (record.generation is None or record.generation.passed)
    if passed and ctx.measure_speed:
        record.speed = _speed(ctx, model, conversion, variant_fp, device)
    elif not passed:
        record.notes.append("speed not measured: the deployed model failed its equivalence check")
        record.notes += equivalence_hints(record.formats)
    record.wall_time_s = time.perf_counter() - t0
    return Deployed(record=record, measurements=measurements_of(record), conversion=conversion)


def _speed(ctx: DeployContext, model: nn.Module, conversion: Conversion, variant_fp: str | None, device: str) -> Any:
    """The variant's speed record: this machine's earlier measurement of the same deployment, else timed now."""
    key = None
    if ctx.speed_cache is not None and variant_fp is not None and not identical_to_dense(ctx.dense, model):
        from audit.deploy.choose import environment_key

        threads = ctx.threads or torch.get_num_threads()
        settings: dict[str, Any] = {
            "seq_len": ctx.speed_seq_len,
            "batch_size": ctx.speed_batch_size,
            "rounds": ctx.speed_rounds,
            "min_time": ctx.speed_min_time,
        }
        if ctx.causal_lm:
            from audit.deploy.lm import DECODE_PROMPT, DECODE_TOKENS

            settings.update(batch_size=1, decode=[DECODE_PROMPT, DECODE_TOKENS])
        key = speed_key(
            env=environment_key(threads, device),
            dense=ctx.dense_fingerprint,
            variant=variant_fp,
            formats=[(layer.name, layer.format) for layer in conversion.layers],
            settings=settings,
        )
        hit = ctx.speed_cache.get(key)
        if hit is not None:
            log.info("speed: reused this machine's measurement of the same deployment (%.2fx)", hit.speedup_b1 or 0)
            return hit
    speed = measure_speed(
        ctx.dense,
        model,
        seq_len=ctx.speed_seq_len,
        batch_size=1 if ctx.causal_lm else ctx.speed_batch_size,  # a causal LM: prefill latency at batch 1
        threads=ctx.threads,
        min_time=ctx.speed_min_time,
        rounds=ctx.speed_rounds,
        inputs=ctx.adapter.synthetic_inputs if ctx.adapter is not None else None,
    )
    if ctx.causal_lm:
        _decode_speed(ctx, model, speed)
    if key is not None and ctx.speed_cache is not None:
        ctx.speed_cache.put(key, speed)
    return speed


def _decode_speed(ctx: DeployContext, model: nn.Module, speed: Any) -> None:
    """Add decode tokens/s at batch 1 with the KV cache to a causal LM's speed record (1.0 when identical)."""
    from audit.deploy.lm import DECODE_PROMPT, DECODE_TOKENS, measure_decode
    from audit.deploy.speed import ci_text

    if speed.identical:
        speed.decode_new_tokens, speed.decode_prompt_tokens = DECODE_TOKENS, DECODE_PROMPT
        speed.decode_speedup, speed.decode_speedup_ci = 1.0, [1.0, 1.0]
        return
    timing = measure_decode(ctx.dense, model, rounds=ctx.speed_rounds, threads=ctx.threads)
    speed.decode_new_tokens = timing.new_tokens
    speed.decode_prompt_tokens = timing.prompt_tokens
    speed.decode_tps_dense = timing.tps_dense
    speed.decode_tps_deployed = timing.tps_deployed
    speed.decode_tps_deployed_ci = timing.tps_deployed_ci
    speed.decode_speedup = timing.speedup
    speed.decode_speedup_ci = timing.speedup_ci
    speed.per_round["decode_speedup"] = timing.per_round
    log.info(
        "speed: decode %.1f -> %.1f tokens/s (%.2fx, CI %s), %d tokens at batch 1",
        timing.tps_dense,
        timing.tps_deployed,
        timing.speedup,
        ci_text(timing.speedup_ci),
        timing.new_tokens,
    )
