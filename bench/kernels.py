"""Sparse-kernel benchmark: per-layer speed-ups and end-to-end deployed-model speed.

Run on a quiet machine (the lead re-runs it so)::

    .venv/bin/python -m bench.kernels                 # full run, 2 threads, JSON to bench/results/
    .venv/bin/python -m bench.kernels --quick         # a smaller grid for development

Part 1, layers: for BERT-base (768x768, 3072x768, 768x3072) and MiniLM (384x384,
1536x384, 384x1536) weights at 50/70/90/95 % sparsity, with batch 1 and batch 32 of
``--seq`` tokens (128 and 4096 tokens), it times side by side, in one process:
dense ``F.linear``, torch CSR (int32 indices), torch BSR 8x8 and 32x32 on a *block* mask
of the same sparsity (BSR needs one; on an unstructured mask it stores nearly every
block), and our ``kernel`` format. Every result is checked against ``F.linear`` and
reported next to its memory-traffic limit: dense bytes / the format's stored bytes.
All candidates are timed in ``--layer-rounds`` rounds (dense, every format, dense again,
back to back) and each keeps its best round. ``wait_quiet()`` runs before every cell and
the cell records the CPU share other processes used. The VM also has slow phases no
process can see (see ``wait_steady`` in ``bench/common.py``): a round counts only if a
probe just before and just after it shows the machine steady, so both sides of every
ratio are measured in the same verified state; discarded rounds are kept in the JSON.

Part 2, end to end: the MiniLM-L6 demo classifier (fine-tuned, real), dense vs

* 90 % unstructured magnitude pruning deployed with the measured per-layer format
  choice (what an audit ships), and the same with torch CSR forced everywhere;
* 50 % structured pruning: the project's ``structured`` pruner (half of each block's
  attention heads and half of its FFN neurons removed physically, ranked by L2 norm),
  deployed as an audit deploys it. ``--structured-model DIR`` measures any other
  structurally pruned model instead (a Hugging Face checkpoint or a saved deployed
  variant).

Batch-1 latency and batch-32 throughput at ``--seq`` tokens, 2 threads, with the
equivalence check against the masked-dense model.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import ROOT, other_cpu_load, setup_logging, wait_quiet, wait_steady

log = logging.getLogger("bench.kernels")

SHAPES = {
    "bert-base": [(768, 768), (3072, 768), (768, 3072)],
    "minilm": [(384, 384), (1536, 384), (384, 1536)],
    "smollm2": [(576, 576), (192, 576), (1536, 576), (576, 1536)],  # --prefill only
}
SPARSITIES = [0.5, 0.7, 0.9, 0.95]
BSR_BLOCKS = (8, 32)


# -- part 1: layers ----------------------------------------------------------------------


def _time(fn: Any, min_time: float, threads: int) -> tuple[float, float]:
    """(median, fastest) seconds per call over ``torch.utils.benchmark`` blocks."""
    from torch.utils.benchmark import Timer

    fn()
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_time)
    return float(m.median), float(min(m.times))


def layer_cell(
    shape: tuple[int, int],
    sparsity: float | str,
    tokens: int,
    *,
    threads: int,
    min_time: float,
    statistic: str = "median",
    rounds: int = 2,
    steady: Any = None,
    max_rounds: int = 12,
) -> dict[str, Any]:
    """Time dense vs every format for one weight shape, sparsity (or "2:4") and token count."""
    from audit.deploy.choose import build_module, synthetic_weight
    from audit.deploy.format_classes import synthetic_2_4

    two_four = sparsity == "2:4"
    density = 0.5 if two_four else 1.0 - float(sparsity)
    w = synthetic_2_4(shape, seed=1, dtype=torch.float32) if two_four else synthetic_weight(shape, density, seed=1)
    b = torch.randn(shape[0], generator=torch.Generator().manual_seed(2))
    x = torch.randn(tokens, shape[1], generator=torch.Generator().manual_seed(3))
    dense = build_module("dense", w, b)
    modules: dict[str, tuple[nn.Module, torch.Tensor]] = {
        "csr": (build_module("csr", w, b), w),
        "kernel": (build_module("kernel", w, b), w),
    }
    for blk in () if two_four else BSR_BLOCKS:  # BSR needs a block mask; 2:4 has none
        wb = synthetic_weight(shape, density, block=blk, seed=1)
        modules[f"bsr{blk}"] = (build_module(f"bsr{blk}", wb, b), wb)
    dense_bytes = w.numel() * 4
    cell: dict[str, Any] = {
        "shape": list(shape),
        "sparsity": sparsity,
        "tokens": tokens,
        "dense_bytes": dense_bytes,
        "formats": {},
    }
    # Rounds: dense, then every format, then dense again, all back to back. A round counts
    # only if the machine was steady (wait_steady's probe within tolerance) just before and
    # just after it, so both sides of every ratio were measured in the same, verified state;
    # unsteady rounds are recorded and redone (up to ``max_rounds`` in all). Each candidate
    # keeps its best steady round.
    kept: dict[str, list[tuple[float, float]]] = {}
    discarded: list[dict[str, Any]] = []
    with torch.inference_mode():
        for name, (mod, wf) in modules.items():
            err = float((mod(x) - nn.functional.linear(x, wf, b)).abs().max())
            if not err < 1e-3:
                raise AssertionError(f"{name} {shape} s={sparsity}: max error {err}")
            cell["formats"][name] = {"bytes": mod.stored_bytes(), "max_abs_err": err}
        _time(lambda: dense(x), min_time, threads)  # warm-up: the machine was idle in wait_quiet()
        attempts = 0
        while len(kept.get("dense", [])) < 2 * max(1, rounds) and attempts < max_rounds:
            attempts += 1
            before = steady() if steady else None
            times = {"dense": [_time(lambda: dense(x), min_time, threads)]}
            for name, (mod, _wf) in modules.items():
                times[name] = [_time(lambda m=mod: m(x), min_time, threads)]
            times["dense"].append(_time(lambda: dense(x), min_time, threads))
            after = steady(timeout=0) if steady else None
            ok = before is None or (before["steady"] and after["steady"])
            if not ok:
                discarded.append({"before": before, "after": after, "seconds": {k: v[0][0] for k, v in times.items()}})
                continue
            for name, ts in times.items():
                kept.setdefault(name, []).extend(ts)
        if not kept:  # never steady: keep the last round, flagged
            log.warning("%s s=%.2f tokens=%d: no steady round in %d attempts", shape, sparsity, tokens, attempts)
            kept = times
            cell["unsteady"] = True
    for name, f in cell["formats"].items():
        f["seconds"] = min(t[0] for t in kept[name])
        f["seconds_min"] = min(t[1] for t in kept[name])
        f["round_seconds"] = [t[0] for t in kept[name]]
    dense_rounds = [t[0] for t in kept["dense"]]
    cell["rounds"] = len(kept["kernel"])
    cell["rounds_discarded"] = discarded
    cell["dense_seconds"] = min(dense_rounds)
    cell["dense_seconds_min"] = min(t[1] for t in kept["dense"])
    cell["dense_round_seconds"] = dense_rounds
    cell["dense_spread"] = (max(dense_rounds) - min(dense_rounds)) / cell["dense_seconds"]
    key = "seconds_min" if statistic == "min" else "seconds"
    dense_t = cell["dense_seconds_min"] if statistic == "min" else cell["dense_seconds"]
    cell["statistic"] = statistic
    for f in cell["formats"].values():
        f["speedup"] = dense_t / f[key]
        f["memory_limit"] = dense_bytes / f["bytes"]
        f["of_limit"] = f["speedup"] / f["memory_limit"]
    k, c = cell["formats"]["kernel"], cell["formats"]["csr"]
    cell["kernel_vs_csr"] = c[key] / k[key]
    return cell


def run_layers(args: argparse.Namespace) -> list[dict[str, Any]]:
    cells = []
    for family in args.families:
        for shape in SHAPES[family]:
            if family == "smollm2" and not args.prefill:
                continue
            if args.prefill and shape == (768, 768):
                continue
            if args.quick and family == "bert-base" and shape != (3072, 768):
                continue
            for s in args.sparsities:
                for batch in args.batches:
                    tokens = batch * args.seq
                    load = wait_quiet(args.quiet_threshold, args.quiet_timeout)
                    t0 = time.perf_counter()
                    cell = layer_cell(
                        shape,
                        s,
                        tokens,
                        threads=args.threads,
                        min_time=args.min_time,
                        statistic=args.statistic,
                        rounds=args.layer_rounds,
                        steady=lambda timeout=args.quiet_timeout: wait_steady(args.threads, timeout=timeout),
                    )
                    cell["family"] = family
                    cell["batch"] = batch
                    cell["other_load_before"] = load
                    cell["other_load_after"] = other_cpu_load(0.3)
                    cells.append(cell)
                    log.info(
                        "%s %s s=%s b=%d: kernel %.2fx (csr %.2fx, bsr8 %.2fx, bsr32 %.2fx) in %.1fs",
                        family,
                        shape,
                        _pattern(s),
                        batch,
                        _speedup(cell, "kernel"),
                        _speedup(cell, "csr"),
                        _speedup(cell, "bsr8"),
                        _speedup(cell, "bsr32"),
                        time.perf_counter() - t0,
                    )
    return cells


def _pattern(sparsity: float | str) -> str:
    return sparsity if isinstance(sparsity, str) else f"{sparsity:.2f}"


def _speedup(cell: dict[str, Any], name: str) -> float:
    f = cell["formats"].get(name)
    return f["speedup"] if f else float("nan")


def print_layers(cells: list[dict[str, Any]]) -> None:
    stat = cells[0].get("statistic", "median") if cells else "median"
    print(f"\n## Per-layer speed-up vs dense F.linear ({stat} of timing blocks; dense = faster of before/after)")
    print("   limit = dense bytes / stored bytes (the memory-traffic limit); bsr* use a block mask")
    head = (
        f"{'shape (out x in)':<18}{'s':>5}{'tokens':>7}{'dense ms':>10}{'csr':>7}{'bsr8*':>7}{'bsr32*':>7}"
        f"{'kernel':>8}{'k/csr':>7}{'k limit':>8}{'k %lim':>7}{'load':>6}{'redo':>6}"
    )
    print(head)
    print("-" * len(head))
    for c in cells:
        f = c["formats"]
        print(
            f"{c['shape'][0]:>5} x {c['shape'][1]:<10}{_pattern(c['sparsity']):>5}{c['tokens']:>7}"
            f"{c['dense_seconds'] * 1e3:>10.3f}{f['csr']['speedup']:>7.2f}{_speedup(c, 'bsr8'):>7.2f}"
            f"{_speedup(c, 'bsr32'):>7.2f}{f['kernel']['speedup']:>8.2f}{c['kernel_vs_csr']:>7.2f}"
            f"{f['kernel']['memory_limit']:>8.2f}{100 * f['kernel']['of_limit']:>6.0f}%"
            f"{max(c['other_load_before'], c['other_load_after']):>6.2f}"
            f"{len(c['rounds_discarded']):>6}"
        )


def summarize_layers(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric means per (family, sparsity, batch) and the issue's targets at 90 %."""

    def gm(values: list[float]) -> float:
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")

    groups: dict[str, dict[str, float]] = {}
    for c in cells:
        key = f"{c['family']} s={_pattern(c['sparsity'])} batch={c['batch']}"
        g = groups.setdefault(key, {})
        for name in ("kernel", "csr", "bsr8", "bsr32"):
            if name in c["formats"]:
                g.setdefault(name, []).append(c["formats"][name]["speedup"])  # type: ignore[attr-defined]
        g.setdefault("kernel_vs_csr", []).append(c["kernel_vs_csr"])  # type: ignore[attr-defined]
    out = {k: {n: gm(v) for n, v in g.items()} for k, g in groups.items()}  # type: ignore[arg-type]
    targets = []
    for c in cells:
        if c["sparsity"] == 0.9 and c["batch"] == 1:
            k = c["formats"]["kernel"]["speedup"]
            targets.append(
                {
                    "family": c["family"],
                    "shape": c["shape"],
                    "kernel_speedup": k,
                    "kernel_vs_csr": c["kernel_vs_csr"],
                    "meets_2.5x_dense": k >= 2.5,
                    "meets_1.5x_csr": c["kernel_vs_csr"] >= 1.5,
                }
            )
    # issue 19, item 3: at 128 tokens, 50 % unstructured >= 1.15x dense and 90 % >= 3.5x per layer
    prefill = [
        {
            "family": c["family"],
            "shape": c["shape"],
            "sparsity": c["sparsity"],
            "kernel_speedup": c["formats"]["kernel"]["speedup"],
            "target": {0.5: 1.15, 0.9: 3.5}[c["sparsity"]],
            "meets": c["formats"]["kernel"]["speedup"] >= {0.5: 1.15, 0.9: 3.5}[c["sparsity"]],
        }
        for c in cells
        if c["sparsity"] in (0.5, 0.9) and c["tokens"] == 128
    ]
    return {"geomean": out, "targets_90pct_batch1": targets, "targets_prefill_128": prefill}


# -- part 2: end to end --------------------------------------------------------------------


def _probe(tokenizer: Any, texts: list[str]) -> list[dict[str, torch.Tensor]]:
    return [
        dict(tokenizer(texts[i : i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
        for i in range(0, len(texts), 16)
    ]


def run_e2e(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.config import DeployConfig, LayerSelection
    from audit.deploy.choose import TimingCache
    from audit.deploy.convert import Converter
    from audit.deploy.pipeline import DeployContext, deploy_variant
    from audit.deploy.speed import measure_speed, model_bytes
    from audit.pruning.base import PruneContext
    from audit.registry import PRUNERS
    from bench.common import demo_model

    assets = demo_model()
    model_dir = assets["model"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in Path(assets["data"]["test"]).read_text().splitlines()[:64]]
    probe = _probe(tok, [r["text"] for r in rows])
    torch.set_num_threads(args.threads)
    out = []

    def record(label: str, model: nn.Module, extra: dict[str, Any]) -> None:
        # As per layer, a measurement counts only if the machine was steady just before and
        # just after it. Noise on this VM is bursty, so ``--e2e-repeats`` steady measurements
        # are taken and the one with the median batch-1 speed-up is reported; all are kept.
        steady_runs: list[dict[str, Any]] = []
        discarded: list[dict[str, Any]] = []
        loads: list[float] = []
        for _attempt in range(args.e2e_attempts):
            loads.append(wait_quiet(args.quiet_threshold, args.quiet_timeout))
            before = wait_steady(args.threads, timeout=args.quiet_timeout)
            sp = measure_speed(
                dense,
                model,
                seq_len=args.seq,
                batch_size=32,
                threads=args.threads,
                min_time=args.e2e_min_time,
                rounds=args.rounds,
            )
            after = wait_steady(args.threads, timeout=0)
            run = {"before": before, "after": after, "speed": sp.model_dump()}
            if before["steady"] and after["steady"]:
                steady_runs.append(run)
                if len(steady_runs) == args.e2e_repeats:
                    break
            else:
                discarded.append(run)
                log.warning("%s: the machine was not steady during a measurement; measuring again", label)
        unsteady = not steady_runs
        if unsteady:
            log.warning("%s: no steady measurement in %d attempts; reporting the unsteady ones", label, len(discarded))
        runs = sorted(steady_runs or discarded, key=lambda r: r["speed"]["speedup_b1"])
        chosen = runs[(len(runs) - 1) // 2]
        row = {
            "variant": label,
            "model": str(model_dir),
            **extra,
            "speed": chosen["speed"],
            "speedup_b1_repeats": [r["speed"]["speedup_b1"] for r in steady_runs],
            "speedup_b32_repeats": [r["speed"]["speedup_batch"] for r in steady_runs],
            "bytes_dense": model_bytes(dense),
            "bytes_deployed": model_bytes(model),
            "other_load_max": max(loads + [other_cpu_load(0.3)]),
            "steady_runs": steady_runs,
            "discarded_runs": discarded,
            "unsteady": unsteady,
        }
        out.append(row)
        log.info(
            "%s: b1 %.2fx (median of %s), b32 %.2fx",
            label,
            chosen["speed"]["speedup_b1"],
            ", ".join(f"{v:.2f}" for v in row["speedup_b1_repeats"]),
            chosen["speed"]["speedup_batch"],
        )

    spec = PRUNERS.get("magnitude")
    pruner = spec.load()(spec, spec.params.model_validate({}))
    # format timings are measured afresh in this run (never read from, or written to, the user's cache)
    cache = TimingCache(None)
    for label, force in (("unstructured-90%-measured-choice", None), ("unstructured-90%-torch-csr-forced", "csr")):
        model = copy.deepcopy(dense)
        pr = pruner.prune(model, PruneContext(sparsity=0.9, seed=0, layers=LayerSelection()))
        opts = DeployConfig(force_format=force)
        ctx = DeployContext(
            converter=Converter(opts, cache, threads=args.threads), probe=probe, dense=dense, measure_speed=False
        )
        dep = deploy_variant(model, pr, ctx)
        eq = dep.record.equivalence
        assert eq is not None and eq.passed, eq
        reasons = {layer.name: f"{layer.format}: {layer.format_reason}" for layer in pr.layers}
        record(
            label,
            model,
            {
                "formats": dep.record.formats,
                "equivalence": eq.model_dump(),
                "achieved_sparsity": pr.achieved_sparsity,
                "timings_measured": dep.record.timings_measured,
                "timings_cached": dep.record.timings_cached,
                "layer_reasons": reasons,
                "linear_memory_limit": dep.record.linear_bytes_dense / dep.record.linear_bytes_deployed,
            },
        )
        del model

    if args.structured_model:
        from audit.deploy.io import MANIFEST, load_deployed

        p = Path(args.structured_model)
        model = (
            load_deployed(p)
            if (p / MANIFEST).is_file()
            else AutoModelForSequenceClassification.from_pretrained(p).eval()
        )
        extra: dict[str, Any] = {"source": str(p)}
    else:  # the project's structured pruner (heads + FFN neurons, L2 norm), as an audit runs it
        model = copy.deepcopy(dense)
        spec = PRUNERS.get("structured")
        sp_pruner = spec.load()(spec, spec.params.model_validate({"units": ["heads", "ffn"], "criterion": "l2"}))
        pr = sp_pruner.prune(model, PruneContext(sparsity=0.5, seed=0, layers=LayerSelection()))
        model.eval()
        extra = {"source": "structured pruner: heads + ffn, l2, 0.5", "achieved_sparsity": pr.achieved_sparsity}
    ctx = DeployContext(
        converter=Converter(DeployConfig(), cache, threads=args.threads),
        probe=probe,
        dense=dense,
        measure_speed=False,
    )
    dep = deploy_variant(model, None, ctx)  # the reference of a structured variant is itself
    assert dep.passed, dep.record.equivalence
    extra["formats"] = dep.record.formats
    extra["equivalence"] = dep.record.equivalence.model_dump()
    record("structured-50%", model, extra)
    return out


def print_e2e(rows: list[dict[str, Any]], seq: int) -> None:
    print(f"\n## End to end: MiniLM-L6 demo classifier, seq {seq}, dense vs deployed")
    head = (
        f"{'variant':<36}{'b1 ms dense':>12}{'b1 ms dep':>11}{'b1 x':>7}"
        f"{'b32 seq/s d':>13}{'b32 seq/s p':>13}{'b32 x':>7}{'bytes':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        s = r["speed"]
        print(
            f"{r['variant']:<36}{s['latency_b1_ms_dense']:>12.2f}{s['latency_b1_ms_deployed']:>11.2f}"
            f"{s['speedup_b1']:>7.2f}{s['throughput_dense']:>13.1f}{s['throughput_deployed']:>13.1f}"
            f"{s['speedup_batch']:>7.2f}{r['bytes_deployed'] / r['bytes_dense']:>7.2f}"
        )
        if "formats" in r:
            print(f"    formats: {r['formats']}")
        reps = ", ".join(f"{v:.2f}" for v in r.get("speedup_b1_repeats", []))
        print(f"    b1 x of each steady measurement: {reps or 'none (unsteady)'}")
    print("\n## Target: 50 % structured end to end >= 1.8x dense at batch 1 (median of steady measurements)")
    for r in rows:
        if r["variant"].startswith("structured"):
            x = r["speed"]["speedup_b1"]
            print(f"  {r['variant']}: {x:.2f}x ({'ok' if x >= 1.8 and not r.get('unsteady') else 'MISSED'})")


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grid: MiniLM + 3072x768, s=0.9, batch 1")
    ap.add_argument(
        "--prefill",
        action="store_true",
        help="128-token layers only (issue 19, item 3): MiniLM, SmolLM2, 3072x768 at 50 %%, 2:4, 70 %%, 90 %%",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per layer timing")
    ap.add_argument("--e2e-min-time", type=float, default=1.0, help="seconds per end-to-end timing")
    ap.add_argument("--rounds", type=int, default=2, help="alternating dense/deployed rounds end to end")
    ap.add_argument(
        "--layer-rounds", type=int, default=2, help="alternating rounds of dense and every format per layer cell"
    )
    ap.add_argument("--e2e-repeats", type=int, default=3, help="steady end-to-end measurements per variant (median)")
    ap.add_argument("--e2e-attempts", type=int, default=8, help="end-to-end measurements tried at most per variant")
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--structured-model", help="a structurally pruned model dir (HF checkpoint or deployed variant)")
    ap.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="per-layer speed-ups from the median block (default) or the fastest block (robust on a busy machine)",
    )
    ap.add_argument("--quiet-threshold", type=float, default=0.06)
    ap.add_argument("--quiet-timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernels.json")
    args = ap.parse_args(argv)
    args.families = list(SHAPES)
    args.sparsities = SPARSITIES
    args.batches = [1, 32]
    if args.quick:
        args.sparsities, args.batches = [0.9], [1]
    if args.prefill:
        args.sparsities, args.batches, args.no_e2e = [0.5, "2:4", 0.7, 0.9], [1], True
    setup_logging()
    torch.set_num_threads(args.threads)
    from audit.deploy.kernel import cpu_identity, kernel_status

    status = kernel_status()
    if not status.available:
        log.error("the compiled kernel is unavailable: %s", status.reason)
        return 1
    result: dict[str, Any] = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, "-m", "bench.kernels", *(argv or sys.argv[1:])]),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "threads": args.threads,
            "seq": args.seq,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": cpu_identity()["model"],
            "kernel": status.describe(),
            "kernel_flags": status.flags,
            "min_time": args.min_time,
            "statistic": args.statistic,
            "layer_rounds": args.layer_rounds,
            "e2e_rounds": args.rounds,
        }
    }
    if not args.no_layers:
        cells = run_layers(args)
        result["layers"] = cells
        result["layer_summary"] = summarize_layers(cells)
        print_layers(cells)
        if args.prefill:
            print("\n## Prefill targets at 128 tokens: kernel >= 1.15x dense at 50 %, >= 3.5x at 90 %")
            for t in result["layer_summary"]["targets_prefill_128"]:
                print(
                    f"  {t['family']:<10}{str(tuple(t['shape'])):<14} s={t['sparsity']:.2f} kernel "
                    f"{t['kernel_speedup']:.2f}x ({'ok' if t['meets'] else 'MISSED'})"
                )
        print("\n## Targets at 90 % unstructured, batch 1 (128 tokens): kernel >= 2.5x dense and >= 1.5x torch CSR")
        for t in result["layer_summary"]["targets_90pct_batch1"]:
            print(
                f"  {t['family']:<10}{str(tuple(t['shape'])):<14} kernel {t['kernel_speedup']:.2f}x dense "
                f"({'ok' if t['meets_2.5x_dense'] else 'MISSED'}), {t['kernel_vs_csr']:.2f}x csr "
                f"({'ok' if t['meets_1.5x_csr'] else 'MISSED'})"
            )
    if not args.no_e2e:
        result["e2e"] = run_e2e(args)
        print_e2e(result["e2e"], args.seq)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from audit.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
