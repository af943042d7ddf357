"""Uniform vs OWL layer-wise sparsity (issue 20) on the demo classifier, through the real pipeline.

Model: the embedded demo classifier (MiniLM-L6 fine-tuned on the generated reviews; built
by ``ensure_demo_assets`` when missing). Evaluated on SST-2 dev (872 sentences,
``$PRUNE_AUDIT_SHARED_DATA/sst2/dev.tsv``: a real, shifted sentiment set), calibrated on
the demo's train split. Methods: magnitude and Wanda, each uniform and with
``profile: owl`` (M 5, lambda 0.08), at 50/60/70 %. One ``run_audit`` with the
``performance`` suite (accuracy with a bootstrap CI, paired accuracy_delta vs dense) under
``policies/default.yaml``; the verdict's max compliant sparsity per method label is
reported, and so is the largest level whose accuracy drop is within the default policy's
``accuracy-drop`` rule (2 points, point estimate). SST-2 has no group columns, so the
worst-group rules do not apply here (SKIP).

Run (from the repository root)::

    .venv/bin/python -m bench.owl_profiles            # writes bench/results/owl_profiles.{json,md}
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
from bench.common import ROOT, demo_model, other_cpu_load, setup_logging, sst2, write_jsonl

log = logging.getLogger("bench.owl_profiles")

METHODS = {
    "magnitude": "{name: magnitude}",
    "magnitude-owl": "{name: magnitude, params: {profile: owl}}",
    "wanda": "{name: wanda}",
    "wanda-owl": "{name: wanda, params: {profile: owl}}",
}
SPARSITIES = (0.5, 0.6, 0.7)
DROP = -0.02  # policies/default.yaml accuracy-drop: min -0.02


def _config_text(model: Path, train: Path, dev: Path, out_dir: Path, args: argparse.Namespace) -> str:
    entries = "\n".join(f"    - {m}" for m in METHODS.values())
    return (
        f"model:\n  path: {model}\n  max_length: 128\n"
        "data:\n  name: sst2-dev\n"
        f"  files: {{train: {train}, dev: {dev}}}\n"
        "  columns: {text: text, label: label}\n  splits: {eval: dev, calibration: train}\n"
        f"sweep:\n  methods:\n{entries}\n"
        f"  sparsities: [{', '.join(str(s) for s in SPARSITIES)}]\n  seeds: [0]\n"
        f"  calibration: {{n: {args.calib_n}, seed: 0}}\n"
        "suites:\n  performance: {}\n"
        f"policy: {ROOT / 'policies' / 'default.yaml'}\n"
        f"output_dir: {out_dir}\n"
        f"runtime:\n  batch_size: 32\n  n_boot: {args.n_boot}\n"
        "deploy:\n  enabled: false\n"
        "report:\n  formats: [json]\n"
    )


def _metric(variant: Any, name: str) -> Any:
    return next((m for m in variant.measurements if m.suite == "performance" and m.metric == name), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from audit.config import config_from_text
    from audit.runner import run_audit

    assets = demo_model()
    load = other_cpu_load()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="owl-bench-") as tmp:
        dev = write_jsonl(Path(tmp) / "sst2-dev.jsonl", sst2("dev"))
        text = _config_text(assets["model"], assets["data"]["train"], dev, Path(tmp) / "out", args)
        result = run_audit(config_from_text(text, name="<bench owl_profiles>")).result
    wall = time.perf_counter() - started
    base_acc = _metric(result.baseline, "accuracy")
    rows = []
    for v in result.variants:  # the pruned variants (the dense baseline is result.baseline)
        acc = _metric(v, "accuracy")
        delta = _metric(v, "accuracy_delta")
        prof = v.pruning.profile if v.pruning else None
        rows.append(
            {
                "id": v.id,
                "label": v.point.label,
                "sparsity": v.point.sparsity,
                "achieved": v.pruning.achieved_sparsity if v.pruning else None,
                "accuracy": acc.value if acc else None,
                "accuracy_ci": [acc.ci_low, acc.ci_high] if acc else None,
                "accuracy_delta": delta.value if delta else None,
                "accuracy_delta_ci": [delta.ci_low, delta.ci_high] if delta else None,
                "block_sparsity": [round(b.target_sparsity, 4) for b in prof.blocks] if prof else None,
                "outlier_ratio": [round(b.outlier_ratio, 6) for b in prof.blocks] if prof else None,
            }
        )
    within: dict[str, float | None] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        # as the policy's envelope: the highest level such that it and every lower level keep the drop
        within[label] = None
        for r in sorted((r for r in rows if r["label"] == label), key=lambda r: r["sparsity"]):
            if r["accuracy_delta"] is None or r["accuracy_delta"] < DROP:
                break
            within[label] = r["sparsity"]
    verdict = result.verdict
    return {
        "model": "demo classifier (MiniLM-L6 fine-tuned on the generated reviews)",
        "eval": "SST-2 dev (872)",
        "calibration": f"demo train split, n={args.calib_n}",
        "dense_accuracy": base_acc.value if base_acc else None,
        "variants": rows,
        "max_compliant_sparsity_default_policy": dict(verdict.max_compliant_sparsity) if verdict else None,
        "verdict": verdict.status if verdict else None,
        "max_sparsity_within_accuracy_drop": within,
        "wall_s": round(wall, 1),
        "other_cpu_load_at_start": round(load, 2),
        "note": "measured on a loaded 2-core machine shared with two other jobs",
    }


def markdown(data: dict[str, Any]) -> str:
    def pct(x: float | None, signed: bool = False) -> str:
        return "—" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")

    lines = [
        "# Uniform vs OWL layer-wise sparsity: demo classifier on SST-2 dev",
        "",
        f"{data['model']}; eval {data['eval']}; calibration {data['calibration']}. Dense accuracy "
        f"{pct(data['dense_accuracy'])} %. {data['note']} (wall {data['wall_s']} s).",
        "",
        "| Variant | Target | Accuracy % [CI] | Δ vs dense (pts) [CI] | Block sparsities (OWL) |",
        "|---|---:|---|---|---|",
    ]
    for r in data["variants"]:
        ci = r["accuracy_ci"] or [None, None]
        dci = r["accuracy_delta_ci"] or [None, None]
        blocks = ", ".join(f"{s:.3f}" for s in r["block_sparsity"]) if r["block_sparsity"] else "uniform"
        lines.append(
            f"| `{r['id']}` | {r['sparsity']:.2f} | {pct(r['accuracy'])} [{pct(ci[0])}, {pct(ci[1])}] | "
            f"{pct(r['accuracy_delta'], True)} [{pct(dci[0], True)}, {pct(dci[1], True)}] | {blocks} |"
        )
    lines += [
        "",
        f"Max compliant sparsity under policies/default.yaml (verdict {data['verdict']}):",
        "",
        "| Method | Default policy | Accuracy drop ≤ 2 pts only (point estimate) |",
        "|---|---:|---:|",
    ]
    mcs = data["max_compliant_sparsity_default_policy"] or {}
    for label, s in data["max_sparsity_within_accuracy_drop"].items():
        lines.append(f"| {label} | {pct(mcs.get(label))} | {pct(s)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "owl_profiles.json")
    args = ap.parse_args()
    setup_logging()
    data = run(args)
    atomic_write_text(args.out, json.dumps(data, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
