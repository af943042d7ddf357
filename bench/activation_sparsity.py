"""Activation sparsity audited end to end (issue 21, item 1): TEAL (and CATS on SmolLM2) at 25/40/50 %.

Run by hand from the repository root (heavy; ``--family demo`` takes minutes, ``lm`` tens of minutes)::

    PRUNE_AUDIT_SHARED_DATA=../shared/data .venv/bin/python -m bench.activation_sparsity --family demo
    PRUNE_AUDIT_SHARED_DATA=../shared/data .venv/bin/python -m bench.activation_sparsity --family lm

Both run ``prune-audit run`` with the ``compute`` suite:

* ``demo``: the demo classifier (MiniLM-L6, its data and suites without the adversarial one) with the
  sweep ``teal`` at 25, 40 and 50 %; the compute suite on the eval split (groups gender, race,
  identity) and the other-domains set. Accuracy, per-group compute disparity, density shift, speed
  (an encoder: whole inputs, so the gated layers run the GEMM path; the deployment stage times it).
* ``lm``: SmolLM2-135M-Instruct as a zero-shot SST-2 classifier (``model.zero_shot``) with the
  sweep ``teal`` and ``cats`` at 25, 40 and 50 %; the ``lm`` suite's perplexity on UCI Amazon
  sentences; the compute suite on SST-2 dev and on HateCheck test cases (groups: ``target_ident``,
  unlabelled for this model). Decode tokens/s at batch 1 (the gated layers run ``pa_act_mm`` at
  one token) comes from the deployment stage.

Writes ``bench/results/activation_sparsity_<family>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, SHARED_DATA, cpu_model

LEVELS = "[0.25, 0.4, 0.5]"


def demo_config(work: Path) -> str:
    from audit.demo import demo_config_text, ensure_demo_assets

    text = demo_config_text(ensure_demo_assets())
    ood = re.search(r"\{name: other-domains, path: ([^,]+),", text)
    assert ood is not None
    text = re.sub(r"sweep:\n(?:  .*\n)+", f"sweep:\n  methods: [teal]\n  sparsities: {LEVELS}\n  seeds: [0]\n"
                  "  calibration: {n: 64, seed: 0}\n", text)  # fmt: skip
    text = re.sub(r"  adversarial:\n(?:    .*\n)+", "", text)
    text = text.replace(
        "policy: default",
        f"  compute:\n    datasets: [{{name: other-domains, path: {ood.group(1)}, max_examples: 600}}]\n"
        "policy: default",
    )
    return text.replace("output_dir: .", f"output_dir: {work / 'out'}")


def lm_config(work: Path, args: argparse.Namespace) -> str:
    from audit.models.gguf import embedded_smollm2_path

    sst2 = SHARED_DATA / "sst2"
    uci = SHARED_DATA / "uci_sentiment_labelled_sentences" / "amazon_cells_labelled.txt"
    hatecheck = next((SHARED_DATA / "hatecheck").glob("*.csv"))
    return f"""model:
  kind: causal-lm
  gguf_file: {embedded_smollm2_path()}
  max_length: 64
  zero_shot:
    template: "Review: {{text}}\\nSentiment:"
    choices: [" negative", " positive"]
data:
  name: sst2
  files: {{dev: {sst2 / "dev.tsv"}, train: {sst2 / "train.tsv"}}}
  format: tsv
  quoting: none
  columns: {{text: sentence, label: label}}
  splits: {{eval: dev, calibration: train}}
  max_eval_examples: {args.n}
sweep:
  methods: [teal, cats]
  sparsities: {LEVELS}
  seeds: [0]
  calibration: {{n: 64, seed: 0}}
suites:
  performance: {{}}
  lm:
    perplexity:
      - {{name: uci-amazon, path: {uci}, format: tsv, quoting: none, column_names: [text, label],
         columns: {{text: text}}, max_examples: {args.n}}}
  compute:
    datasets:
      - {{name: hatecheck, path: {hatecheck}, columns: {{text: test_case, label: null, groups: [target_ident]}},
         max_examples: {args.n}}}
    top_k: 10
policy: null
output_dir: {work / "out"}
seed: 0
runtime:
  n_boot: 1000
deploy:
  choose_tokens: [1]
  timing_min_s: 0.05
  speed_rounds: 5
  speed_min_time_s: 0.05
report:
  formats: [json, html]
"""


def _m(v: dict[str, Any], suite: str, dataset: str | None, metric: str) -> dict[str, Any] | None:
    return next(
        (m for m in v["measurements"] if m["suite"] == suite and m["metric"] == metric
         and (dataset is None or m["dataset"] == dataset)),
        None,
    )  # fmt: skip


def _ci(m: dict[str, Any] | None, nd: int = 3) -> str:
    if m is None or m["value"] is None:
        return "-"
    ci = f" [{m['ci_low']:.{nd}f}, {m['ci_high']:.{nd}f}]" if m.get("ci_low") is not None else ""
    return f"{m['value']:.{nd}f}{ci}"


def rows(results: dict[str, Any], family: str) -> list[dict[str, Any]]:
    acc_suite, acc_set = "performance", results["baseline"]["measurements"][0]["dataset"]
    out = []
    for v in [results["baseline"], *results["variants"]]:
        dep = v.get("deployment") or {}
        speed = dep.get("speed") or {}
        act = (v.get("pruning") or {}).get("activation") or {}
        extra = "hatecheck" if family == "lm" else "other-domains"
        disp = _m(v, "compute", acc_set, "compute_disparity") or _m(v, "compute", extra, "compute_disparity")
        row = {
            "id": v["id"],
            "mode": act.get("mode", "dense"),
            "target": act.get("target"),
            "calibrated": act.get("calibrated_sparsity"),
            "accuracy": _m(v, acc_suite, acc_set, "accuracy"),
            "accuracy_delta": _m(v, acc_suite, acc_set, "accuracy_delta"),
            "active_fraction": _m(v, "compute", acc_set, "active_fraction"),
            "relative_compute": _m(v, "compute", acc_set, "relative_compute"),
            "compute_disparity": disp,
            "density_shift": _m(v, "compute", extra, "density_shift"),
            "formats": dep.get("formats"),
            "equivalence": (dep.get("equivalence") or {}).get("passed"),
            "speedup_b1": speed.get("speedup_b1"),
            "speedup_b1_ci": speed.get("speedup_b1_ci"),
            "decode_speedup": speed.get("decode_speedup"),
            "decode_speedup_ci": speed.get("decode_speedup_ci"),
            "decode_tps": [speed.get("decode_tps_dense"), speed.get("decode_tps_deployed")],
            "highest_compute": (_m(v, "compute", acc_set, "relative_compute") or {})
            .get("details", {})
            .get("highest_compute", [])[:3],
        }
        if family == "lm":
            row["perplexity_ratio"] = _m(v, "lm", "uci-amazon", "perplexity_ratio")
        out.append(row)
    return out


def markdown(table: list[dict[str, Any]], family: str, cpu: str) -> str:
    head = ["variant", "calibrated", "accuracy", "Δ acc [CI]", "active fraction", "relative compute",
            "compute disparity [CI] (feature)", "density shift [CI]"]  # fmt: skip
    head += ["PPL ratio", "decode × dense [CI]"] if family == "lm" else ["b1 × dense [CI]"]
    lines = [
        f"CPU: {cpu}; `python -m bench.activation_sparsity --family {family}`", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]  # fmt: skip
    for r in table:
        disp = r["compute_disparity"]
        feat = f" ({disp['details'].get('feature')})" if disp else ""
        cells = [
            r["id"], "-" if r["calibrated"] is None else f"{r['calibrated']:.1%}", _ci(r["accuracy"]),
            _ci(r["accuracy_delta"]), _ci(r["active_fraction"]), _ci(r["relative_compute"]), _ci(disp) + feat,
            _ci(r["density_shift"]),
        ]  # fmt: skip
        if family == "lm":
            cells.append(_ci(r.get("perplexity_ratio")))
            sp, ci = r["decode_speedup"], r["decode_speedup_ci"]
        else:
            sp, ci = r["speedup_b1"], r["speedup_b1_ci"]
        cells.append(f"{sp:.2f}× [{ci[0]:.2f}, {ci[1]:.2f}]" if sp is not None and ci else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Deployed formats per variant:"]
    lines += [f"- {r['id']}: {r['formats']}, equivalence {'passed' if r['equivalence'] else r['equivalence']}"
              for r in table]  # fmt: skip
    lines += ["", "Highest-compute inputs (relative compute) of each variant:"]
    for r in table[1:]:
        tops = "; ".join(
            f"{t['relative_compute']:.3f} ({t['tokens']} tokens) {t['text'][:60]!r}" for t in r["highest_compute"]
        )
        lines.append(f"- {r['id']}: {tops}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["demo", "lm"], default="demo")
    ap.add_argument("--work", default=None)
    ap.add_argument("--n", type=int, default=300, help="lm: examples per dataset")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    work = Path(args.work or f"/tmp/bench-activation-{args.family}")
    work.mkdir(parents=True, exist_ok=True)
    text = demo_config(work) if args.family == "demo" else lm_config(work, args)
    cfg = work / "audit.yaml"
    cfg.write_text(text, encoding="utf-8")
    if not args.table_only:
        subprocess.run([sys.executable, "-m", "audit", "run", "--config", str(cfg)], check=False)
    results = json.loads((work / "out" / "results.json").read_text())
    table = rows(results, args.family)
    cpu = cpu_model() or "unknown CPU"
    out = ROOT / "bench" / "results" / f"activation_sparsity_{args.family}"
    out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "config": text, "rows": table}, indent=1) + "\n")
    md = markdown(table, args.family, cpu)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
