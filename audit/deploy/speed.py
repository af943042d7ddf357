"""Speed and size of a deployed variant, measured side by side with the dense model."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from audit.deploy.choose import time_call
from audit.results import SpeedRecord

log = logging.getLogger(__name__)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every stored tensor of a model (parameters and buffers; shared tensors once).

    Deployed sparse layers count what their format stores (values and indices).
    """
    from audit.deploy.modules import DeployedLinear

    seen: set[int] = set()
    total = 0
    for module in model.modules():
        tensors = list(module._parameters.values()) + list(module._buffers.values())
        if isinstance(module, DeployedLinear):
            total += module.stored_bytes()
            tensors = [getattr(module, "bias", None)]
        for t in tensors:
            if t is None:
                continue
            key = t.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def synthetic_inputs(model: Any, batch: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (fixed seed) of shape (batch, seq_len) with a full attention mask."""
    cfg = getattr(model, "config", None)
    vocab = int(getattr(cfg, "vocab_size", 1000) or 1000)
    max_pos = int(getattr(cfg, "max_position_embeddings", seq_len) or seq_len)
    seq = min(seq_len, max_pos)
    gen = torch.Generator().manual_seed(seed)
    low = min(5, vocab - 1)
    ids = torch.randint(low, vocab, (batch, seq), generator=gen)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def measure_speed(
    dense: nn.Module,
    deployed: nn.Module,
    *,
    seq_len: int = 128,
    batch_size: int = 32,
    threads: int | None = None,
    min_time: float = 1.0,
    rounds: int = 2,
) -> SpeedRecord:
    """Batch-1 latency and batch-``batch_size`` throughput at ``seq_len`` tokens, dense vs deployed.

    The two models are timed alternately, ``rounds`` times each (median of each timing,
    best round kept), so both see the same machine conditions.
    """
    threads = threads or torch.get_num_threads()
    one = synthetic_inputs(dense, 1, seq_len)
    many = synthetic_inputs(dense, batch_size, seq_len)
    seq = int(one["input_ids"].shape[1])
    best: dict[tuple[str, int], float] = {}
    with torch.inference_mode():
        for _ in range(max(1, rounds)):
            for label, model in (("dense", dense), ("deployed", deployed)):
                for b, inputs in ((1, one), (batch_size, many)):
                    t = time_call(lambda m=model, x=inputs: m(**x), min_time=min_time, threads=threads)
                    best[(label, b)] = min(t, best.get((label, b), float("inf")))
    d1, p1 = best[("dense", 1)], best[("deployed", 1)]
    dn, pn = best[("dense", batch_size)], best[("deployed", batch_size)]
    record = SpeedRecord(
        seq_len=seq,
        threads=threads,
        latency_b1_ms_dense=d1 * 1e3,
        latency_b1_ms_deployed=p1 * 1e3,
        throughput_b32_dense=batch_size / dn,
        throughput_b32_deployed=batch_size / pn,
        speedup_b1=d1 / p1,
        speedup_b32=dn / pn,
        batch_size=batch_size,
        rounds=rounds,
    )
    log.info(
        "speed: batch 1 %.2f -> %.2f ms (%.2fx); batch %d %.1f -> %.1f seq/s (%.2fx)",
        record.latency_b1_ms_dense,
        record.latency_b1_ms_deployed,
        record.speedup_b1,
        batch_size,
        record.throughput_b32_dense,
        record.throughput_b32_deployed,
        record.speedup_b32,
    )
    return record
