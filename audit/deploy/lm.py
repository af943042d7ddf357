"""Deployment checks and timings particular to causal LMs.

Equivalence on generation (:func:`reference_generation` before conversion,
:func:`check_generation` after): each prompt's greedy continuation
(:func:`audit.models.lm_scoring.greedy_continuations`, KV cache on) by the deployed model is
compared token by token with the masked-dense model's
(:func:`audit.models.lm_scoring.generation_agreement`). Summation order can flip a greedy
choice only where the reference's two best next tokens were a near-tie, so a
divergence passes only when the reference's top-2 margin at its first differing step
(teacher-forced on the reference continuation) is below twice the logit tolerance.

Speed (:func:`measure_decode`): greedy decoding at batch 1 with the KV cache: a short
prompt is prefilled untimed, then ``new_tokens`` single-token steps are timed; dense
and deployed alternate in interleaved rounds (dense first in even rounds), and the
decode speed-up is the median of the per-round time ratios with the order-statistic
CI of :func:`audit.deploy.speed.median_ci`. Prefill latency is the batch-1 forward at
``deploy.speed_seq_len`` tokens (:func:`audit.deploy.speed.measure_speed` at batch 1).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audit.results import GenerationRecord

GENERATION_PROMPTS = 8
"""Probe texts used as greedy-generation prompts."""
GENERATION_TOKENS = 16
"""Greedy tokens generated per prompt for the equivalence check."""
PROMPT_WORDS = 12
"""A prompt is the first words of a probe text."""
DECODE_TOKENS = 64
"""Tokens generated per timed decode (batch 1, KV cache)."""
DECODE_PROMPT = 16
"""Prompt length (tokens) prefilled, untimed, before a timed decode."""


def prompts_of(texts: list[str], k: int = GENERATION_PROMPTS) -> list[str]:
    """The generation prompts: the first :data:`PROMPT_WORDS` words of the first ``k`` non-empty texts."""
    out = []
    for t in texts:
        words = str(t).split()
        if words:
            out.append(" ".join(words[:PROMPT_WORDS]))
        if len(out) == k:
            break
    return out


@dataclass
class ReferenceGeneration:
    """The masked-dense model's greedy continuations and its top-2 margin at each of their steps."""

    prompts: list[str]
    tokens: list[np.ndarray]
    margins: list[np.ndarray]
    new_tokens: int


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if ids:
        return list(ids)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [int(bos)]


@torch.inference_mode()
def reference_generation(
    model: Any, tokenizer: Any, prompts: list[str], *, new_tokens: int = GENERATION_TOKENS
) -> ReferenceGeneration:
    """Greedy continuations of ``model`` (the masked-dense variant) and their step-wise top-2 margins."""
    from audit.models.lm_scoring import greedy_continuations

    tokens = greedy_continuations(model, tokenizer, prompts, max_new_tokens=new_tokens)
    device = next(model.parameters()).device
    margins = []
    for prompt, cont in zip(prompts, tokens, strict=True):
        ids = _prompt_ids(tokenizer, prompt)
        if len(cont) == 0:
            margins.append(np.zeros(0))
            continue
        seq = torch.tensor([ids + [int(t) for t in cont]], device=device)
        logits = model(input_ids=seq, use_cache=False).logits[0, len(ids) - 1 : len(ids) - 1 + len(cont)]
        top2 = torch.topk(logits.double(), 2, dim=-1).values
        margins.append((top2[:, 0] - top2[:, 1]).cpu().numpy())
    return ReferenceGeneration(prompts=list(prompts), tokens=tokens, margins=margins, new_tokens=new_tokens)


def check_generation(model: Any, tokenizer: Any, ref: ReferenceGeneration, *, tolerance: float) -> GenerationRecord:
    """The deployed ``model``'s greedy continuations against ``ref`` (see the module docstring)."""
    from audit.models.lm_scoring import generation_agreement, greedy_continuations

    got = greedy_continuations(model, tokenizer, ref.prompts, max_new_tokens=ref.new_tokens)
    agreement = generation_agreement(ref.tokens, got)
    diverged = beyond = 0
    for r, g, margin in zip(ref.tokens, got, ref.margins, strict=True):
        n = min(len(r), len(g))
        same = np.asarray(r[:n]) == np.asarray(g[:n])
        if len(r) == len(g) and bool(same.all()):
            continue
        diverged += 1
        first = int(np.argmin(same)) if not same.all() else n
        if first >= len(margin) or margin[first] >= 2 * tolerance:
            beyond += 1
    return GenerationRecord(
        prompts=len(ref.prompts),
        new_tokens=ref.new_tokens,
        token_agreement=float(agreement.token.mean()) if len(ref.prompts) else 1.0,
        exact=int(agreement.exact.sum()),
        diverged=diverged,
        diverged_beyond_tie=beyond,
        tolerance=float(tolerance),
        passed=beyond == 0 and len(ref.prompts) > 0,
    )


@dataclass
class DecodeTiming:
    """Decode speed, dense vs deployed, from interleaved rounds."""

    prompt_tokens: int
    new_tokens: int
    tps_dense: float
    tps_deployed: float
    tps_deployed_ci: list[float] | None
    speedup: float
    speedup_ci: list[float] | None
    per_round: list[float]


def _decode_inputs(model: Any, prompt_tokens: int, new_tokens: int, seed: int = 0) -> tuple[torch.Tensor, int, int]:
    cfg = getattr(model, "config", None)
    vocab = int(getattr(cfg, "vocab_size", 1000) or 1000)
    max_pos = int(getattr(cfg, "max_position_embeddings", prompt_tokens + new_tokens) or prompt_tokens + new_tokens)
    prompt = max(1, min(prompt_tokens, max_pos // 4))
    new = max(1, min(new_tokens, max_pos - prompt))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (1, prompt), generator=gen)
    return ids.to(next(model.parameters()).device), prompt, new


@torch.inference_mode()
def _decode_seconds(model: Any, ids: torch.Tensor, new: int) -> float:
    """Seconds of ``new`` greedy single-token steps after an untimed prefill of ``ids``."""
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    nxt = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - start


def measure_decode(
    dense: Any,
    deployed: Any,
    *,
    new_tokens: int = DECODE_TOKENS,
    prompt_tokens: int = DECODE_PROMPT,
    rounds: int = 7,
    threads: int | None = None,
) -> DecodeTiming:
    """Decode tokens/s at batch 1 with the KV cache, dense vs deployed (see the module docstring)."""
    from audit.deploy.speed import median_ci

    threads = threads or torch.get_num_threads()
    ids, prompt, new = _decode_inputs(dense, prompt_tokens, new_tokens)
    models = {"dense": dense, "deployed": deployed}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for m in models.values():  # warm-up: lazy inits, allocator growth
            _decode_seconds(m, ids, new)
        times: dict[str, list[float]] = {"dense": [], "deployed": []}
        for r in range(max(1, int(rounds))):
            order = ("dense", "deployed") if r % 2 == 0 else ("deployed", "dense")
            for label in order:
                times[label].append(_decode_seconds(models[label], ids, new))
    finally:
        torch.set_num_threads(before)
    ratios = [d / p for d, p in zip(times["dense"], times["deployed"], strict=True)]
    lo, hi, _ = median_ci(ratios)
    tps = [new / t for t in times["deployed"]]
    tlo, thi, _ = median_ci(tps)
    return DecodeTiming(
        prompt_tokens=prompt,
        new_tokens=new,
        tps_dense=new / statistics.median(times["dense"]),
        tps_deployed=statistics.median(tps),
        tps_deployed_ci=None if tlo is None or thi is None else [float(tlo), float(thi)],
        speedup=statistics.median(ratios),
        speedup_ci=None if lo is None or hi is None else [float(lo), float(hi)],
        per_round=ratios,
    )
