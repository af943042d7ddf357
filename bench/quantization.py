"""Quantized vs pruned vs hybrid variants of the demo classifier and SmolLM2 (issue 21, item 2). By hand::

    nice -n 19 /work/main/.venv/bin/python -m bench.quantization
    PRUNE_AUDIT_SHARED_DATA=../shared/data nice -n 19 .venv/bin/python -m bench.quantization --family lm

Runs ``prune-audit run`` on the demo's config (MiniLM-L6 sentiment classifier, its data and
suites: performance, ood, bias, adversarial) with the sweep replaced by int8 dynamic, int8
weight-only, int4 weight-only, Wanda 50 %, the hybrids Wanda 50 % then int8 (dynamic and
weight-only), and per-token dynamic int8 alone and after Wanda, then tabulates each variant's
deltas vs dense (with BH q-values), deployed format per layer, equivalence, speed and size.
Writes ``bench/results/quantization.json`` and
``.md`` (``--out`` for another stem).

``--family lm``: the same sweep on SmolLM2-135M-Instruct, audited as a zero-shot SST-2 classifier
(``performance``, ``lm`` perplexity on UCI Amazon sentences) with the ``stereotype`` (CrowS-Pairs),
``bbq`` (six categories) and ``adversarial`` (DeepWordBug) suites, deployed with decode timed at one
token (the config of ``bench.activation_sparsity --family lm`` with this sweep and these suites).
Writes ``bench/results/quantization_lm.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.lm_bias import BBQ

SWEEP = """sweep:
  methods:
    - int8_dynamic
    - int8_weight
    - {name: int4_weight, params: {group_size: 32}}
    - wanda
    - {name: int8_dynamic, params: {prune: wanda}}
    - {name: int8_weight, params: {prune: wanda}}
    - int8_dynamic_token
    - {name: int8_dynamic_token, params: {prune: wanda}}
  sparsities: [0.5]
  seeds: [0]
  calibration: {n: 64, seed: 0}
"""

DEMO_METRICS = (
    "performance/demo-reviews/accuracy",
    "ood/other-domains/accuracy",
    "ood/demo-reviews-typo/accuracy",
    "bias/demo-reviews/counterfactual_flip_rate",
    "bias/demo-reviews/demographic_parity_difference",
    "adversarial/deepwordbug/success_rate",
    "adversarial/pwws/success_rate",
)


LM_METRICS = (
    "performance/sst2/accuracy",
    "lm/uci-amazon/perplexity_ratio",
    "stereotype/crows/stereotype_score",
    *(f"bbq/bbq-{c}/bias_ambig" for c in BBQ),
    "adversarial/deepwordbug/accuracy_under_attack",
)


def lm_config_text(work: Path, n: int, crows_n: int, bbq_n: int, adv_n: int) -> str:
    """``bench.activation_sparsity``'s SmolLM2 config with the bias and attack suites (main sets the sweep)."""
    from bench.activation_sparsity import lm_config
    from bench.common import SHARED_DATA

    text = lm_config(work, argparse.Namespace(n=n)).replace("max_length: 64", "max_length: 256")
    bbq = "".join(
        f"      - {{name: bbq-{k}, path: {SHARED_DATA / 'bbq' / f'{BBQ[k]}.jsonl'}, max_examples: {bbq_n}}}\n"
        for k in BBQ
    )
    suites = (
        "  stereotype:\n    sets:\n"
        f"      - {{name: crows, path: {SHARED_DATA / 'crows_pairs' / 'crows_pairs_anonymized.csv'}, "
        f"format: crows-pairs, max_examples: {crows_n}}}\n"
        f"  bbq:\n    sets:\n{bbq}"
        f"  adversarial:\n    recipes: [deepwordbug]\n    n_examples: {adv_n}\n    query_budget: 200\n"
    )
    return re.sub(r"  compute:\n(?:    .*\n)+", suites, text)


def _paired(meas: dict[str, dict[str, Any]], mid: str) -> dict[str, Any]:
    """The paired test of a metric: its own, or its ``_delta`` measurement's (stereotype, bbq, adversarial)."""
    own = (meas[mid].get("details") or {}).get("paired")
    if own:
        return own
    delta = meas.get(mid + "_delta")
    return ((delta or {}).get("details") or {}).get("paired") or {}


def _by_id(measurements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{m['suite']}/{m['dataset']}/{m['metric']}": m for m in measurements}


def _method_name(line: str) -> str:
    """The method name of one sweep entry line (``    - wanda`` or ``    - {name: wanda, ...}``)."""
    entry = line.strip()[2:].strip()
    m = re.match(r"\{name: ([\w-]+)", entry)
    return m.group(1) if m else entry


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda k: fields.get(k, "").strip()  # noqa: E731
    return f"{get('Model name')} (family {get('CPU family')} model {get('Model')}), {get('CPU(s)')} vCPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["demo", "lm"], default="demo")
    ap.add_argument("--work", default=None, help="default /tmp/bench-quantization[-lm]")
    ap.add_argument("--out", default=None, help="default bench/results/quantization[_lm]")
    ap.add_argument("--table-only", action="store_true", help="tabulate an earlier run's results.json")
    ap.add_argument(
        "--skip",
        default="",
        help="comma list of sweep methods to leave out (e.g. int4_weight: its CPU kernel is slow at prefill)",
    )
    ap.add_argument("--n", type=int, default=200, help="lm: SST-2 dev and UCI Amazon examples")
    ap.add_argument("--crows-n", type=int, default=300, help="lm: CrowS-Pairs pairs (seeded sample)")
    ap.add_argument("--bbq-n", type=int, default=36, help="lm: BBQ questions per category (seeded, stratified)")
    ap.add_argument("--adv-n", type=int, default=40, help="lm: examples DeepWordBug attacks")
    ap.add_argument(
        "--only",
        default="",
        help="comma list of sweep methods to keep, with their hybrids (e.g. int8_dynamic_token); dense always runs",
    )
    args = ap.parse_args()
    lm = args.family == "lm"
    work = Path(args.work or ("/tmp/bench-quantization-lm" if lm else "/tmp/bench-quantization"))
    out_stem = args.out or ("bench/results/quantization_lm" if lm else "bench/results/quantization")
    work.mkdir(parents=True, exist_ok=True)
    skip = {m for m in args.skip.split(",") if m}
    only = {m for m in args.only.split(",") if m}
    sweep = "".join(
        line
        for line in SWEEP.splitlines(keepends=True)
        if not (line.startswith("    - ") and (_method_name(line) in skip or (only and _method_name(line) not in only)))
    )
    if lm:
        text = lm_config_text(work, args.n, args.crows_n, args.bbq_n, args.adv_n)
        metrics = LM_METRICS
    else:
        from audit.demo import demo_config_text, ensure_demo_assets

        text = demo_config_text(ensure_demo_assets()).replace("output_dir: .", f"output_dir: {work / 'out'}")
        metrics = DEMO_METRICS
    text = re.sub(r"sweep:\n(?:  .*\n)+", sweep, text)
    cfg = work / "audit.yaml"
    cfg.write_text(text, encoding="utf-8")
    if not args.table_only:
        subprocess.run([sys.executable, "-m", "audit", "run", "--config", str(cfg)], check=False)
    results = json.loads((work / "out" / "results.json").read_text())
    base = _by_id(results["baseline"]["measurements"])
    rows: list[dict[str, Any]] = []
    for v in results["variants"]:
        meas = _by_id(v["measurements"])
        dep = v.get("deployment") or {}
        speed = dep.get("speed") or {}
        row: dict[str, Any] = {
            "variant": v["id"],
            "sparsity": v["pruning"]["achieved_sparsity"] if v.get("pruning") else None,
            "formats": dep.get("formats"),
            "kernels": sorted(
                {(la.get("quant") or {}).get("kernel", la.get("format")) for la in v["pruning"]["layers"]}
            )
            if v.get("pruning")
            else None,
            "max_dlogit": (dep.get("equivalence") or {}).get("max_abs_logit_diff"),
            "tolerance": (dep.get("equivalence") or {}).get("tolerance"),
            "linear_mb": (dep.get("linear_bytes_deployed") or 0) / 2**20,
            "linear_mb_dense": (dep.get("linear_bytes_dense") or 0) / 2**20,
            "speedup_b1": speed.get("speedup_b1"),
            "speedup_batch": speed.get("speedup_batch"),
            "decode_speedup": speed.get("decode_speedup"),
            "decode_speedup_ci": speed.get("decode_speedup_ci"),
        }
        for mid in metrics:
            m, b = meas.get(mid), base.get(mid)
            if m is None or m["value"] is None:
                continue
            paired = _paired(meas, mid)
            # a ratio to dense (perplexity_ratio) exists only on variants: its value is the comparison
            delta = None if b is None or b["value"] is None else m["value"] - b["value"]
            row[mid] = {"value": m["value"], "delta": delta, "q": paired.get("q_value")}
        rows.append(row)
    out = {"cpu": _cpu(), "torch": __import__("torch").__version__, "config": text, "rows": rows}
    Path(out_stem + ".json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    model = "SmolLM2-135M-Instruct" if lm else "demo classifier (MiniLM-L6)"
    cmd = "python -m bench.quantization" + (
        f" --family lm --n {args.n} --crows-n {args.crows_n} --bbq-n {args.bbq_n} --adv-n {args.adv_n}" if lm else ""
    )
    cmd += "".join(f" --{k} {v}" for k, v in (("skip", args.skip), ("only", args.only), ("out", args.out)) if v)
    lines = [f"CPU: {out['cpu']}; torch {out['torch']}; {model}, `{cmd}`", ""]
    base_row = ["dense", ""] + [
        f"{base[mid]['value']:.3f}" if mid in base and base[mid]["value"] is not None else "-" for mid in metrics
    ]
    speed_cols = ["decode × dense [CI]"] if lm else ["speed-up b1", "speed-up batch"]
    head = ["variant", "sparsity", *[m.split("/", 1)[1] for m in metrics], "linear MB", *speed_cols, "max dlogit / tol"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| " + " | ".join(base_row + [""] * (len(head) - len(base_row))) + " |")
    for r in rows:
        cells = [r["variant"], f"{r['sparsity']:.3f}" if r["sparsity"] is not None else ""]
        for mid in metrics:
            c = r.get(mid)
            if c and c["delta"] is None:
                cells.append(f"{c['value']:.3f}×")
                continue
            cells.append(
                f"{c['delta']:+.3f} (q {c['q']:.2g})"
                if c and c["q"] is not None
                else (f"{c['delta']:+.3f}" if c else "-")
            )
        cells.append(f"{r['linear_mb']:.1f} / {r['linear_mb_dense']:.1f}")
        if lm:
            sp, ci = r["decode_speedup"], r["decode_speedup_ci"]
            cells.append(f"{sp:.2f}× [{ci[0]:.2f}, {ci[1]:.2f}]" if sp is not None and ci else "-")
        else:
            cells += [f"{r[k]:.2f}x" if r[k] else "-" for k in ("speedup_b1", "speedup_batch")]
        cells.append(f"{r['max_dlogit']:.2g} / {r['tolerance']:.2g}" if r["max_dlogit"] is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Dense row: values; variant rows: Δ vs dense on the same examples (q: the run's BH q-value)."]
    lines += ["", "Kernels per variant:"] + [f"- {r['variant']}: {r['formats']}; {r['kernels']}" for r in rows]
    Path(out_stem + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
