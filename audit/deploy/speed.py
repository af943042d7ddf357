"""Speed and size of a deployed variant, measured side by side with the dense model.

Protocol (:func:`measure_speed`): both models are first warmed up on both input shapes
(lazy initialisation, page faults, thread-pool start-up and allocator growth all happen
there, never in a timed call). Then ``rounds`` rounds follow; in each, dense and
deployed are timed back to back at batch 1 and at the throughput batch size, the order
alternating between rounds (dense first, then deployed first) so that a drift in machine
speed does not favour either. Each round gives one ratio per batch size; the reported
speed-up is the median ratio, with a distribution-free confidence interval of the median
from order statistics (:func:`median_ci`), and ``n`` = rounds. A deployment with no sparse
layer and the dense model's shapes computes exactly what dense computes: its speed-up is
1.0 by construction and it is not timed (:func:`identical_to_dense`).
"""

from __future__ import annotations

import logging
import math
import statistics
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
    inside: list[str] = []  # a deployed layer's own modules (a per-regime layer's two) are in its stored_bytes
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in inside):
            continue
        tensors = list(module._parameters.values()) + list(module._buffers.values())
        if isinstance(module, DeployedLinear):
            inside.append(name + ".")
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


def identical_to_dense(dense: nn.Module, deployed: nn.Module) -> bool:
    """True when ``deployed`` runs the dense model's computation: no sparse layer and the same
    parameter and buffer shapes (a structured variant is physically smaller, so it is timed).
    """
    from audit.deploy.modules import DeployedLinear

    if any(isinstance(m, DeployedLinear) for m in deployed.modules()):
        return False

    def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
        out = {n: tuple(p.shape) for n, p in model.named_parameters()}
        out.update({n: tuple(b.shape) for n, b in model.named_buffers()})
        return out

    return type(dense) is type(deployed) and shapes(dense) == shapes(deployed)


CI_LEVEL = 0.95


def median_ci(values: list[float], level: float = CI_LEVEL) -> tuple[float | None, float | None, str]:
    """Distribution-free CI of the median from order statistics: ``[x_(k), x_(n+1-k)]``.

    ``k`` is the largest rank with ``P(Binomial(n, 1/2) < k) <= (1 - level) / 2``. Under 6
    values no rank reaches 95 %; the range ``[min, max]`` is returned with its actual
    coverage ``1 - 2^(1-n)`` in the method text. One value has no interval.
    """
    n = len(values)
    if n < 2:
        return None, None, "no CI: a single round"
    xs = sorted(values)
    alpha = (1.0 - level) / 2
    k, cum = 0, 0.0
    for j in range(n):  # cum = P(B < j + 1)
        cum += math.comb(n, j) / 2**n
        if cum > alpha:
            break
        k = j + 1
    if k == 0:
        coverage = 1.0 - 2.0 ** (1 - n)
        return xs[0], xs[-1], f"range of {n} rounds (order-statistic CI of the median, coverage {coverage:.1%})"
    coverage = 1.0 - 2.0 * sum(math.comb(n, j) for j in range(k)) / 2**n
    return (
        xs[k - 1],
        xs[n - k],
        f"order-statistic CI of the median of {n} rounds (ranks {k} and {n + 1 - k}, coverage {coverage:.1%})",
    )


def _warm_up(fn: Any, min_time: float, calls: int = 3) -> None:
    """At least ``calls`` untimed calls and at least ``min_time`` seconds of them."""
    import time

    start = time.perf_counter()
    done = 0
    while done < calls or time.perf_counter() - start < min_time:
        fn()
        done += 1


def measure_speed(
    dense: nn.Module,
    deployed: nn.Module,
    *,
    seq_len: int = 128,
    batch_size: int = 32,
    threads: int | None = None,
    min_time: float = 0.2,
    rounds: int = 7,
    identical: bool | None = None,
    inputs: Any = None,
) -> SpeedRecord:
    """Batch-1 latency and batch-``batch_size`` throughput at ``seq_len`` tokens, dense vs deployed.

    See the module docstring for the protocol. ``identical`` (default: decided by
    :func:`identical_to_dense`) skips timing and records 1.0. ``inputs(model, batch,
    seq_len)``: the timed inputs (default :func:`synthetic_inputs`; the model adapter's).
    """
    threads = threads or torch.get_num_threads()
    rounds = max(1, int(rounds))
    make = inputs or synthetic_inputs
    one = make(dense, 1, seq_len)
    many = make(dense, batch_size, seq_len)
    seq = int(one["input_ids"].shape[1])
    if identical is None:
        identical = identical_to_dense(dense, deployed)
    if identical:
        note = (
            "no sparse layer and the dense model's shapes: the deployed model computes exactly what dense "
            "computes, so its speed-up is 1.0 by construction (not timed)"
        )
        log.info("speed: %s", note)
        return SpeedRecord(
            seq_len=seq,
            threads=threads,
            speedup_b1=1.0,
            speedup_b1_ci=[1.0, 1.0],
            speedup_batch=1.0,
            speedup_batch_ci=[1.0, 1.0],
            batch_size=batch_size,
            rounds=0,
            ci_method="exact: identical computation",
            identical=True,
            note=note,
        )
    models = {"dense": dense, "deployed": deployed}
    inputs = {1: one, batch_size: many}
    times: dict[tuple[str, int], list[float]] = {(m, b): [] for m in models for b in inputs}
    with torch.inference_mode():
        for model in models.values():
            for x in inputs.values():
                _warm_up(lambda m=model, x=x: m(**x), min_time)
        for r in range(rounds):
            order = ("dense", "deployed") if r % 2 == 0 else ("deployed", "dense")
            for b, x in inputs.items():
                for label in order:
                    model = models[label]
                    t = time_call(lambda m=model, x=x: m(**x), min_time=min_time, threads=threads, warmup=False)
                    times[(label, b)].append(t)
    ratios_1 = [d / p for d, p in zip(times[("dense", 1)], times[("deployed", 1)], strict=True)]
    ratios_n = [d / p for d, p in zip(times[("dense", batch_size)], times[("deployed", batch_size)], strict=True)]
    lo1, hi1, method = median_ci(ratios_1)
    lon, hin, _ = median_ci(ratios_n)
    lat = [t * 1e3 for t in times[("deployed", 1)]]
    lat_lo, lat_hi, _ = median_ci(lat)
    thr = [batch_size / t for t in times[("deployed", batch_size)]]
    thr_lo, thr_hi, _ = median_ci(thr)

    def pair(lo: float | None, hi: float | None) -> list[float] | None:
        return None if lo is None or hi is None else [float(lo), float(hi)]

    record = SpeedRecord(
        seq_len=seq,
        threads=threads,
        latency_b1_ms_dense=statistics.median(times[("dense", 1)]) * 1e3,
        latency_b1_ms_deployed=statistics.median(lat),
        latency_b1_ms_deployed_ci=pair(lat_lo, lat_hi),
        throughput_dense=batch_size / statistics.median(times[("dense", batch_size)]),
        throughput_deployed=statistics.median(thr),
        throughput_deployed_ci=pair(thr_lo, thr_hi),
        speedup_b1=statistics.median(ratios_1),
        speedup_b1_ci=pair(lo1, hi1),
        speedup_batch=statistics.median(ratios_n),
        speedup_batch_ci=pair(lon, hin),
        batch_size=batch_size,
        rounds=rounds,
        ci_method=method,
        per_round={"speedup_b1": ratios_1, "speedup_batch": ratios_n},
    )
    log.info(
        "speed: batch 1 %.2f -> %.2f ms (%.2fx, CI %s); batch %d %.1f -> %.1f seq/s (%.2fx); %d rounds",
        record.latency_b1_ms_dense,
        record.latency_b1_ms_deployed,
        record.speedup_b1,
        ci_text(record.speedup_b1_ci),
        batch_size,
        record.throughput_dense,
        record.throughput_deployed,
        record.speedup_batch,
        rounds,
    )
    return record


def ci_text(ci: Any) -> str:
    """``[1.01, 1.17]`` for a log line (``n/a`` without a CI)."""
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"
