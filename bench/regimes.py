"""Per-regime formats (``deploy.regime_split_tokens``) on the SmolLM2-135M layer shapes: does a layer
that runs ``bitmap`` at decode and ``kernel`` at prefill beat the best single format?

    .venv/bin/python -m bench.regimes            # 5 rounds, about 2 minutes on 2 threads
    .venv/bin/python -m bench.regimes --quick    # 3 rounds
    .venv/bin/python -m bench.regimes --pattern 2:4 --out bench/results/regimes_2_4.json   # nm24|kernel

For each shape (out x in: 576x576 q/o, 192x576 k/v, 1536x576 gate/up, 576x1536 down) at 50 %
unstructured sparsity (``--pattern 2:4``: 2 non-zeros in every 4 inputs, with ``nm24`` as the
compact format), fp32, it times dense (``nn.Linear``), ``kernel``, ``bitmap`` and the
dispatching layer (:class:`audit.deploy.regime.RegimeLinear`, ``bitmap|kernel``, split 8) at 1 token
(decode; each call reads another copy of the layer, as the per-layer choice times it,
:meth:`audit.deploy.choose.LayerTimer.copies`) and 128 tokens (prefill; cache-resident). Each round
times every module back to back (order reversed every other round); a ratio is the median of the
same-round ratios. From the medians it applies the converter's two decisions,
:func:`audit.deploy.choose.decide` over both counts (one format per layer, as without the option)
and :func:`audit.deploy.choose.decide_regimes` (split 8), both at ``min_speedup`` 1.1, and sums
one decoder block (q, k, v, o, gate, up, down) for each: time per decode step, per 128-token
prefill, and stored bytes. Results: ``bench/results/regimes.json``; the load average before and
after is recorded (a loaded machine gives noisy figures).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

from audit.deploy.formats import DENSE
from bench.common import ROOT
from bench.decode_kernels import cpu_name

SHAPES = {(576, 576): 2, (192, 576): 2, (1536, 576): 2, (576, 1536): 1}
"""Layer shape -> layers of that shape in one SmolLM2-135M decoder block."""
SPLIT = 8
MODULES = ["dense", "kernel", "bitmap", "bitmap|kernel"]
"""The timed modules (``--pattern 2:4`` puts ``nm24`` in place of ``bitmap``)."""


def _build(name: str, weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Module:
    from audit.deploy.choose import build_module
    from audit.deploy.formats import regime_parts
    from audit.deploy.regime import build_regime

    parts = regime_parts(name)
    if parts is None:
        return build_module(name, weight, bias)
    return build_regime(*parts, SPLIT, weight, bias, build_module("dense", weight, bias))


def cell(shape: tuple[int, int], tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per call (median over rounds) and same-round ratios to dense of each module at ``tokens``."""
    from audit.deploy.choose import LayerTimer, StreamedCall, TimingCache, time_call

    w = _weight(shape, args)
    b = torch.randn(shape[0], generator=torch.Generator().manual_seed(1))
    timer = LayerTimer(TimingCache(None), args.threads)
    copies = timer.copies(shape, tokens)
    x = torch.randn(tokens, shape[1], generator=torch.Generator().manual_seed(2))
    calls = {m: StreamedCall([_build(m, w, b) for _ in range(copies)], x) for m in MODULES}
    ref = torch.nn.functional.linear(x, w, b)
    for m, call in calls.items():
        for _ in range(copies):
            y = call()
        err = float((y - ref).abs().max() / ref.abs().max())
        if err > 1e-5:
            raise SystemExit(f"{m} at {shape} and {tokens} tokens differs from dense by {err:.2g} (relative)")
    times: dict[str, list[float]] = {m: [] for m in MODULES}
    for r in range(args.rounds):
        for m in MODULES if r % 2 == 0 else MODULES[::-1]:
            times[m].append(time_call(calls[m], min_time=args.min_time, threads=args.threads, statistic="min"))
    out: dict[str, Any] = {"copies": copies, "seconds": {}, "speedup": {}}
    for m in MODULES:
        out["seconds"][m] = statistics.median(times[m])
        ratios = [d / t for d, t in zip(times["dense"], times[m], strict=True)]
        out["speedup"][m] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def _weight(shape: tuple[int, int], args: argparse.Namespace) -> torch.Tensor:
    from audit.deploy.format_classes import synthetic_2_4, synthetic_weight

    if args.pattern == "2:4":
        return synthetic_2_4(shape, seed=0, dtype=torch.float32)
    return synthetic_weight(shape, args.density, seed=0)


def _bytes(name: str, shape: tuple[int, int], args: argparse.Namespace) -> int:
    from audit.deploy.format_classes import stored_bytes

    return stored_bytes(_build(name, _weight(shape, args), torch.zeros(shape[0])))


def _seconds(row: dict[str, Any], fmt: str, tokens: str) -> float:
    """A layer's measured seconds per call in format ``fmt``; a per-regime format other than the timed
    compact|kernel layer is its side's time (the dispatch itself is in the timed per-regime row)."""
    from audit.deploy.formats import regime_parts

    seconds = row["cells"][tokens]["seconds"]
    if fmt in seconds:
        return float(seconds[fmt])
    parts = regime_parts(fmt)
    assert parts is not None, fmt
    return float(seconds[parts[0] if int(tokens) <= SPLIT else parts[1]])


def main(argv: list[str] | None = None) -> int:
    from audit.deploy.choose import decide, decide_regimes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--pattern", choices=["unstructured", "2:4"], default="unstructured")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--note", default="", help="what the machine was doing (recorded in the JSON)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "regimes.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 3
    if args.pattern == "2:4":
        args.density = 0.5
        MODULES[:] = ["dense", "kernel", "nm24", "nm24|kernel"]
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    t0 = time.perf_counter()
    layers = []
    for shape, count in SHAPES.items():
        cells = {tokens: cell(shape, tokens, args) for tokens in (1, 128)}
        timings = {m: {t: cells[t]["seconds"][m] for t in cells} for m in MODULES[:3]}
        single = decide(timings, min_speedup=1.1)
        regime = decide_regimes(timings, split=SPLIT, min_speedup=1.1)
        row = {
            "shape": list(shape),
            "per_block": count,
            "cells": {str(t): c for t, c in cells.items()},
            "single": single.format,
            "single_reason": single.reason,
            "regime": regime.format,
            "regime_reason": regime.reason,
            "bytes": {m: _bytes(m, shape, args) for m in {*MODULES, single.format, regime.format}},
        }
        layers.append(row)
        ratios = {t: ", ".join(f"{m} {cells[t]['speedup'][m]['median']:.2f}x" for m in MODULES[1:]) for t in cells}
        print(
            f"{shape[0]}x{shape[1]}: decode {ratios[1]}; prefill {ratios[128]}; "
            f"single -> {single.format}, per regime -> {regime.format}",
            flush=True,
        )
    block: dict[str, Any] = {}
    for label in ("dense", "single", "regime"):
        block[label] = {}
        for tokens in ("1", "128"):
            block[label][f"seconds_{tokens}"] = sum(
                r["per_block"] * _seconds(r, DENSE if label == "dense" else r[label], tokens) for r in layers
            )
        block[label]["bytes"] = sum(
            r["per_block"] * _bytes(DENSE if label == "dense" else r[label], tuple(r["shape"]), args) for r in layers
        )
    for label in ("single", "regime"):
        for tokens in ("1", "128"):
            block[label][f"speedup_{tokens}"] = block["dense"][f"seconds_{tokens}"] / block[label][f"seconds_{tokens}"]
    block["regime_over_single"] = {
        t: block["single"][f"seconds_{t}"] / block["regime"][f"seconds_{t}"] for t in ("1", "128")
    }
    result = {
        "benchmark": "per-regime formats, SmolLM2-135M layer shapes",
        "when": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.regimes " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": args.threads,
        "density": args.density,
        "pattern": args.pattern,
        "rounds": args.rounds,
        "min_time_s": args.min_time,
        "split": SPLIT,
        "min_speedup": 1.1,
        "note": args.note,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t0,
        "layers": layers,
        "block": block,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(
        f"one block: decode {block['single']['speedup_1']:.2f}x (single) vs {block['regime']['speedup_1']:.2f}x "
        f"(per regime), prefill {block['single']['speedup_128']:.2f}x vs {block['regime']['speedup_128']:.2f}x; "
        f"bytes dense {block['dense']['bytes']}, single {block['single']['bytes']}, regime {block['regime']['bytes']}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
