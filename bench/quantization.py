"""Quantized vs pruned vs hybrid variants of the demo classifier (issue 21, item 2). By hand::

    nice -n 19 /work/main/.venv/bin/python -m bench.quantization

Runs ``prune-audit run`` on the demo's config (MiniLM-L6 sentiment classifier, its data and
suites: performance, ood, bias, adversarial) with the sweep replaced by int8 dynamic, int8
weight-only, int4 weight-only, Wanda 50 % and the hybrids Wanda 50 % then int8 (dynamic and
weight-only), then tabulates each variant's deltas vs dense (with BH q-values), deployed
format per layer, equivalence, speed and size. Writes ``bench/results/quantization.json`` and
``.md`` (``--out`` for another stem).
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

SWEEP = """sweep:
  methods:
    - int8_dynamic
    - int8_weight
    - {name: int4_weight, params: {group_size: 32}}
    - wanda
    - {name: int8_dynamic, params: {prune: wanda}}
    - {name: int8_weight, params: {prune: wanda}}
  sparsities: [0.5]
  seeds: [0]
  calibration: {n: 64, seed: 0}
"""

METRICS = (
    "performance/demo-reviews/accuracy",
    "ood/other-domains/accuracy",
    "ood/demo-reviews-typo/accuracy",
    "bias/demo-reviews/counterfactual_flip_rate",
    "bias/demo-reviews/demographic_parity_difference",
    "adversarial/deepwordbug/success_rate",
    "adversarial/pwws/success_rate",
)


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
    ap.add_argument("--work", default="/tmp/bench-quantization")
    ap.add_argument("--out", default="bench/results/quantization")
    ap.add_argument("--table-only", action="store_true", help="tabulate an earlier run's results.json")
    ap.add_argument(
        "--skip",
        default="",
        help="comma list of sweep methods to leave out (e.g. int4_weight: its CPU kernel is slow at prefill)",
    )
    args = ap.parse_args()
    from audit.demo import demo_config_text, ensure_demo_assets

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    text = demo_config_text(ensure_demo_assets())
    skip = {m for m in args.skip.split(",") if m}
    sweep = "".join(
        line
        for line in SWEEP.splitlines(keepends=True)
        if not (line.startswith("    - ") and _method_name(line) in skip)
    )
    text = re.sub(r"sweep:\n(?:  .*\n)+", sweep, text)
    text = text.replace("output_dir: .", f"output_dir: {work / 'out'}")
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
            "speedup_b1": (dep.get("speed") or {}).get("speedup_b1"),
            "speedup_batch": (dep.get("speed") or {}).get("speedup_batch"),
        }
        for mid in METRICS:
            m, b = meas.get(mid), base.get(mid)
            if m is None or b is None:
                continue
            paired = (m.get("details") or {}).get("paired") or {}
            row[mid] = {"value": m["value"], "delta": m["value"] - b["value"], "q": paired.get("q_value")}
        rows.append(row)
    out = {"cpu": _cpu(), "torch": __import__("torch").__version__, "config": text, "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    lines = [
        f"CPU: {out['cpu']}; torch {out['torch']}; demo classifier (MiniLM-L6), `python -m bench.quantization`",
        "",
    ]
    head = [
        "variant",
        "sparsity",
        *[m.split("/", 1)[1] for m in METRICS],
        "linear MB",
        "speed-up b1",
        "speed-up batch",
        "max dlogit / tol",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], f"{r['sparsity']:.3f}" if r["sparsity"] is not None else ""]
        for mid in METRICS:
            c = r.get(mid)
            cells.append(
                f"{c['delta']:+.3f} (q {c['q']:.2g})"
                if c and c["q"] is not None
                else (f"{c['delta']:+.3f}" if c else "-")
            )
        cells += [
            f"{r['linear_mb']:.1f} / {r['linear_mb_dense']:.1f}",
            f"{r['speedup_b1']:.2f}x" if r["speedup_b1"] else "-",
            f"{r['speedup_batch']:.2f}x" if r["speedup_batch"] else "-",
            f"{r['max_dlogit']:.2g} / {r['tolerance']:.2g}" if r["max_dlogit"] is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Kernels per variant:"] + [f"- {r['variant']}: {r['formats']}; {r['kernels']}" for r in rows]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
