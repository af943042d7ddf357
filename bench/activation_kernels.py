"""Batch-1 decode with activation sparsity: the skipping kernel vs dense, per layer shape (issue 21, item 1).

Run on a quiet machine::

    .venv/bin/python -m bench.activation_kernels            # 7 rounds, 2 threads

For the SmolLM2-135M layer shapes (out x in: 576x576 q/o, 192x576 k/v, 1536x576 gate/up, 576x1536
down) and MiniLM's (384x384, 1536x384, 384x1536), one token, fp32, it times

* ``dense``: ``nn.Linear`` on the gated input (what a masked-dense model runs),
* ``act_sparse``: :class:`audit.deploy.activation.ActSparseLinear` (the compiled ``pa_act_mm``,
  reading only the weight rows of non-zero inputs),
* ``torch_gather``: ``x[nz] @ wt[nz]`` in torch (the fallback without the compiled kernel),

at activation sparsity 0, 25, 40, 50, 70 and 90 % (that share of the input exactly zero, at random
positions). As in ``bench.decode_kernels`` the weights are not cache-resident: each format gets enough
distinct copies that they exceed twice the L3 (``--l3-mib``), and a timing is one sweep through all of
them. Each round times every format back to back (order reversed every other round); a ratio is the
median of the same-round ratios, with its interquartile range. ``byte_limit`` = 1 / (1 − s): the
speed-up a purely bandwidth-bound matvec reading only the active rows could reach. The 0 % row tells
how much of a speed-up is the input-major layout rather than skipped rows.

Results: ``bench/results/activation_kernels.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT, other_cpu_load
from bench.decode_kernels import cpu_name

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (384, 384), (1536, 384), (384, 1536)]
LEVELS = [0.0, 0.25, 0.4, 0.5, 0.7, 0.9]
FORMATS = ["dense", "act_sparse", "torch_gather"]


class _Gather(torch.nn.Module):
    def __init__(self, wt: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.wt, self.bias = wt, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nz = torch.nonzero(x[0]).flatten()
        return (x[0, nz] @ self.wt[nz] + self.bias)[None]


def _q(xs: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": qs[0], "q3": qs[2], "min": min(xs), "max": max(xs)}


def cell(shape: tuple[int, int], level: float, args: argparse.Namespace) -> dict[str, Any]:
    from audit.deploy.activation import ActSparseLinear

    out_f, in_f = shape
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(out_f, in_f, generator=gen) * 0.05
    b = torch.randn(out_f, generator=gen)
    x = torch.randn(1, in_f, generator=gen)
    x[0, torch.randperm(in_f, generator=gen)[: int(round(level * in_f))]] = 0.0
    dense = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        dense.weight.copy_(w)
        dense.bias.copy_(b)
    wt = w.T.contiguous()
    mods = {
        "dense": dense,
        "act_sparse": ActSparseLinear(wt, b, 0.0, False, 1),
        "torch_gather": _Gather(wt, b),
    }
    nbytes = w.numel() * 4
    n = max(args.min_copies, math.ceil(2 * args.l3_mib * 2**20 / nbytes))
    rec: dict[str, Any] = {"shape": list(shape), "activation_sparsity": level, "copies": n, "formats": {}}
    with torch.inference_mode():
        ref = dense(x)
        copies = {}
        for f, m in mods.items():
            err = float((m(x) - ref).abs().max() / ref.abs().max())
            copies[f] = [m] + [copy.deepcopy(m) for _ in range(n - 1)]
            rec["formats"][f] = {"max_rel_error": err}

        def sweep(ms: list[Any]) -> float:
            t0 = time.perf_counter()
            for m in ms:
                m(x)
            return (time.perf_counter() - t0) / len(ms)

        times: dict[str, list[float]] = {f: [] for f in mods}
        for r in range(args.rounds):
            for f in FORMATS if r % 2 == 0 else FORMATS[::-1]:
                sweep(copies[f])
                times[f].append(min(sweep(copies[f]) for _ in range(args.sweeps)))
    for f in FORMATS:
        rec["formats"][f]["us"] = _q([t * 1e6 for t in times[f]])
        if f != "dense":
            rec["formats"][f]["speedup"] = _q([d / t for d, t in zip(times["dense"], times[f], strict=True)])
    rec["byte_limit"] = 1.0 / (1.0 - level)
    del copies
    return rec


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"CPU: {result['cpu']}; torch {result['torch']}; {result['threads']} threads; one token (batch-1 decode), "
        f"fp32; weights swept through > 2x L3 ({result['l3_mib']} MiB); `python -m bench.activation_kernels`",
        "",
        "act_sparse (pa_act_mm) and torch gather vs dense nn.Linear: median of same-round ratios [IQR]; byte limit "
        "1 / (1 - s).",
        "",
        "| shape (out x in) | activation sparsity | dense µs | act_sparse × dense | torch gather × dense "
        "| byte limit |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        f = c["formats"]
        a, g = f["act_sparse"]["speedup"], f["torch_gather"]["speedup"]
        lines.append(
            f"| {c['shape'][0]}x{c['shape'][1]} | {c['activation_sparsity']:.0%} | {f['dense']['us']['median']:.1f} | "
            f"{a['median']:.2f}× [{a['q1']:.2f}, {a['q3']:.2f}] | {g['median']:.2f}× [{g['q1']:.2f}, {g['q3']:.2f}] | "
            f"{c['byte_limit']:.2f}× |"
        )
    lines += ["", f"Other CPU load before/after: {result['load_before']:.2f} / {result['load_after']:.2f}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--l3-mib", type=int, default=260)
    ap.add_argument("--min-copies", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "activation_kernels"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from audit.deploy.kernel import kernel_status, load_kernel

    load_kernel()
    result: dict[str, Any] = {
        "cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads, "l3_mib": args.l3_mib,
        "kernel": kernel_status().describe(), "load_before": other_cpu_load(), "cells": [],
    }  # fmt: skip
    for shape in SHAPES:
        for level in LEVELS:
            result["cells"].append(cell(shape, level, args))
            c = result["cells"][-1]
            print(shape, level, f"{c['formats']['act_sparse']['speedup']['median']:.2f}x", flush=True)
    result["load_after"] = other_cpu_load()
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    Path(args.out + ".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
