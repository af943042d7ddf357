"""Adversarial robustness of MiniLM fine-tuned on SST-2: dense vs 50 % and 90 % magnitude.

One command, two parts::

    /work/main/.venv/bin/python -m bench.adversarial            # full scale
    /work/main/.venv/bin/python -m bench.adversarial --n-examples 20 --speed-examples 5   # quick

1. **Audit.** ``run_audit`` on SST-2 dev with the ``performance`` and ``adversarial``
   suites, sweep magnitude 50 % and 90 %: success rate per recipe with CIs, accuracy
   under attack, transfer of the dense model's adversarial examples vs attacks run
   directly on each variant, wall time.
2. **Speed.** On the dense model, the same examples, recipe and query budget:
   TextAttack's default ``Attacker`` loop (``HuggingFaceModelWrapper``, which pads every
   query to the tokenizer's ``model_max_length``) vs this suite's loop
   (:class:`~suites.adversarial.recipes.PredictorModelWrapper` + ``attack_examples``),
   and, to show where the gain comes from, ``Attacker`` with the tokenizer capped at the
   audit's ``max_length``. Reports attacks per minute, the speed-up and whether both
   loops reach the same outcome per example.

Writes JSON to ``bench/results/adversarial.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, bench_dir, setup_logging, sst2, sst2_minilm, wait_quiet, write_jsonl

log = logging.getLogger("bench.adversarial")

ALL_RECIPES = ["deepwordbug", "pruthi", "pwws", "textfooler_local"]
SPARSITIES = [0.5, 0.9]


def _fmt_ci(m: Any, scale: float = 1.0, digits: int = 3) -> str:
    if m is None or m.value is None:
        return "n/a"
    if m.ci_low is None:
        return f"{m.value * scale:.{digits}f}"
    return f"{m.value * scale:.{digits}f} [{m.ci_low * scale:.{digits}f}, {m.ci_high * scale:.{digits}f}]"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


# -- part 1: the audit -------------------------------------------------------------------


def sst2_dev_file() -> Path:
    """SST-2 dev as JSON lines in the bench cache (read from ../shared/data, never copied into the repo)."""
    path = bench_dir("data", "sst2") / "dev.jsonl"
    if not path.is_file():
        write_jsonl(path, sst2("dev"))
    return path


def run_audit_part(model_dir: Path, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from audit.config import load_config
    from audit.runner import run_audit

    adv = {
        "recipes": args.recipes,
        "n_examples": args.n_examples,
        "query_budget": args.query_budget,
        "time_budget_s": args.time_budget_s,
        "seed": args.seed,
    }
    cfg_text = (
        f"model: {{path: {model_dir}, max_length: {args.max_length}}}\n"
        f"data:\n  name: sst2-dev\n  files: {{dev: {sst2_dev_file()}}}\n"
        "  columns: {text: text, label: label}\n  splits: {eval: dev}\n"
        f"sweep:\n  methods: [magnitude]\n  sparsities: {json.dumps(args.sparsities)}\n  seeds: [0]\n"
        f"suites:\n  performance: {{}}\n  adversarial: {json.dumps(adv)}\n"
        f"output_dir: {out_dir}\n"
        f"seed: {args.seed}\n"
        f"runtime: {{n_boot: {args.n_boot}, batch_size: 64, threads: {args.threads}}}\n"
        "report: {formats: [json], title: adversarial bench}\n"
    )
    cfg_path = out_dir / "audit.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(cfg_text, encoding="utf-8")
    cfg = load_config(cfg_path)
    t0 = time.perf_counter()
    outcome = run_audit(cfg, command="bench.adversarial")
    total = time.perf_counter() - t0
    res = outcome.result

    rows = []
    summary: dict[str, Any] = {"total_wall_s": total, "variants": {}}
    for v in res.all_variants():
        acc = v.measurement("performance/sst2-dev/accuracy")
        vs: dict[str, Any] = {
            "wall_s": v.wall_time_s,
            "accuracy": acc.value if acc else None,
            "sparsity": v.pruning.achieved_sparsity if v.pruning else 0.0,
            "errors": [e.message for e in v.errors],
            "recipes": {},
        }
        for recipe in args.recipes:

            def m(metric: str, recipe: str = recipe, v: Any = v) -> Any:
                return v.measurement(f"adversarial/{recipe}/{metric}")

            sr = m("success_rate")
            details = sr.details if sr else {}
            vs["recipes"][recipe] = {
                k: ({"value": m(k).value, "ci": [m(k).ci_low, m(k).ci_high], "n": m(k).n} if m(k) is not None else None)
                for k in (
                    "success_rate",
                    "accuracy_under_attack",
                    "accuracy_under_attack_delta",
                    "perturbed_words_pct",
                    "avg_queries",
                    "transfer_accuracy",
                    "transfer_success_rate",
                )
            }
            vs["recipes"][recipe]["seconds"] = details.get("seconds")
            vs["recipes"][recipe]["counts"] = details.get("counts")
            rows.append(
                [
                    v.id,
                    recipe,
                    _fmt_ci(sr),
                    _fmt_ci(m("accuracy_under_attack")),
                    _fmt_ci(m("accuracy_under_attack_delta")),
                    _fmt_ci(m("transfer_success_rate")),
                    _fmt_ci(m("transfer_accuracy")),
                    f"{m('avg_queries').value:.0f}" if m("avg_queries") and m("avg_queries").value else "n/a",
                    f"{m('perturbed_words_pct').value:.1f}"
                    if m("perturbed_words_pct") and m("perturbed_words_pct").value
                    else "n/a",
                    f"{details.get('seconds', 0):.0f}",
                    str((details.get("counts") or {}).get("not_attacked", "")),
                ]
            )
        summary["variants"][v.id] = vs
        summary.setdefault("examples", {})[v.id] = v.examples.get("adversarial", [])[:4]
    print()
    print(
        _table(
            [
                "variant",
                "recipe",
                "success rate [95% CI]",
                "acc. under attack",
                "Δ AuA vs dense (paired)",
                "transfer success",
                "transfer acc.",
                "queries",
                "words %",
                "s",
                "unattacked",
            ],
            rows,
        )
    )
    print()
    print(
        _table(
            ["variant", "sparsity", "clean accuracy (dev)", "wall time (s)"],
            [
                [vid, f"{s['sparsity']:.3f}", f"{s['accuracy']:.3f}" if s["accuracy"] else "n/a", f"{s['wall_s']:.0f}"]
                for vid, s in summary["variants"].items()
            ],
        )
    )
    print(f"\naudit total wall time: {total:.0f} s   (results: {outcome.output_dir / 'results.json'})")
    for vid, exs in summary.get("examples", {}).items():
        for e in exs[:2]:
            print(
                f"  [{vid} {e['recipe']} {e['kind']}] {e['original']!r}\n"
                f"      -> {e['perturbed']!r}  ({e['prediction']})"
            )
    return summary


# -- part 2: speed vs TextAttack's Attacker ---------------------------------------------------


def run_speed_part(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.inference import Predictor
    from suites.adversarial import AdversarialParams
    from suites.adversarial import recipes as R
    from suites.adversarial.engine import FAILED, SKIPPED, SUCCESS, attack_examples
    from suites.adversarial.offline import no_downloads

    textattack = R.textattack
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = sst2("dev")
    texts = [r["text"] for r in rows]
    labels = np.array([r["label"] for r in rows])
    predictor = Predictor(tokenizer, max_length=args.max_length, batch_size=64)
    pred = predictor.proba(model, texts).argmax(axis=1)
    correct = np.flatnonzero(pred == labels)
    pick = np.random.default_rng(args.seed).permutation(correct)[: args.speed_examples]
    ex_texts = [texts[i] for i in pick]
    ex_labels = [int(labels[i]) for i in pick]

    params = AdversarialParams(
        recipes=args.speed_recipes, query_budget=args.query_budget, seed=args.seed, time_budget_s=None
    )
    embedding = R.ModelInputEmbedding.from_model(model, tokenizer)
    encoder = R.build_sentence_encoder(params) if params.sentence_encoder else None
    R.warm_up(list(params.recipes))
    default_params = params.model_copy(update={"model_batch_size": 32})  # TextAttack's default batch size

    def run_attacker(recipe: str, tok: Any) -> tuple[float, list[Any]]:
        wrapper = textattack.models.wrappers.HuggingFaceModelWrapper(model, tok)
        attack = R.build_attack(recipe, wrapper, default_params, embedding=embedding, sentence_encoder=encoder)
        dataset = textattack.datasets.Dataset(list(zip(ex_texts, ex_labels, strict=True)))
        attack_args = textattack.AttackArgs(
            num_examples=len(ex_texts),
            query_budget=args.query_budget,
            random_seed=args.seed,
            disable_stdout=True,
            silent=True,
        )
        attacker = textattack.Attacker(attack, dataset, attack_args)
        t0 = time.perf_counter()
        with no_downloads():
            results = attacker.attack_dataset()
        return time.perf_counter() - t0, results

    def run_ours(recipe: str) -> tuple[float, list[Any]]:
        wrapper = R.PredictorModelWrapper(
            Predictor(tokenizer, max_length=args.max_length, batch_size=params.model_batch_size, cache_size=1), model
        )
        attack = R.build_attack(recipe, wrapper, params, embedding=embedding, sentence_encoder=encoder)
        t0 = time.perf_counter()
        with no_downloads():
            recs = attack_examples(
                attack, recipe=recipe, indices=[int(i) for i in pick], texts=ex_texts, labels=ex_labels, seed=args.seed
            )
        return time.perf_counter() - t0, recs

    def outcome(res: Any) -> tuple[str, str]:
        from textattack.attack_results import FailedAttackResult, SkippedAttackResult, SuccessfulAttackResult

        status = (
            SKIPPED
            if isinstance(res, SkippedAttackResult)
            else SUCCESS
            if isinstance(res, SuccessfulAttackResult)
            else FAILED
            if isinstance(res, FailedAttackResult)
            else "other"
        )
        return status, res.perturbed_result.attacked_text.text if status == SUCCESS else ""

    # TextAttack pads every query to model_max_length; a tokenizer without one (1e30) gets 512,
    # which must still fit the model's position embeddings.
    default_tok = copy.deepcopy(tokenizer)
    limit = getattr(model.config, "max_position_embeddings", 512)
    if default_tok.model_max_length > limit:
        default_tok.model_max_length = limit
    capped = copy.deepcopy(tokenizer)
    capped.model_max_length = args.max_length
    table = []
    out: dict[str, Any] = {
        "n_examples": len(ex_texts),
        "query_budget": args.query_budget,
        "attacker_padding_length": default_tok.model_max_length,
        "max_length": args.max_length,
        "recipes": {},
    }
    for recipe in args.speed_recipes:
        load = wait_quiet(timeout=args.quiet_timeout) if args.wait_quiet else None
        t_ours, recs = run_ours(recipe)
        t_default, res_default = run_attacker(recipe, default_tok)
        t_capped, res_capped = run_attacker(recipe, capped) if args.capped_baseline else (float("nan"), [])
        ours = [(r.status, "\n".join(r.perturbed) if r.perturbed else "") for r in recs]
        theirs = [outcome(r) for r in res_default]
        same_status = sum(a[0] == b[0] for a, b in zip(ours, theirs, strict=True)) / len(ours)
        same_text = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)
        n = len(ex_texts)
        apm = {k: 60.0 * n / t for k, t in (("ours", t_ours), ("default", t_default), ("capped", t_capped))}
        out["recipes"][recipe] = {
            "seconds": {"ours": t_ours, "attacker_default": t_default, "attacker_capped": t_capped},
            "attacks_per_minute": apm,
            "speedup_vs_default": t_default / t_ours,
            "speedup_vs_capped": t_capped / t_ours if args.capped_baseline else None,
            "same_outcome": same_status,
            "same_outcome_and_text": same_text,
            "success_ours": sum(s == SUCCESS for s, _ in ours),
            "success_default": sum(s == SUCCESS for s, _ in theirs),
            "other_cpu_load_before": load,
        }
        table.append(
            [
                recipe,
                f"{apm['default']:.1f}",
                f"{apm['capped']:.1f}" if args.capped_baseline else "-",
                f"{apm['ours']:.1f}",
                f"{t_default / t_ours:.1f}x",
                f"{t_capped / t_ours:.1f}x" if args.capped_baseline else "-",
                f"{same_status:.0%} / {same_text:.0%}",
                f"{load:.0%}" if load is not None else "?",
            ]
        )
        log.info("speed %s: ours %.1fs, Attacker %.1fs, capped %.1fs", recipe, t_ours, t_default, t_capped)
    print()
    print(
        f"Speed on the dense model: {len(ex_texts)} SST-2 dev examples per recipe, query budget {args.query_budget}, "
        f"{args.threads} torch threads (Attacker pads to {default_tok.model_max_length} tokens, "
        f"audit max_length {args.max_length})"
    )
    print(
        _table(
            [
                "recipe",
                "Attacker attacks/min",
                f"Attacker (max_len {args.max_length})",
                "ours attacks/min",
                "speed-up",
                "vs capped",
                "same outcome / same text",
                "other CPU load",
            ],
            table,
        )
    )
    total_default = sum(r["seconds"]["attacker_default"] for r in out["recipes"].values())
    total_ours = sum(r["seconds"]["ours"] for r in out["recipes"].values())
    out["overall_speedup_vs_default"] = total_default / total_ours
    print(f"overall: {total_default:.0f} s (Attacker) vs {total_ours:.0f} s (ours): {total_default / total_ours:.1f}x")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.adversarial")
    ap.add_argument("--n-examples", type=int, default=200)
    ap.add_argument("--query-budget", type=int, default=500)
    ap.add_argument("--time-budget-s", type=float, default=None, help="per variant (default: unlimited)")
    ap.add_argument("--recipes", nargs="+", default=ALL_RECIPES, choices=ALL_RECIPES)
    ap.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    ap.add_argument("--speed-examples", type=int, default=10)
    ap.add_argument("--speed-recipes", nargs="+", default=ALL_RECIPES, choices=ALL_RECIPES)
    ap.add_argument("--no-capped-baseline", dest="capped_baseline", action="store_false")
    ap.add_argument("--skip-audit", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", type=Path, default=None, help="another model (default: bench.common.sst2_minilm)")
    ap.add_argument("--no-wait-quiet", dest="wait_quiet", action="store_false")
    ap.add_argument("--quiet-timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adversarial.json")
    args = ap.parse_args(argv)
    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    model_dir = args.model_dir
    card: dict[str, Any] = {}
    if model_dir is None:
        model_dir, card = sst2_minilm()
    report: dict[str, Any] = {"model": str(model_dir), "card": card, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.wait_quiet:
        report["other_cpu_load_at_start"] = wait_quiet(timeout=args.quiet_timeout)
    if not args.skip_audit:
        report["audit"] = run_audit_part(model_dir, args, bench_dir("runs", "adversarial"))
    if not args.skip_speed:
        report["speed"] = run_speed_part(model_dir, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp_out, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
