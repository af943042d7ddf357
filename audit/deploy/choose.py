"""Per-layer format choice: measure each candidate format once, cache it, keep the fastest.

A layer's candidates are timed on a synthetic weight of the same shape and density
(for BSR: the same block density), at each configured token count, against dense
``nn.Linear`` in interleaved rounds (dense and every candidate back to back in each
round; a candidate's speed-up is the median of its same-round ratios,
:meth:`LayerTimer.compare`). Timings are cached in ``<cache>/deploy/timings.json``, keyed by format,
shape, density, bias, token count, threads, CPU, torch version and kernel build, so a
shape/density pair is measured once per machine and every later run on that machine
makes the same choice from the same figures (a run never re-times a cached configuration).
At decode-sized token counts (:data:`STREAM_TOKENS`) each timed call reads another copy of the
layer, so that its weights come from memory as they do in a real decode step.

The decision (:func:`decide`) is a pure function of the timings: a sparse format is
chosen only if it is at least ``min_speedup`` times faster than dense at *every*
measured token count; among those, the one with the best geometric-mean speed-up
wins. Otherwise the layer stays dense, and the reason says by how much the best
sparse format lost. Sparse is therefore never chosen where it was measured slower, and
the ``min_speedup`` margin (1.1 by default) keeps a format whose true speed-up is near
1.0 from being chosen on one round's noise.

With ``deploy.regime_split_tokens`` set, :func:`decide_regimes` makes that decision twice, on the
token counts at or below the split (decode) and on those above it (prefill): a layer may then run
one format at decode and another (or dense) at prefill (:mod:`audit.deploy.regime`), and is never
slower than dense in either regime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.deploy.format_classes import (  # noqa: F401 - the helpers are re-exported (tests, bench)
    format_for,
    quantize_density,
    synthetic_2_4,
    synthetic_weight,
)
from audit.deploy.formats import DENSE, regime_format

log = logging.getLogger(__name__)

CACHE_VERSION = 3
"""2: figures from interleaved rounds (:meth:`LayerTimer.compare`); version-1 single timings are not reused.
3: decode-sized token counts stream the weights from memory (:data:`STREAM_TOKENS`); earlier
one-token figures, measured with the weights in cache, are not reused."""

STREAM_TOKENS = 8
"""At this many tokens or fewer (batch-1 decode and small batches), a layer is timed as a real decode
runs it: each call reads a different copy of the weights, enough copies (:func:`stream_bytes` of dense
weights) that they come from memory, not from cache. In a decode step every layer's weights are read
once, and a model's weights are far larger than any cache, so a cache-resident timing would favour
dense (its bytes are then free) over the formats whose point is reading fewer bytes."""

MAX_COPIES = 256


def stream_bytes() -> int:
    """Bytes of dense weights a streamed timing sweeps: twice the last-level cache, at least 64 MiB."""
    largest = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return max(2 * largest, 64 << 20)


class StreamedCall:
    """One layer call per invocation, cycling through ``modules`` (copies of one layer) on the same input."""

    def __init__(self, modules: list[nn.Module], x: torch.Tensor) -> None:
        self.modules = modules
        self.x = x
        self._next = 0

    def __call__(self) -> Any:
        module = self.modules[self._next]
        self._next = (self._next + 1) % len(self.modules)
        with torch.inference_mode():
            return module(self.x)


# -- the decision ------------------------------------------------------------------------


@dataclass
class Decision:
    """The format chosen for one layer and why."""

    format: str
    reason: str
    speedup: float | None = None
    """Dense time / chosen time at the first token count (None when kept dense untimed)."""
    timings: dict[str, dict[int, float]] = field(default_factory=dict)
    kept_dense: str | None = None
    """Why the layer stays dense, as a category (``DeploymentRecord.kept_dense``): ``no_zeros``,
    ``above_max_density``, ``no_speedup``, ``not_applicable`` or ``forced``; None when sparse."""
    regimes: tuple[str, str] | None = None
    """(decode format, prefill format) when the regimes chose differently (:func:`decide_regimes`);
    ``format`` is then their :func:`~audit.deploy.formats.regime_format` name."""
    split: int | None = None
    """The regime split (tokens) of a per-regime decision."""


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


def decide(timings: dict[str, dict[int, float]], *, min_speedup: float = 1.1) -> Decision:
    """Pick a format from measured seconds per call: ``{format: {tokens: seconds}}``.

    ``timings`` must hold ``dense``. A sparse format qualifies when dense/format ≥
    ``min_speedup`` at every token count that dense was measured at; the qualifying
    format with the highest geometric-mean speed-up is chosen, else dense.
    """
    if DENSE not in timings or not timings[DENSE]:
        raise ValueError("decide() needs dense timings to compare against")
    dense = timings[DENSE]
    tokens = sorted(dense)
    scores: dict[str, tuple[float, float]] = {}  # format -> (worst ratio, geometric mean ratio)
    for fmt, by_tokens in timings.items():
        if fmt == DENSE:
            continue
        ratios = [dense[t] / by_tokens[t] if by_tokens.get(t) else 0.0 for t in tokens]
        if not ratios or min(ratios) <= 0:
            continue
        scores[fmt] = (min(ratios), math.exp(sum(math.log(r) for r in ratios) / len(ratios)))

    def detail(fmt: str) -> str:
        parts = [
            f"{dense[t] / timings[fmt][t]:.2f}x at {t} tokens ({_fmt_time(timings[fmt][t])} vs dense "
            f"{_fmt_time(dense[t])})"
            for t in tokens
        ]
        return f"{fmt} " + ", ".join(parts)

    others = sorted(scores, key=lambda f: -scores[f][1])
    qualified = [f for f in others if scores[f][0] >= min_speedup]
    if qualified:
        best = qualified[0]
        rest = [f"{f} {scores[f][1]:.2f}x" for f in others if f != best]
        reason = f"fastest measured: {detail(best)}"
        if rest:
            reason += f"; other candidates: {', '.join(rest)}"
        first = tokens[0]
        return Decision(best, reason, dense[first] / timings[best][first], timings)
    if not others:
        return Decision(DENSE, "kept dense: no sparse format could be timed", None, timings, "not_applicable")
    best = others[0]
    return Decision(
        DENSE,
        f"kept dense: no sparse format is >= {min_speedup:g}x faster than dense at every token count "
        f"(best: {detail(best)})",
        1.0,
        timings,
        "no_speedup",
    )


def split_timings(
    timings: dict[str, dict[int, float]], split: int
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """(decode, prefill) timings: the token counts at or below ``split``, and those above it."""
    decode = {f: {t: v for t, v in by.items() if t <= split} for f, by in timings.items()}
    prefill = {f: {t: v for t, v in by.items() if t > split} for f, by in timings.items()}
    return decode, prefill


def decide_regimes(timings: dict[str, dict[int, float]], *, split: int, min_speedup: float = 1.1) -> Decision:
    """:func:`decide` per regime: decode (token counts ≤ ``split``) and prefill (counts above it).

    Each regime is decided on its own counts under the same ``min_speedup`` guard, so the layer is
    never slower than dense in either regime. When both pick the same format that format is the
    decision (``dense`` with ``kept_dense="no_speedup"`` when neither regime has a winner); when they
    differ, the decision's ``format`` is ``<decode>|<prefill>`` and ``regimes`` holds both. The
    reason gives both regimes' measured ratios.

    Raises:
        ValueError: ``timings`` has no dense token count on one side of ``split``.
    """
    decode_t, prefill_t = split_timings(timings, split)
    if not decode_t.get(DENSE) or not prefill_t.get(DENSE):
        raise ValueError(f"decide_regimes() needs dense timings at or below and above {split} tokens")
    d = decide(decode_t, min_speedup=min_speedup)
    p = decide(prefill_t, min_speedup=min_speedup)
    reason = f"decode (<= {split} tokens): {d.reason}; prefill (> {split} tokens): {p.reason}"
    if d.format == p.format:
        kept = (d.kept_dense or p.kept_dense) if d.format == DENSE else None
        return Decision(d.format, reason, d.speedup, timings, kept)
    return Decision(
        regime_format(d.format, p.format), reason, d.speedup, timings, regimes=(d.format, p.format), split=split
    )


# -- the timing cache ------------------------------------------------------------------


def _cache_file() -> Path:
    from audit.cache import cache_root

    return cache_root() / "deploy" / "timings.json"


class TimingCache:
    """Seconds per call, keyed by :func:`timing_key`; persisted as JSON (merged on save)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, float] = {}
        self.hits = 0
        self.measured = 0
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                if raw.get("version") == CACHE_VERSION:
                    self.data = {str(k): float(v) for k, v in raw.get("timings", {}).items()}
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring unreadable timing cache %s: %s", path, exc)

    @classmethod
    def default(cls) -> TimingCache:
        return cls(_cache_file())

    def get(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, seconds: float, *, measured: bool = True) -> None:
        self.measured += int(measured)
        self.data[key] = float(seconds)

    def save(self) -> None:
        if self.path is None:
            return
        from audit.atomic import atomic_write_text
        from audit.cache import file_lock

        with self._lock, file_lock(self.path.with_name(".timings.lock")):
            merged: dict[str, float] = {}
            if self.path.is_file():
                try:
                    raw = json.loads(self.path.read_text(encoding="utf-8"))
                    if raw.get("version") == CACHE_VERSION:
                        merged.update(raw.get("timings", {}))
                except (OSError, ValueError, AttributeError):
                    pass
            merged.update(self.data)
            text = json.dumps({"version": CACHE_VERSION, "timings": merged}, indent=0, sort_keys=True)
            atomic_write_text(self.path, text + "\n")


def environment_key(threads: int, device: str) -> str:
    """What makes a timing from one machine invalid on another."""
    from audit.deploy.kernel import cpu_identity, kernel_status

    cpu = cpu_identity()
    parts = {
        "cpu": cpu["model"],
        "cpu_flags": hashlib.sha256(cpu["flags"].encode()).hexdigest()[:12],
        "torch": torch.__version__,
        "threads": threads,
        "device": device,
        "kernel": (kernel_status().key or "none")[:16],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        parts["gpu"] = torch.cuda.get_device_name()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def timing_key(fmt: str, shape: tuple[int, int], density: float, bias: bool, tokens: int, env: str) -> str:
    return f"{fmt}|{shape[0]}x{shape[1]}|d{density:.3f}|b{int(bias)}|n{tokens}|{env}"


# -- measuring ---------------------------------------------------------------------------


def build_module(fmt: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A deployed module of format ``fmt`` (``dense`` gives an ``nn.Linear``) for a weight.

    Raises:
        audit.errors.PluginError: ``fmt`` is no registered format's name.
    """
    return format_for(fmt).convert(fmt, weight, bias)


def time_call(fn: Any, *, min_time: float, threads: int, statistic: str = "median", warmup: bool = True) -> float:
    """Seconds per call (``torch.utils.benchmark``; CUDA-synchronised when relevant).

    ``statistic`` is ``median`` (of the timed blocks) or ``min``: the fastest block, which
    is what the format choice uses, since other processes only ever make a block slower.
    ``warmup`` makes one untimed call first (callers that warm up themselves pass False).
    """
    from torch.utils.benchmark import Timer

    if warmup:
        fn()  # warm-up: lazy inits, page faults, workspace growth
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_time)
    return float(min(m.times) if statistic == "min" else m.median)


@dataclass
class LayerTimer:
    """Measures (or recalls) one layer configuration per format."""

    cache: TimingCache
    threads: int
    device: str = "cpu"
    min_time: float = 0.2
    rounds: int = 3
    _env: str | None = None

    @property
    def env(self) -> str:
        if self._env is None:
            self._env = environment_key(self.threads, self.device)
        return self._env

    def key(self, fmt: str, shape: tuple[int, int], density: float, bias: bool, tokens: int) -> str:
        return timing_key(fmt, shape, 1.0 if fmt == DENSE else density, bias, tokens, self.env)

    def cached(self, fmt: str, shape: tuple[int, int], density: float, bias: bool, tokens: int) -> float | None:
        return self.cache.get(self.key(fmt, shape, density, bias, tokens))

    def prepare(
        self, fmt: str, shape: tuple[int, int], density: float, bias: bool, tokens: int, *, dtype: Any = None
    ) -> Any:
        """A no-argument call of ``fmt`` on a synthetic weight of this shape and density, warmed up.

        At :data:`STREAM_TOKENS` or fewer tokens on a CPU the call cycles through enough copies of
        the layer that its weights come from memory (the same number of copies for every format:
        as many as :func:`stream_bytes` of dense weights takes, at most :data:`MAX_COPIES`).
        """
        w = format_for(fmt).synthetic(fmt, shape, density, device=self.device, dtype=dtype)
        b = torch.randn(shape[0], device=self.device, dtype=w.dtype) if bias else None
        copies = self.copies(shape, tokens, w.element_size())
        modules = [build_module(fmt, w, b) for _ in range(copies)]
        call = StreamedCall(modules, torch.randn(tokens, shape[1], device=self.device, dtype=w.dtype))
        for _ in range(copies):
            call()  # warm-up: lazy inits, page faults, workspace growth (every copy once)
        return call

    def copies(self, shape: tuple[int, int], tokens: int, element_size: int = 4) -> int:
        """How many copies of a layer a timing cycles through (1: the weights stay in cache)."""
        if self.device != "cpu" or tokens > STREAM_TOKENS:
            return 1
        dense_bytes = shape[0] * shape[1] * element_size
        return max(1, min(MAX_COPIES, math.ceil(stream_bytes() / dense_bytes)))

    def time(self, call: Any) -> float:
        """Seconds per call of a prepared call: the fastest block (load only ever slows a block)."""
        return time_call(call, min_time=self.min_time, threads=self.threads, statistic="min", warmup=False)

    def compare(
        self,
        cands: list[tuple[str, float]],
        shape: tuple[int, int],
        bias: bool,
        tokens: int,
        *,
        rounds: int = 3,
        dtype: Any = None,
    ) -> dict[str, float]:
        """Seconds per call of dense and each candidate, timed in interleaved rounds; cached.

        Each round times dense and every candidate back to back (the order reversed every
        other round). Dense's figure is its median over rounds; a candidate's is dense's
        median divided by the median of its per-round ratios, so that ``dense / format``
        is the median same-round ratio: a slow phase of the machine hits both sides of a
        ratio, never only one. The figures are stored in the timing cache.
        """
        import statistics

        entries = [(DENSE, 1.0), *cands]
        calls = {f: self.prepare(f, shape, d, bias, tokens, dtype=dtype) for f, d in entries}
        times: dict[str, list[float]] = {f: [] for f, _ in entries}
        for r in range(max(1, rounds)):
            for f, _ in entries if r % 2 == 0 else entries[::-1]:
                times[f].append(self.time(calls[f]))
        dense = statistics.median(times[DENSE])
        out = {DENSE: dense}
        for f, d in cands:
            ratio = statistics.median(dt / ft for dt, ft in zip(times[DENSE], times[f], strict=True))
            out[f] = dense / ratio
            self.cache.put(self.key(f, shape, d, bias, tokens), out[f])
        self.cache.put(self.key(DENSE, shape, 1.0, bias, tokens), dense)
        return out

    def measure(
        self, fmt: str, shape: tuple[int, int], density: float, bias: bool, tokens: int, *, dtype: Any = None
    ) -> float:
        """Time ``fmt`` alone now (not cached)."""
        return self.time(self.prepare(fmt, shape, density, bias, tokens, dtype=dtype))
