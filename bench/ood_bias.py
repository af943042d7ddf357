"""Benchmark of the OOD and bias suites across a magnitude-pruning sweep (issue 5).

One command, full scale (what the note reports)::

    /work/main/.venv/bin/python -m bench.ood_bias

Reduced scale while the machine is shared (fewer rows, sparsities 0.3/0.6/0.9)::

    /work/main/.venv/bin/python -m bench.ood_bias --small

Parts (``--parts ood,bias,timing``):

* ``ood``: MiniLM-L6 fine-tuned on SST-2 (``bench.common.sst2_minilm``); in-distribution =
  2,000 sentences of SST-2 dev + labelled test; shifted = UCI sentiment sentences
  (Amazon, IMDb, Yelp), Yelp (Shen et al. 2017), CAD-IMDb original and human-revised
  reviews, plus the six built-in corruptions of the in-distribution set; magnitude
  sparsity 0-90 %. Prints every OOD metric per sparsity, marking changes vs dense that
  are significant after Benjamini-Hochberg, and the onset of significant regression.
* ``bias``: MiniLM-L6 fine-tuned on 3,000 Jigsaw sentence templates (a seeded split);
  audited on 2,000 held-out templates (group metrics by identity category,
  counterfactual swaps, subgroup/BPSN/BNSP AUC per identity term), on real Wikipedia
  talk comments (identity terms found in the text) and on HateCheck per target.
* ``timing``: wall time of each suite's ``run`` per variant on 2 threads for 2,000
  in-distribution examples (OOD: + one 2,000-row shifted set + six corruptions; bias:
  + counterfactuals + a 2,000-row identity set + a 2,000-row HateCheck sample), after
  waiting for a quiet CPU (``bench.common.wait_quiet``).

Results go to ``bench/results/ood_bias.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from bench import common

log = logging.getLogger("bench.ood_bias")

FULL_SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
SMALL_SPARSITIES = [0.3, 0.6, 0.9]
OOD_METRICS = ("accuracy", "accuracy_delta", "macro_f1", "ece", "accuracy_drop", "detection_auroc")
TOX_LABELS = {0: "nontoxic", 1: "toxic"}


# -- data and models ---------------------------------------------------------------------------


def wait_for_sst2_model(poll_s: float = 60.0, timeout_s: float = 4 * 3600) -> tuple[Path, dict[str, Any]]:
    """The SST-2 model is built by someone else; wait for its card instead of building it twice."""
    card = common.cache_root() / "bench" / "models" / "sst2-minilm-l6" / "card.json"
    start = time.monotonic()
    while not card.is_file():
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"timed out waiting for {card}")
        log.info("waiting for the SST-2 model (%s) ...", card)
        time.sleep(poll_s)
    return common.sst2_minilm()


def sst2_in_distribution(n: int) -> list[dict[str, Any]]:
    rows = common.sst2("dev") + common.sst2("test_labeled")
    return random.Random(0).sample(rows, min(n, len(rows)))


def toxicity_model() -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """MiniLM-L6 fine-tuned on 3,000 templates; returns it with the 2,000 held-out templates."""
    rows = common.jigsaw_templates()
    random.Random(0).shuffle(rows)
    train, held_out = rows[:3000], rows[3000:5000]
    model, card = common.finetuned_minilm(
        "jigsaw-templates-minilm-l6",
        [{"text": r["text"], "label": r["label"]} for r in train],
        {"templates_heldout": [{"text": r["text"], "label": r["label"]} for r in held_out[:1000]]},
        hyperparams={"epochs": 2, "max_length": 64},
        labels=TOX_LABELS,
    )
    return model, card, held_out


def annotate_identity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the identity category and term of each template (one identity word per template)."""
    from suites.bias.counterfactual import Lexicon

    lex = Lexicon.default(strict=False, names=False)
    out = []
    for r in rows:
        groups = sorted(lex.identities(r["text"], level="group"))
        terms = sorted(lex.identities(r["text"]))
        out.append(
            {
                **r,
                "category": groups[0].split(":")[0] if groups else "none",
                "term": terms[0] if terms else "none",
            }
        )
    return out


# -- audit configs -------------------------------------------------------------------------------


def _runtime(n_boot: int, threads: int) -> str:
    return f"runtime: {{n_boot: {n_boot}, threads: {threads}, batch_size: 64}}\n"


def ood_config(
    model: Path, data: dict[str, Path], sparsities: list[float], n_boot: int, threads: int, out: Path
) -> str:
    def ref(name: str, max_n: int | None = None) -> str:
        cap = f", max_examples: {max_n}" if max_n else ""
        return f"      - {{name: {name}, path: {data[name]}{cap}}}\n"

    return (
        f"model: {{path: {model}, max_length: 128}}\n"
        f"data: {{name: sst2, files: {{test: {data['sst2']}}}, splits: {{eval: test, calibration: null}}}}\n"
        f"sweep: {{methods: [magnitude], sparsities: {sparsities}}}\n"
        "suites:\n"
        "  performance: {}\n"
        "  ood:\n"
        "    shifted:\n"
        + "".join(ref(n) for n in ("uci-amazon", "uci-imdb", "uci-yelp", "yelp", "cad-orig", "cad-revised"))
        + "policy: null\n"
        + _runtime(n_boot, threads)
        + f"output_dir: {out}\n"
        "report: {formats: [json]}\n"
    )


def bias_config(
    model: Path, data: dict[str, Path], sparsities: list[float], n_boot: int, threads: int, out: Path
) -> str:
    return (
        f"model: {{path: {model}, max_length: 128}}\n"
        f"data: {{name: templates, files: {{test: {data['templates']}}}, splits: {{eval: test, calibration: null}},"
        " columns: {groups: [category]}}\n"
        f"sweep: {{methods: [magnitude], sparsities: {sparsities}}}\n"
        "suites:\n"
        "  performance: {}\n"
        "  bias:\n"
        "    positive_label: toxic\n"
        "    intersections: false\n"
        "    counterfactual: {max_per_text: 4}\n"
        "    identity_sets:\n"
        f"      - {{name: templates-id, path: {data['templates']}, identity_from_text: true, strict_terms: false}}\n"
        f"      - {{name: wiki, path: {data['wiki']}, identity_from_text: true, identity_level: group}}\n"
        "    functional_sets:\n"
        f"      - {{name: hatecheck, path: {data['hatecheck']}, columns: {{groups: [target, functionality]}}}}\n"
        "policy: null\n" + _runtime(n_boot, threads) + f"output_dir: {out}\n"
        "report: {formats: [json]}\n"
    )


def _run(config_text: str, path: Path) -> Any:
    from audit.config import load_config
    from audit.runner import run_audit

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text, encoding="utf-8")
    t0 = time.perf_counter()
    outcome = run_audit(load_config(path), command="bench.ood_bias", resume=True)  # an interrupted bench resumes
    log.info("audit %s took %.0fs", path.name, time.perf_counter() - t0)
    return outcome.result


# -- tables --------------------------------------------------------------------------------------


def _fmt(v: float | None, sig: bool) -> str:
    return "     -" if v is None else f"{v:6.3f}{'*' if sig else ' '}"


def metric_table(result: Any, suite: str, metrics: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """One row per metric id, one column per variant; * = significant regression vs dense (BH)."""
    variants = result.all_variants()
    ids = sorted(
        {m.id for v in variants for m in v.measurements if m.suite == suite and m.metric in metrics},
        key=lambda i: (i.split("/")[1], metrics.index(i.split("/")[2])),
    )
    head = f"{'metric':44s}" + "".join(f"{v.point.sparsity:>8.0%}" for v in variants)
    lines = [head, "-" * len(head)]
    data: dict[str, Any] = {}
    for mid in ids:
        cells, row = [], {}
        for v in variants:
            m = v.measurement(mid)
            rec = (m.details.get("paired") or {}) if m else {}
            sig = bool(rec.get("regression"))
            cells.append(_fmt(m.value if m else None, sig))
            row[v.id] = {"value": m.value if m else None, "q_value": rec.get("q_value"), "regression": sig}
        lines.append(f"{mid:44s}" + "".join(f"{c:>8s}" for c in cells))
        data[mid] = row
    return "\n".join(lines), data


def onset_table(result: Any, suite: str) -> tuple[str, dict[str, Any]]:
    onset = result.statistics.get("regression_onset", {}).get("magnitude", {})
    rows = {k: v for k, v in sorted(onset.items()) if k.startswith(f"{suite}/") or k.startswith("performance/")}
    lines = [f"{'metric (overall paired test)':44s} first sparsity with a significant regression (BH q <= 0.05)"]
    lines += [f"{k:44s} {'none' if v is None else f'{v:.0%}'}" for k, v in rows.items()]
    return "\n".join(lines), rows


def group_table(result: Any, mid: str, feature: str) -> str:
    variants = result.all_variants()
    m0 = result.baseline.measurement(mid) or next((v.measurement(mid) for v in variants if v.measurement(mid)), None)
    if m0 is None or feature not in m0.groups:
        return f"(no {mid} groups for {feature})"
    head = f"{mid + ' / ' + feature:44s}" + "".join(f"{v.point.sparsity:>8.0%}" for v in variants)
    lines = [head, "-" * len(head)]
    for g in sorted(m0.groups[feature]):
        cells = []
        for v in variants:
            m = v.measurement(mid)
            gv = m.groups.get(feature, {}).get(g) if m else None
            cells.append("     -" if gv is None or gv.value is None else f"{gv.value:6.3f}")
        lines.append(f"  {g[:42]:42s}" + "".join(f"{c:>8s}" for c in cells))
    return "\n".join(lines)


# -- parts -----------------------------------------------------------------------------------------


def part_ood(small: bool, threads: int) -> dict[str, Any]:
    model, card = wait_for_sst2_model()
    d = common.bench_dir("data", "ood_bias")
    n_id = 500 if small else 2000
    cap = 300 if small else None
    data = {
        "sst2": common.write_jsonl(d / f"sst2-id-{n_id}.jsonl", sst2_in_distribution(n_id)),
        "uci-amazon": common.write_jsonl(d / "uci-amazon.jsonl", common.uci_sentiment("amazon_cells")[: cap or None]),
        "uci-imdb": common.write_jsonl(d / "uci-imdb.jsonl", common.uci_sentiment("imdb")[: cap or None]),
        "uci-yelp": common.write_jsonl(d / "uci-yelp.jsonl", common.uci_sentiment("yelp")[: cap or None]),
        "yelp": common.write_jsonl(
            d / f"yelp-{cap or 2000}.jsonl", random.Random(0).sample(common.yelp_shen(), cap or 2000)
        ),
        "cad-orig": common.write_jsonl(d / "cad-orig.jsonl", common.cad_imdb("orig")[: cap or None]),
        "cad-revised": common.write_jsonl(d / "cad-revised.jsonl", common.cad_imdb("revised")[: cap or None]),
    }
    sp = SMALL_SPARSITIES if small else FULL_SPARSITIES
    out = common.bench_dir("runs", "ood-small" if small else "ood")
    result = _run(ood_config(model, data, sp, 100 if small else 200, threads, out), out / "audit.yaml")
    table, values = metric_table(result, "ood", OOD_METRICS)
    perf, perf_values = metric_table(result, "performance", ("accuracy", "accuracy_delta"))
    onset, onset_rows = onset_table(result, "ood")
    print("\n== OOD suite: SST-2 MiniLM-L6, magnitude sweep (* = significant regression vs dense, BH q <= 0.05)")
    print(perf)
    print(table)
    print()
    print(onset)
    print("\n" + result.statistics["multiple_testing"]["statement"])
    return {
        "model_card": card,
        "sizes": {k: sum(1 for _ in open(v, encoding="utf-8")) for k, v in data.items()},
        "sparsities": sp,
        "performance": perf_values,
        "ood": values,
        "regression_onset": onset_rows,
        "multiple_testing": result.statistics["multiple_testing"],
        "results_json": str(out / "results.json"),
    }


def part_bias(small: bool, threads: int) -> dict[str, Any]:
    model, card, held_out = toxicity_model()
    d = common.bench_dir("data", "ood_bias")
    n = 500 if small else 2000
    hc = common.hatecheck()
    data = {
        "templates": common.write_jsonl(d / f"templates-heldout-{n}.jsonl", annotate_identity(held_out[:n])),
        "wiki": common.write_jsonl(d / "wiki-nonfuzzed.jsonl", common.wiki_toxicity()[: 400 if small else None]),
        "hatecheck": common.write_jsonl(
            d / f"hatecheck-{n if small else len(hc)}.jsonl", random.Random(0).sample(hc, 600) if small else hc
        ),
    }
    sp = SMALL_SPARSITIES if small else FULL_SPARSITIES
    out = common.bench_dir("runs", "bias-small" if small else "bias")
    result = _run(bias_config(model, data, sp, 100 if small else 200, threads, out), out / "audit.yaml")
    metrics = (
        "roc_auc",
        "subgroup_auc",
        "bpsn_auc",
        "bnsp_auc",
        "accuracy",
        "accuracy_delta",
        "demographic_parity_difference",
        "equalized_odds_difference",
        "counterfactual_flip_rate",
        "counterfactual_prob_shift",
        "pruning_disparate_impact",
        "pie_rate",
    )
    table, values = metric_table(result, "bias", metrics)
    print("\n== Bias suite: Jigsaw-templates MiniLM-L6, magnitude sweep (* = significant regression vs dense)")
    print(table)
    for mid, feat in (
        ("bias/templates-id/subgroup_auc", "identity"),
        ("bias/templates-id/bpsn_auc", "identity"),
        ("bias/templates-id/bnsp_auc", "identity"),
        ("bias/wiki/subgroup_auc", "identity"),
        ("bias/hatecheck/accuracy", "target"),
    ):
        print()
        print(group_table(result, mid, feat))
    regs = [r for r in result.statistics["regressions"] if r["metric"].startswith("bias/")]
    print("\n" + result.statistics["multiple_testing"]["statement"])
    first: dict[str, float] = {}
    for r in regs:
        key = f"{r['metric']} [{r['test']}]"
        first[key] = min(first.get(key, 1.0), r["sparsity"])
    print(f"\n{len(first)} bias tests regress significantly at some sparsity; the earliest:")
    for key, s in sorted(first.items(), key=lambda kv: (kv[1], kv[0]))[:25]:
        print(f"  {s:4.0%}  {key}")
    return {
        "model_card": card,
        "sizes": {k: sum(1 for _ in open(v, encoding="utf-8")) for k, v in data.items()},
        "sparsities": sp,
        "bias": values,
        "first_significant_regression": first,
        "multiple_testing": result.statistics["multiple_testing"],
        "results_json": str(out / "results.json"),
    }


def part_timing(small: bool, threads: int) -> dict[str, Any]:
    """Each suite's setup and per-variant ``run`` time, on ``threads`` torch threads."""
    import copy

    import torch

    from audit.config import LayerSelection, load_config
    from audit.data import load_split
    from audit.inference import Predictor
    from audit.model_io import load_model
    from audit.plan import plan
    from audit.pruning.base import PruneContext
    from audit.registry import PRUNERS, SUITES
    from audit.suite import SuiteContext, Variant

    torch.set_num_threads(threads)
    n = 500 if small else 2000
    d = common.bench_dir("data", "ood_bias")
    sst2_model, _ = wait_for_sst2_model()
    tox_model, _, held_out = toxicity_model()
    hc = random.Random(1).sample(common.hatecheck(), n)
    ood_data = {
        "sst2": common.write_jsonl(d / f"timing-sst2-{n}.jsonl", sst2_in_distribution(n)),
        "yelp": common.write_jsonl(d / f"timing-yelp-{n}.jsonl", random.Random(2).sample(common.yelp_shen(), n)),
    }
    bias_data = {
        "templates": common.write_jsonl(d / f"timing-templates-{n}.jsonl", annotate_identity(held_out[:n])),
        "hatecheck": common.write_jsonl(d / f"timing-hatecheck-{n}.jsonl", hc),
    }
    work = common.bench_dir("runs", "timing")
    ood_cfg = (
        f"model: {{path: {sst2_model}, max_length: 128}}\n"
        f"data: {{files: {{test: {ood_data['sst2']}}}, splits: {{eval: test, calibration: null}}}}\n"
        "sweep: {methods: [magnitude], sparsities: [0.5]}\n"
        f"suites:\n  ood: {{shifted: [{{name: yelp, path: {ood_data['yelp']}}}]}}\n"
        "policy: null\n" + _runtime(200, threads)
    )
    bias_cfg = (
        f"model: {{path: {tox_model}, max_length: 128}}\n"
        f"data: {{files: {{test: {bias_data['templates']}}}, splits: {{eval: test, calibration: null}},"
        " columns: {groups: [category]}}\n"
        "sweep: {methods: [magnitude], sparsities: [0.5]}\n"
        "suites:\n  bias:\n    positive_label: toxic\n    counterfactual: {max_per_text: 4}\n"
        f"    identity_sets: [{{name: templates-id, path: {bias_data['templates']}, identity_from_text: true,"
        " strict_terms: false}]\n"
        f"    functional_sets: [{{name: hatecheck, path: {bias_data['hatecheck']}, columns: {{groups: [target]}}}}]\n"
        "policy: null\n" + _runtime(200, threads)
    )
    out: dict[str, Any] = {"threads": threads, "n_in_distribution": n}
    for suite_name, text in (("ood", ood_cfg), ("bias", bias_cfg)):
        path = work / f"{suite_name}.yaml"
        path.write_text(text, encoding="utf-8")
        cfg = load_config(path)
        loaded = load_model(cfg)
        es = load_split(cfg, "test", loaded.id2label)
        predictor = Predictor(loaded.tokenizer, max_length=128, batch_size=64)
        ctx = SuiteContext(config=cfg, eval_set=es, predictor=predictor, id2label=loaded.id2label, n_boot=200)
        points = plan(cfg)
        spec = PRUNERS.get("magnitude")
        pruned = copy.deepcopy(loaded.model)
        spec.load()(spec, spec.params.model_validate({})).prune(
            pruned,
            PruneContext(sparsity=0.5, seed=0, layers=LayerSelection.model_validate(points[1].layers)),
        )
        pruned.eval()
        sspec = SUITES.get(suite_name)
        suite = sspec.load()(sspec, sspec.params.model_validate(cfg.suites[0].params))
        load = common.wait_quiet()
        t0 = time.perf_counter()
        suite.setup(ctx)
        setup_s = time.perf_counter() - t0
        times, texts = {}, {}
        base = None
        for v in (Variant(point=points[0], model=loaded.model), Variant(point=points[1], model=pruned)):
            seen = predictor.examples_seen
            t0 = time.perf_counter()
            res = suite.run(v, ctx.for_suite(base))
            times[v.id] = time.perf_counter() - t0
            texts[v.id] = predictor.examples_seen - seen
            if v.is_baseline:
                base = res.artifacts
        out[suite_name] = {
            "setup_s": setup_s,
            "run_s": times,
            "texts_predicted_per_variant": texts,
            "other_cpu_load_before": load,
        }
        print(
            f"{suite_name:5s} setup {setup_s:6.1f}s   "
            + "   ".join(f"{k}: {t:6.1f}s ({texts[k]} texts)" for k, t in times.items())
            + f"   (other processes used {load:.0%} of the CPUs when timing started)"
        )
    per_variant = sum(max(out[s]["run_s"].values()) for s in ("ood", "bias"))
    out["both_suites_per_variant_s"] = per_variant
    print(f"both suites, per variant (slowest variant of each): {per_variant:.1f}s (target < 120 s)")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="reduced scale (quick, for a shared machine)")
    parser.add_argument("--parts", default="ood,bias,timing", help="comma-separated: ood, bias, timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results" / "ood_bias.json")
    args = parser.parse_args(argv)
    common.setup_logging()
    logging.getLogger("audit").setLevel(logging.WARNING)
    logging.getLogger("suites").setLevel(logging.WARNING)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict[str, Any] = {"scale": "small" if args.small else "full"}
    if args.out.is_file():
        try:
            previous = json.loads(args.out.read_text())
            if previous.get("scale") == results["scale"]:
                results = previous
        except json.JSONDecodeError:
            pass
    for part in parts:
        fn = {"ood": part_ood, "bias": part_bias, "timing": part_timing}[part]
        t0 = time.perf_counter()
        results[part] = fn(args.small, args.threads)
        results[part]["wall_s"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
        tmp.replace(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
