"""Sweeps at scale: the full demo sweep locally and on Ray, and how wall time grows.

Run (from the repository root)::

    .venv/bin/python -m bench.scale                      # everything (about 30 min on 2 cores)
    .venv/bin/python -m bench.scale --parts executors    # local vs Ray on the full demo sweep
    .venv/bin/python -m bench.scale --parts points,examples --suites performance,ood,bias

Every run is the real CLI (``python -m audit run -c ... --executor ...``) in a subprocess on the
embedded demo model and the demo's own config (``audit/demo``); the peak RSS is sampled every
0.2 s over the whole process tree (Ray's driver, raylet and workers included) with psutil.

* ``executors``: the full demo sweep (dense + 3 methods x 4 sparsities, all suites) with the
  local executor and with Ray (local ``ray.init``; ``--ray-workers`` tasks at a time, each with
  ``2 / workers`` torch threads).
* ``points``: wall time vs the number of sweep points (magnitude at 1, 2, 4, 8 sparsities).
* ``examples``: wall time vs the number of eval examples (the demo sweep cut to magnitude at
  two sparsities; in-distribution, shifted and counterfactual budgets scaled together).

Each scan is fitted with a least-squares line; the table gives seconds per point or per
example and R^2 (linear growth: R^2 close to 1). JSON goes to ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import other_cpu_load, setup_logging, wait_quiet

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_cli(cfg: Path, out: Path, executor: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "audit", "run", "-c", str(cfg), "-o", str(out), "--executor", executor, "-f", "json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(ps))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    errors = [e["suite"] for v in [res["baseline"], *res["variants"]] for e in v["errors"]]
    return {
        "executor": executor,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak / 2**20),
        "points": 1 + len(res["variants"]),
        "n_eval": res["datasets"][0]["n"],
        "errors": errors,
        "exit_code": proc.returncode,
    }


def write_demo_config(
    tmp: Path,
    *,
    sweep: dict[str, Any] | None = None,
    budget: dict[str, int] | None = None,
    suites: list[str] | None = None,
    executor: str = "",
) -> Path:
    from audit import demo
    from audit.config import load_config

    assets = demo.ensure_demo_assets()
    old_sweep, old_budget = demo.DEMO_SWEEP, demo.DEMO_BUDGET
    try:
        demo.DEMO_SWEEP = sweep or old_sweep
        demo.DEMO_BUDGET = {**old_budget, **(budget or {})}
        text = demo.demo_config_text(assets)
    finally:
        demo.DEMO_SWEEP, demo.DEMO_BUDGET = old_sweep, old_budget
    text = text.replace("output_dir: .\n", f"output_dir: {tmp / 'out'}\n")
    if executor:
        text += executor
    cfg = tmp / "audit.yaml"
    cfg.write_text(text, encoding="utf-8")
    if suites is not None:  # keep only the named suites
        import yaml

        doc = yaml.safe_load(text)
        doc["suites"] = {k: v for k, v in doc["suites"].items() if k in suites}
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    load_config(cfg)  # valid before anything runs
    return cfg


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * np.asarray(x) + intercept
    ss_res = float(((np.asarray(y) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(y) - np.mean(y)) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="executors,points,examples")
    ap.add_argument("--ray-workers", type=int, default=2, help="Ray tasks at a time (num_cpus / num_cpus_per_task).")
    ap.add_argument("--suites", default=None, help="Suites for the scans (default: the demo's: all four).")
    ap.add_argument("--points", default="1,2,4,8", help="Sparsities per scan step (points = this + dense).")
    ap.add_argument("--examples", default="150,300,600,1200")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = ap.parse_args(argv)
    setup_logging()
    parts = set(args.parts.split(","))
    suites = args.suites.split(",") if args.suites else None
    result: dict[str, Any] = {"benchmark": "scale", "args": vars(args), "cpu_count": psutil.cpu_count()}
    result["other_cpu_load_at_start"] = wait_quiet()

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if "executors" in parts:
            rows = []
            per_task = 2 / args.ray_workers
            for executor in ("local", "ray"):
                d = tmp / f"exec-{executor}"
                d.mkdir()
                extra = f"executor: {{num_cpus: 2, num_cpus_per_task: {per_task}}}\n" if executor == "ray" else ""
                cfg = write_demo_config(d, executor=extra)
                rows.append(run_cli(cfg, d / "out", executor) | {"other_cpu_load": other_cpu_load()})
                print(f"{executor:>6}: {rows[-1]}", flush=True)
            result["executors"] = rows
        if "points" in parts:
            rows = []
            for k in [int(v) for v in args.points.split(",")]:
                d = tmp / f"points-{k}"
                d.mkdir()
                sparsities = [round(0.1 + 0.8 * i / max(k - 1, 1), 2) for i in range(k)] if k > 1 else [0.5]
                cfg = write_demo_config(d, sweep={"methods": ["magnitude"], "sparsities": sparsities}, suites=suites)
                rows.append(run_cli(cfg, d / "out", "local"))
                print(f"points {rows[-1]['points']:>3}: {rows[-1]['wall_s']:.1f}s", flush=True)
            result["points"] = {
                "runs": rows,
                "fit": linear_fit([r["points"] for r in rows], [r["wall_s"] for r in rows]),
            }
        if "examples" in parts:
            rows = []
            for n in [int(v) for v in args.examples.split(",")]:
                d = tmp / f"examples-{n}"
                d.mkdir()
                budget = {"eval": n, "shifted": n, "counterfactual": n // 2}
                cfg = write_demo_config(
                    d, sweep={"methods": ["magnitude"], "sparsities": [0.5, 0.9]}, budget=budget, suites=suites
                )
                rows.append(run_cli(cfg, d / "out", "local"))
                print(f"examples {rows[-1]['n_eval']:>5}: {rows[-1]['wall_s']:.1f}s", flush=True)
            result["examples"] = {
                "runs": rows,
                "fit": linear_fit([r["n_eval"] for r in rows], [r["wall_s"] for r in rows]),
            }
    result["other_cpu_load_at_end"] = other_cpu_load()

    print()
    if "executors" in result:
        print("full demo sweep (dense + 3 methods x 4 sparsities, all suites)")
        print(f"{'executor':<10}{'wall s':>9}{'peak RSS MiB':>14}{'points':>8}{'errors':>8}")
        for r in result["executors"]:
            print(f"{r['executor']:<10}{r['wall_s']:>9.1f}{r['peak_rss_mib']:>14}{r['points']:>8}{len(r['errors']):>8}")
    for name, unit in (("points", "point"), ("examples", "example")):
        if name in result:
            fit = result[name]["fit"]
            xs = [r["points" if name == "points" else "n_eval"] for r in result[name]["runs"]]
            ys = [r["wall_s"] for r in result[name]["runs"]]
            pairs = ", ".join(f"{x}: {y:.0f}s" for x, y in zip(xs, ys, strict=True))
            print(
                f"wall time vs {name}: {pairs}; fit {fit['slope']:.3f} s/{unit} + {fit['intercept']:.0f} s, "
                f"R^2 {fit['r2']:.3f}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
