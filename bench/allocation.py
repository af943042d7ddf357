"""Uniform vs OWL vs policy-guided allocation (issue 20, item 3) on the demo classifier, through the real pipeline.

Model: the embedded demo classifier (MiniLM-L6, 6 encoder blocks). Eval split: SST-2 dev (872
sentences). Selection split (where the guided search judges its candidates): a seeded sample of
SST-2 *train* (``--selection-n`` rows; rows whose text is also in dev are dropped), so the chosen
allocation is not tuned on the eval examples. Calibration: the demo's train split. Policy:
``policies/default.yaml`` (only its performance rules apply: SST-2 has no group columns).

For each target sparsity one ``run_audit`` prunes Wanda uniform and Wanda with ``profile: owl`` at
that level and runs ``sweep.allocate`` (Wanda, start OWL, step 0.05) at it; the table gives each
variant's eval verdict, and the max compliant sparsity per approach (the highest target such that
it and every lower listed target pass on eval).

Run (from the repository root)::

    .venv/bin/python -m bench.allocation            # writes bench/results/allocation.{json,md}
    .venv/bin/python -m bench.allocation --family lm --eval-n 400 --selection-n 400 --calib-n 32
        # SmolLM2-135M-Instruct zero-shot under lm-default; writes allocation_lm.{json,md}
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from audit.atomic import atomic_write_text
from bench.common import ROOT, demo_model, other_cpu_load, setup_logging, sst2, write_jsonl

log = logging.getLogger("bench.allocation")


def _config_text(model: Path, files: dict[str, Path], out_dir: Path, target: float, args: argparse.Namespace) -> str:
    return (
        f"model:\n  path: {model}\n  max_length: 128\n"
        "data:\n  name: sst2\n"
        f"  files: {{train: {files['train']}, dev: {files['dev']}, selection: {files['selection']}}}\n"
        "  columns: {text: text, label: label}\n  splits: {eval: dev, calibration: train}\n"
        "sweep:\n  methods:\n    - wanda\n    - {name: wanda, params: {profile: owl}}\n"
        f"  sparsities: [{target}]\n  seeds: [0]\n"
        f"  calibration: {{n: {args.calib_n}, seed: 0}}\n"
        f"  allocate: {{method: 0, target: {target}, budget: {args.budget}, start: owl, step: 0.05, "
        "selection: {split: selection}}\n"
        "suites:\n  performance: {}\n"
        f"policy: {ROOT / 'policies' / 'default.yaml'}\n"
        f"output_dir: {out_dir}\n"
        f"runtime:\n  batch_size: 32\n  n_boot: {args.n_boot}\n"
        "deploy:\n  enabled: false\n"
        "report:\n  formats: [json]\n"
    )


def _lm_config_text(files: dict[str, Path], out_dir: Path, target: float, args: argparse.Namespace) -> str:
    """SmolLM2-135M-Instruct as a zero-shot SST-2 classifier under lm-default (its zs-* rules)."""
    from audit.models.gguf import embedded_smollm2_path

    return (
        f"model:\n  kind: causal-lm\n  gguf_file: {embedded_smollm2_path()}\n  max_length: 128\n"
        '  zero_shot: {template: "Review: {text}\\nSentiment:", choices: [" negative", " positive"]}\n'
        "data:\n  name: sst2\n"
        f"  files: {{train: {files['train']}, dev: {files['dev']}, selection: {files['selection']}}}\n"
        "  columns: {text: text, label: label}\n  splits: {eval: dev, calibration: train}\n"
        "sweep:\n  methods:\n    - wanda\n    - {name: wanda, params: {profile: owl}}\n"
        f"  sparsities: [{target}]\n  seeds: [0]\n"
        f"  calibration: {{n: {args.calib_n}, seed: 0}}\n"
        f"  allocate: {{method: 0, target: {target}, budget: {args.budget}, start: owl, step: 0.05, "
        "selection: {split: selection}}\n"
        "suites:\n  performance: {}\n"
        "policy: lm-default\n"
        f"output_dir: {out_dir}\n"
        f"runtime:\n  batch_size: 16\n  n_boot: {args.n_boot}\n"
        "deploy:\n  enabled: false\n"
        "report:\n  formats: [json]\n"
    )


def _status(result: Any, variant: str) -> str:
    statuses = {r.status for r in result.verdict.rules if r.variant == variant}
    return next((s for s in ("ERROR", "FAIL", "WARN", "PASS") if s in statuses), "not judged")


def _delta(v: Any) -> float | None:
    m = next((m for m in v.measurements if m.suite == "performance" and m.metric == "accuracy_delta"), None)
    return m.value if m else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from audit.config import config_from_text
    from audit.runner import run_audit

    lm = args.family == "lm"
    assets = None if lm else demo_model()
    load = other_cpu_load()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="alloc-bench-") as tmp:
        dev = sst2("dev")[: args.eval_n] if args.eval_n else sst2("dev")
        dev_texts = {r["text"] for r in sst2("dev")}
        train = [r for r in sst2("train") if r["text"] not in dev_texts]
        rng = random.Random(0)
        selection = rng.sample(train, args.selection_n)
        chosen = {r["text"] for r in selection}
        calibration = [r for r in train if r["text"] not in chosen][: 4 * args.calib_n]
        files = {
            "train": (
                write_jsonl(Path(tmp) / "sst2-train-calibration.jsonl", calibration) if lm else assets["data"]["train"]
            ),
            "dev": write_jsonl(Path(tmp) / "sst2-dev.jsonl", dev),
            "selection": write_jsonl(Path(tmp) / "sst2-train-sample.jsonl", selection),
        }
        for target in args.targets:
            out = Path(tmp) / f"out-{target}"
            text = _lm_config_text(files, out, target, args) if lm else _config_text(assets["model"], files, out,
                                                                                       target, args)  # fmt: skip
            result = run_audit(config_from_text(text, name="<bench allocation>")).result
            a = result.allocation
            by_label = {v.point.label: v for v in result.variants}
            chosen = next(s for s in a.steps if s.index == a.chosen)
            rows.append(
                {
                    "target": target,
                    "uniform": {"eval": _status(result, by_label["wanda"].id), "delta": _delta(by_label["wanda"])},
                    "owl": {"eval": _status(result, by_label["wanda-owl"].id), "delta": _delta(by_label["wanda-owl"])},
                    "guided": {
                        "eval": _status(result, a.variant),
                        "delta": _delta(by_label["wanda-alloc"]),
                        "selection_passed": a.passed,
                        "evaluations": a.evaluations,
                        "chosen_step": a.chosen,
                        "block_sparsity": chosen.sparsities,
                        "outcome": a.outcome,
                        "selection_n": a.selection_n,
                    },
                }
            )
    envelope: dict[str, float | None] = {}
    for key in ("uniform", "owl", "guided"):
        envelope[key] = None
        for r in sorted(rows, key=lambda r: r["target"]):
            if r[key]["eval"] not in ("PASS", "WARN"):
                break
            envelope[key] = r["target"]
    from bench.common import cpu_model

    return {
        "family": args.family,
        "cpu": cpu_model(),
        "model": (
            "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32, 30 decoder blocks) as a zero-shot SST-2 classifier"
            if lm
            else "demo classifier (MiniLM-L6 fine-tuned on the generated reviews, 6 encoder blocks)"
        ),
        "eval": f"SST-2 dev ({len(dev)})",
        "selection": f"SST-2 train, seeded sample of {args.selection_n} (texts in dev excluded)",
        "calibration": (
            f"SST-2 train sentences outside the selection sample, n={args.calib_n}"
            if lm
            else f"demo train split, n={args.calib_n}"
        ),
        "policy": "lm-default (zs-accuracy-drop: paired CI lower end >= -0.05)" if lm else "policies/default.yaml",
        "budget": args.budget,
        "rows": rows,
        "max_compliant_sparsity_eval": envelope,
        "wall_s": round(time.perf_counter() - started, 1),
        "other_cpu_load_at_start": round(load, 2),
    }


def markdown(data: dict[str, Any]) -> str:
    def pts(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:+.1f}"

    lines = [
        "# Uniform vs OWL vs policy-guided allocation (Wanda): "
        + ("SmolLM2 zero-shot" if data.get("family") == "lm" else "demo classifier"),
        "",
        f"{data['model']}; CPU {data.get('cpu', 'not recorded')}; eval {data['eval']}; "
        f"selection {data['selection']}; calibration {data['calibration']}; "
        f"policy {data['policy']}; search budget {data['budget']} evaluations (wall {data['wall_s']} s).",
        "",
        "| Target | Uniform (eval, Δ pts) | OWL (eval, Δ pts) | Guided on selection | Guided (eval, Δ pts) | "
        "Guided block sparsities |",
        "|---:|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        g = r["guided"]
        sel = f"{'passes' if g['selection_passed'] else 'no pass'} (step {g['chosen_step']} of {g['evaluations']})"
        lines.append(
            f"| {r['target']:.2f} | {r['uniform']['eval']} {pts(r['uniform']['delta'])} | {r['owl']['eval']} "
            f"{pts(r['owl']['delta'])} | {sel} | {g['eval']} {pts(g['delta'])} | "
            f"{', '.join(f'{s:.2f}' for s in g['block_sparsity'])} |"
        )
    env = data["max_compliant_sparsity_eval"]
    lines += [
        "",
        "Max compliant sparsity on eval (listed targets): "
        + ", ".join(f"{k} {'—' if v is None else f'{100 * v:.0f} %'}" for k, v in env.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="classifier", choices=["classifier", "lm"])
    ap.add_argument("--targets", type=float, nargs="+", default=None, help="default 0.7 0.75 0.8 (lm: 0.3 0.4 0.5)")
    ap.add_argument("--eval-n", type=int, default=0, help="first N rows of SST-2 dev (0: all 872)")
    ap.add_argument("--selection-n", type=int, default=872)
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "allocation.json")
    args = ap.parse_args()
    if args.targets is None:
        args.targets = [0.3, 0.4, 0.5] if args.family == "lm" else [0.7, 0.75, 0.8]
    if args.family == "lm" and args.out == ap.get_default("out"):
        args.out = args.out.with_name("allocation_lm.json")
    setup_logging()
    data = run(args)
    atomic_write_text(args.out, json.dumps(data, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
