"""Accuracy vs sparsity for every pruning method on two real models.

Models: the embedded demo classifier (MiniLM-L6 fine-tuned on the generated reviews;
evaluated on its test split) and MiniLM-L6 fine-tuned on SST-2 (evaluated on GLUE
dev). Calibration examples come from each model's train split. Every number comes
from the real pipeline: one ``run_audit`` per model with the ``performance`` suite
(accuracy with a bootstrap CI; accuracy_delta vs dense with a paired CI and McNemar).

Run (from the repository root)::

    .venv/bin/python -m bench.pruning_accuracy                       # everything
    .venv/bin/python -m bench.pruning_accuracy --models demo --methods magnitude,wanda,sparsegpt
    .venv/bin/python -m bench.pruning_accuracy --reprint bench/results/pruning_accuracy.json

It prints an accuracy table per model and writes JSON (default
``bench/results/pruning_accuracy.json``), then says whether Wanda and SparseGPT keep
accuracy better than magnitude at 50 % unstructured sparsity, with a paired comparison
on the same examples (paired bootstrap CI of the accuracy difference and exact McNemar;
"beats" needs both: CI above 0 and p < 0.05).
For that the bench runs the ``performance`` suite through a bench-only subclass,
registered like any third-party suite, that also returns each example's correctness.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from audit.atomic import atomic_write_text
from bench.common import ROOT, SHARED_DATA, demo_model, other_cpu_load, setup_logging, sst2_minilm
from suites.performance.run import PerformanceSuite

log = logging.getLogger("bench.pruning_accuracy")

SUITE = "bench_performance"

# label -> sweep entry (YAML flow mapping); the label is what the table shows
METHODS: dict[str, str] = {
    "magnitude": "{name: magnitude}",
    "magnitude-global": "{name: magnitude, params: {scope: global}}",
    "nm-2:4": "{name: nm, params: {n: 2, m: 4}}",
    "nm-4:8": "{name: nm, params: {n: 4, m: 8}}",
    "wanda": "{name: wanda}",
    "wanda-2:4": "{name: wanda, params: {n: 2, m: 4}}",
    "sparsegpt": "{name: sparsegpt}",
    "sparsegpt-2:4": "{name: sparsegpt, params: {n: 2, m: 4}}",
    "gradient": "{name: gradient}",
    "structured-l2": "{name: structured}",
    "structured-importance": "{name: structured, params: {criterion: importance}}",
    "gradual": "{name: gradual}",
    "gradual-distill": "{name: gradual, params: {distill: {alpha: 0.5, temperature: 2.0}}}",
    "movement": "{name: movement}",
    "imp": "{name: imp, params: {scope: global}}",
}


def _register_suite() -> None:
    """``bench_performance``: the performance suite, plus each example's correctness."""
    from audit.registry import SUITES, SuiteSpec

    if SUITE in SUITES:
        return
    base = SUITES.get("performance")
    SUITES.register(
        SuiteSpec(
            name=SUITE,
            impl="bench.pruning_accuracy:PerformanceWithCorrectness",
            summary="performance suite that also returns per-example correctness (benchmark only)",
            params=base.params,
            metrics=base.metrics,
        )
    )


class PerformanceWithCorrectness(PerformanceSuite):
    """The performance suite; its example row carries each example's correctness ("0"/"1" string)."""

    def run(self, variant: Any, ctx: Any) -> Any:
        out = super().run(variant, ctx)
        labels = ctx.eval_set.labels.tolist()
        correct = "".join("1" if p == y else "0" for p, y in zip(out.artifacts["pred"], labels, strict=True))
        out.examples = [{"correct": correct}]
        return out


def _model_setup(name: str) -> dict[str, Any]:
    if name == "demo":
        assets = demo_model()
        data = assets["data"]
        return {
            "model": assets["model"],
            "data": (
                f"  name: demo-reviews\n  files: {{train: {data['train']}, test: {data['test']}}}\n"
                "  columns: {text: text, label: label}\n  splits: {eval: test, calibration: train}\n"
            ),
            "eval": "test",
        }
    if name == "sst2":
        model_dir, _card = sst2_minilm()
        d = SHARED_DATA / "sst2"
        return {
            "model": model_dir,
            "data": (
                f"  name: sst2\n  files: {{train: {d / 'train.tsv'}, dev: {d / 'dev.tsv'}}}\n"
                "  format: tsv\n  columns: {text: sentence, label: label}\n  splits: {eval: dev, calibration: train}\n"
            ),
            "eval": "dev",
        }
    raise SystemExit(f"unknown model {name!r}; use demo or sst2")


def _config_text(setup: dict[str, Any], methods: list[str], args: argparse.Namespace, out_dir: Path) -> str:
    entries = "\n".join(f"    - {METHODS[m]}" for m in methods)
    return (
        f"model:\n  path: {setup['model']}\n  max_length: {args.max_length}\n"
        f"data:\n{setup['data']}"
        + (f"  max_eval_examples: {args.max_eval}\n" if args.max_eval else "")
        + f"sweep:\n  methods:\n{entries}\n"
        f"  sparsities: [{', '.join(str(s) for s in args.sparsities)}]\n"
        f"  seeds: [{', '.join(str(s) for s in args.seeds)}]\n"
        f"  calibration: {{n: {args.calib_n}, seed: 0}}\n"
        f"suites:\n  {SUITE}: {{}}\n"
        "policy: null\n"
        f"output_dir: {out_dir}\n"
        f"runtime:\n  batch_size: 32\n  n_boot: {args.n_boot}\n"
        + (f"  threads: {args.threads}\n" if args.threads else "")
        + "report:\n  formats: [json]\n"
    )


def _labels(methods: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(bench label, method name, normalised params) of each benchmarked method."""
    import yaml

    from audit.config import MethodConfig

    out = []
    for m in methods:
        entry = MethodConfig.model_validate(yaml.safe_load(METHODS[m]))
        out.append((m, entry.name, entry.params))
    return out


def _label_of(method: str, params: dict[str, Any], labels: list[tuple[str, str, dict[str, Any]]]) -> str:
    for label, name, p in labels:
        if name == method and p == params:
            return label
    return method


def _metric(variant: Any, name: str) -> Any:
    """The performance suite's ``name`` on the evaluated split (first dataset it measured)."""
    return next((m for m in variant.measurements if m.suite == SUITE and m.metric == name), None)


def run_model(name: str, methods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from audit.config import config_from_text
    from audit.runner import run_audit

    setup = _model_setup(name)
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        text = _config_text(setup, methods, args, Path(tmp) / "out")
        cfg = config_from_text(text, name=f"<bench {name}>")
        t0 = time.perf_counter()
        outcome = run_audit(cfg, command=f"bench.pruning_accuracy --models {name}", write=False)
        wall = time.perf_counter() - t0
    res = outcome.result
    labels = _labels(methods)
    rows = []
    for v in res.all_variants():
        acc = _metric(v, "accuracy")
        delta = _metric(v, "accuracy_delta")
        p = v.pruning
        rows.append(
            {
                "method": "dense" if v.is_baseline else _label_of(v.point.method, v.point.params, labels),
                "point": v.id,
                "sparsity": v.point.sparsity,
                "seed": v.point.seed,
                "accuracy": acc.value if acc else None,
                "ci": [acc.ci_low, acc.ci_high] if acc else None,
                "n": acc.n if acc else None,
                "delta": delta.value if delta else None,
                "delta_ci": [delta.ci_low, delta.ci_high] if delta else None,
                "mcnemar_p": (delta.details.get("paired") or {}).get("p_value") if delta else None,
                "achieved_sparsity": p.achieved_sparsity if p else 0.0,
                "model_sparsity": p.model_sparsity if p else 0.0,
                "prune_wall_s": p.wall_time_s if p else 0.0,
                "calibration": p.calibration.model_dump() if p and p.calibration else None,
                "errors": [e.message for e in v.errors],
                "correct": (v.examples.get(SUITE) or [{}])[0].get("correct"),
            }
        )
    return {
        "model": name,
        "model_source": str(setup["model"]),
        "model_fingerprint": res.model.fingerprint,
        "eval_split": setup["eval"],
        "eval_n": res.datasets[0].n if res.datasets else None,
        "wall_s": wall,
        "rows": rows,
    }


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def table(result: dict[str, Any], sparsities: list[float]) -> str:
    rows = result["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    levels = sorted({r["sparsity"] for r in rows if r["method"] != "dense"} | set(sparsities))
    head = f"{'method':<24}" + "".join(f"{f's={s:.2f}':>14}" for s in levels)
    lines = [
        f"== {result['model']} ({result['eval_split']}, n={result['eval_n']}): dense accuracy "
        f"{dense['accuracy']:.4f} [{dense['ci'][0]:.3f}, {dense['ci'][1]:.3f}]",
        head,
        "-" * len(head),
    ]
    for m in methods:
        cells = []
        for s in levels:
            pts = [r for r in rows if r["method"] == m and abs(r["sparsity"] - s) < 1e-9]
            acc = _mean([r["accuracy"] for r in pts])
            if acc is None:
                cells.append(f"{'-':>14}")
            else:
                ach = _mean([r["achieved_sparsity"] for r in pts])
                cells.append(f"{acc:>8.4f} ({ach:.2f})")
        lines.append(f"{m:<24}" + "".join(cells))
    lines.append("cells: accuracy (achieved weight sparsity of the pruned layers), mean over seeds")
    return "\n".join(lines)


def verdict(result: dict[str, Any], n_boot: int = 2000) -> list[dict[str, Any]]:
    """Do Wanda and SparseGPT beat magnitude? Paired on the same examples, per level and seed.

    The question asked of the benchmark is the 50 % level; the other levels come along.
    """
    import numpy as np

    from audit.paired import mcnemar_exact, paired_bootstrap_delta

    rows = result["rows"]

    def at(method: str, level: float, seed: int) -> dict[str, Any] | None:
        return next(
            (r for r in rows if r["method"] == method and abs(r["sparsity"] - level) < 1e-9 and r["seed"] == seed),
            None,
        )

    out = []
    seeds = sorted({r["seed"] for r in rows if r["method"] == "magnitude"})
    levels = sorted({r["sparsity"] for r in rows if r["method"] == "magnitude"}, key=lambda x: (x != 0.5, x))
    for level, m, seed in ((lv, m, sd) for lv in levels for m in ("wanda", "sparsegpt") for sd in seeds):
        mag, other = at("magnitude", level, seed), at(m, level, seed)
        if mag is None or other is None or mag["correct"] is None or other["correct"] is None:
            continue
        a = np.frombuffer(mag["correct"].encode(), dtype=np.uint8) == ord("1")
        b = np.frombuffer(other["correct"].encode(), dtype=np.uint8) == ord("1")
        diff, lo, hi = paired_bootstrap_delta(a, b, n_boot=n_boot, seed=0)
        test = mcnemar_exact(a, b)
        out.append(
            {
                "model": result["model"],
                "method": m,
                "sparsity": level,
                "seed": seed,
                "accuracy": other["accuracy"],
                "magnitude_accuracy": mag["accuracy"],
                "difference": diff,
                "ci": [lo, hi],
                "mcnemar": test,
                # both the paired bootstrap CI and the exact McNemar test must agree
                "beats_magnitude": bool(lo is not None and lo > 0 and test["p_value"] < 0.05),
                "worse_than_magnitude": bool(hi is not None and hi < 0 and test["p_value"] < 0.05),
            }
        )
    return out


def _verdict_line(v: dict[str, Any]) -> str:
    lo, hi = v["ci"]
    word = (
        "beats"
        if v["beats_magnitude"]
        else ("is worse than" if v["worse_than_magnitude"] else "is not distinguishable from")
    )
    return (
        f"{v['model']} seed {v['seed']}: at {v['sparsity']:.0%} {v['method']} {word} magnitude: {v['accuracy']:.4f} vs "
        f"{v['magnitude_accuracy']:.4f}, paired difference {v['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}], "
        f"McNemar p={v['mcnemar']['p_value']:.3g} ({v['mcnemar']['gained']} gained / {v['mcnemar']['lost']} lost)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="demo,sst2", help="comma list of demo, sst2")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--sparsities", default="0.3,0.5,0.7,0.9")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--max-eval", type=int, default=None, help="cap on evaluated examples (default: all)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pruning_accuracy.json"))
    ap.add_argument("--reprint", metavar="JSON", help="print tables and verdict of a finished run; run nothing")
    args = ap.parse_args(argv)
    if args.reprint:
        done = json.loads(Path(args.reprint).read_text())
        for r in done["results"]:
            print(table(r, done["args"]["sparsities"]))
            print()
        for r in done["results"]:
            for v in verdict(r):
                print(_verdict_line(v))
        return 0
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    setup_logging()
    _register_suite()
    load = other_cpu_load()
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        log.info("model %s: %d methods × %s × seeds %s", name, len(methods), args.sparsities, args.seeds)
        results.append(run_model(name, methods, args))
    report = {
        "benchmark": "pruning_accuracy",
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "methods": {m: METHODS[m] for m in methods},
        "other_cpu_load_at_start": load,
        "results": results,
        "verdict": [v for r in results for v in verdict(r)],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    for r in results:
        print(table(r, args.sparsities))
        print()
    for v in report["verdict"]:
        print(_verdict_line(v))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
