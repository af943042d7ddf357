"""Batch-1 decode benchmark of the CPU formats: one token (a matrix-vector product) per layer.

Run on a quiet machine (one line; ``--quick`` takes under 3 minutes)::

    .venv/bin/python -m bench.decode_kernels --quick    # 5 rounds
    .venv/bin/python -m bench.decode_kernels            # 11 rounds, more sweeps per round

For the SmolLM2-135M layer shapes (out x in: 576x576 q/o, 192x576 k/v, 1536x576 gate/up,
576x1536 down) at 50 % unstructured, 2:4, 70 % and 90 % sparsity, one token, fp32, on 2
threads and on 1 thread, it times dense (``nn.Linear``), torch CSR (int32 indices), the
kernel's CSR (``kernel``: uint16 indices), ``bitmap`` and (2:4 only) ``nm24``.

The weights are not cache-resident, as in a real decode: every format gets enough distinct
copies of the layer (at least 64) that their stored bytes together exceed twice the L3
cache (``--l3-mib``, 32 MiB here), and a timing is one sweep through all copies (seconds
per layer call = sweep time / copies). Each round times every format back to back (the
order reversed every other round); a format's ratio to dense is the median of its
same-round ratios, with the interquartile range and min-max over rounds. Each format's
output is checked against dense. ``byte_limit`` is dense bytes / the format's stored bytes,
the speed-up a purely bandwidth-bound matvec could reach.

Results: ``bench/results/decode_kernels.json`` and ``.md``. The load average before and
after is recorded: on a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT, cpu_model, other_cpu_load

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
PATTERNS = ["50%", "2:4", "70%", "90%"]
FORMATS = ["dense", "csr", "kernel", "bitmap", "nm24"]


def cpu_name() -> str:
    """CPU model name with its family/model numbers (``AMD EPYC family 25 model 17``)."""
    fam = mod = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu family" and fam is None:
                fam = value.strip()
            elif key.strip() == "model" and mod is None:
                mod = value.strip()
    except OSError:
        pass
    name = cpu_model() or platform.processor() or "unknown CPU"
    return f"{name} family {fam} model {mod}" if fam and mod else name


def weight_for(shape: tuple[int, int], pattern: str, seed: int) -> torch.Tensor:
    from audit.deploy.format_classes import synthetic_2_4, synthetic_weight

    if pattern == "2:4":
        return synthetic_2_4(shape, seed=seed, dtype=torch.float32)
    return synthetic_weight(shape, 1.0 - float(pattern.rstrip("%")) / 100, seed=seed)


def _quantiles(xs: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": qs[0], "q3": qs[2], "min": min(xs), "max": max(xs)}


def cell(shape: tuple[int, int], pattern: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time every applicable format for one shape, sparsity pattern and thread count."""
    from audit.deploy.choose import build_module
    from audit.deploy.format_classes import stored_bytes

    torch.set_num_threads(threads)
    w = weight_for(shape, pattern, seed=1)
    b = torch.randn(shape[0], generator=torch.Generator().manual_seed(2))
    x = torch.randn(1, shape[1], generator=torch.Generator().manual_seed(3))
    names = [f for f in FORMATS if f != "nm24" or pattern == "2:4"]
    dense_bytes = w.numel() * 4
    l3 = args.l3_mib * 2**20
    out: dict[str, Any] = {"shape": list(shape), "pattern": pattern, "threads": threads, "formats": {}}
    copies: dict[str, list[Any]] = {}
    with torch.inference_mode():
        ref = build_module("dense", w, b)(x)
        for f in names:
            m = build_module(f, w, b)
            err = float((m(x) - ref).abs().max() / ref.abs().max())
            nbytes = stored_bytes(m)
            n = max(args.min_copies, math.ceil(2 * l3 / nbytes))
            copies[f] = [m] + [copy.deepcopy(m) for _ in range(n - 1)]
            out["formats"][f] = {
                "stored_bytes": nbytes,
                "byte_limit": dense_bytes / nbytes,
                "copies": n,
                "swept_mib": n * nbytes / 2**20,
                "max_rel_error": err,
            }

        def sweep(ms: list[Any]) -> float:
            t0 = time.perf_counter()
            for m in ms:
                m(x)
            return (time.perf_counter() - t0) / len(ms)

        times: dict[str, list[float]] = {f: [] for f in names}
        for r in range(args.rounds):
            for f in names if r % 2 == 0 else names[::-1]:
                sweep(copies[f])  # one untimed sweep: the previous format's copies leave the cache
                times[f].append(min(sweep(copies[f]) for _ in range(args.sweeps)))
    for f in names:
        rec = out["formats"][f]
        rec["us"] = {k: v * 1e6 for k, v in _quantiles(times[f]).items()}
        rec["us_rounds"] = [t * 1e6 for t in times[f]]
        if f != "dense":
            rec["speedup"] = _quantiles([d / t for d, t in zip(times["dense"], times[f], strict=True)])
    del copies
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Batch-1 decode (matvec), SmolLM2-135M layer shapes, fp32, weights not cache-resident",
        "",
        f"CPU: {result['cpu']}; torch {result['torch']}; {result['rounds']} rounds; "
        f"load average before {result['loadavg_before']} after {result['loadavg_after']}"
        + (" (a loaded machine: figures are noisy)" if result["loaded"] else ""),
        "",
        f"Command: `{result['command']}`",
        "",
        "Speed-up vs dense: median of same-round ratios [IQR]; byte limit = dense bytes / stored bytes.",
        "",
        "| threads | shape (out x in) | pattern | dense µs | " + " | ".join(f for f in FORMATS if f != "dense") + " |",
        "|---|---|---|---|" + "---|" * (len(FORMATS) - 1),
    ]
    for c in result["cells"]:
        fm = c["formats"]
        row = [str(c["threads"]), "x".join(map(str, c["shape"])), c["pattern"], f"{fm['dense']['us']['median']:.0f}"]
        for f in FORMATS[1:]:
            if f not in fm:
                row.append("–")
                continue
            s = fm[f]["speedup"]
            row.append(f"{s['median']:.2f}× [{s['q1']:.2f}–{s['q3']:.2f}] (limit {fm[f]['byte_limit']:.2f}×)")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.decode_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds of 1 sweep (under 3 minutes)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 11, --quick 5)")
    ap.add_argument("--sweeps", type=int, default=None, help="timed sweeps per round, fastest kept (3; --quick 1)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--l3-mib", type=float, default=32.0, help="L3 size: copies sweep at least twice this")
    ap.add_argument("--min-copies", type=int, default=64)
    ap.add_argument("--shapes", nargs="+", default=None, help="OUTxIN, default the four SmolLM2 shapes")
    ap.add_argument("--patterns", nargs="+", default=PATTERNS, choices=PATTERNS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decode_kernels.json")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (5 if args.quick else 11)
    args.sweeps = args.sweeps or (1 if args.quick else 3)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    from audit.deploy.kernel import kernel_status

    status = kernel_status()
    if not status.available:
        print(f"error: {status.describe()}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    load0 = [round(v, 2) for v in os.getloadavg()]
    other0 = other_cpu_load()
    cells = []
    for threads in args.threads:
        for shape in shapes:
            for pattern in args.patterns:
                c = cell(shape, pattern, threads, args)  # type: ignore[arg-type]
                cells.append(c)
                sp = {f: round(v["speedup"]["median"], 2) for f, v in c["formats"].items() if "speedup" in v}
                print(f"{threads}t {shape} {pattern}: dense {c['formats']['dense']['us']['median']:.0f} µs {sp}")
    load1 = [round(v, 2) for v in os.getloadavg()]
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.decode_kernels " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "kernel": status.describe(),
        "rounds": args.rounds,
        "sweeps": args.sweeps,
        "l3_mib": args.l3_mib,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "other_cpu_share_before": other0,
        "other_cpu_share_after": other_cpu_load(),
        "loaded": max(load0[0], load1[0]) > 0.5,
        "seconds": time.monotonic() - t0,
        "cells": cells,
    }
    from audit.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
