"""How often the bias suite's disparity CIs and paired tests are right, by simulation. By hand::

    nice -n 19 .venv/bin/python -m bench.disparity_ci            # about 2 minutes on 2 cores

``demographic_parity_difference`` is a largest-minus-smallest gap between groups' selection rates.
Its point estimate is biased upward (the largest of noisy rates is too large, the smallest too
small), and the percentile bootstrap the suite reports inherits the bias. This bench measures what
that does, with the audit's own code (``audit.stats.disparity_differences`` and
``audit.paired.paired_continuous``, as ``suites/bias/disparities.py`` calls them), on data whose
truth is known:

* ``--groups`` groups of ``--n`` examples each; labels are fair coins; the dense model predicts
  positive with probability 0.5 + ``gap`` · g / (groups − 1) in group g, so its true demographic
  parity difference is ``gap``;
* the "pruned" model flips each dense prediction with probability ``--flip`` (independently of the
  group), so its rates are 0.5 + (1 − 2·flip) · (rate − 0.5): its true gap is (1 − 2·flip) · gap, and
  the true paired Δ is −2·flip·gap (0 at gap 0);
* per true gap, ``--reps`` datasets, each with ``--n-boot`` resamples (the same seed for both models,
  as the suite pairs them).

Reported per gap: the mean bias of the point estimate; the share of datasets whose 95 % CI covers
the true gap (absolute, for dense); for the paired Δ, the CI's coverage of the true Δ and the share
of p < 0.05 (at gap 0 the false-positive rate of the paired test, which should be about 0.05).
Writes ``bench/results/disparity_ci.json``/``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from audit import paired, stats
from bench.common import ROOT, cpu_model

GAPS = (0.0, 0.05, 0.1, 0.2, 0.3)


def _one_gap(gap: float, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    k, n = args.groups, args.n
    rates = 0.5 + gap * np.arange(k) / max(k - 1, 1)
    true_delta = -2 * args.flip * gap
    feature = np.repeat([f"g{g}" for g in range(k)], n)
    bias, covered, d_covered, d_signif, d_bias = [], 0, 0, 0, []
    for _ in range(args.reps):
        y = (rng.random(k * n) < 0.5).astype(np.int64)
        dense = (rng.random(k * n) < np.repeat(rates, n)).astype(np.int64)
        pruned = np.where(rng.random(k * n) < args.flip, 1 - dense, dense)
        seed = int(rng.integers(2**31))
        d = stats.disparity_differences(y, dense, feature, n_boot=args.n_boot, seed=seed, return_boot=True)
        p = stats.disparity_differences(y, pruned, feature, n_boot=args.n_boot, seed=seed, return_boot=True)
        dd, pp = d["demographic_parity_difference"], p["demographic_parity_difference"]
        bias.append(dd["value"] - gap)
        covered += dd["ci_low"] <= gap <= dd["ci_high"]
        cmp = paired.paired_continuous(
            baseline=dd["value"],
            value=pp["value"],
            boot_deltas=pp["boot"] - dd["boot"],
            level=0.95,
            test="paired bootstrap within groups (normal approximation)",
            n=k * n,
        )
        d_bias.append(cmp.delta - true_delta)
        d_covered += cmp.ci_low <= true_delta <= cmp.ci_high
        d_signif += cmp.p_value is not None and cmp.p_value < 0.05
    r = args.reps
    return {
        "gap": gap,
        "true_delta": true_delta,
        "point_bias": float(np.mean(bias)),
        "ci_coverage": covered / r,
        "delta_bias": float(np.mean(d_bias)),
        "delta_ci_coverage": d_covered / r,
        "delta_p_below_005": d_signif / r,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--n", type=int, default=100, help="examples per group")
    ap.add_argument("--flip", type=float, default=0.1, help="share of dense predictions the pruned model flips")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--n-boot", type=int, default=1000, help="resamples per CI (the audit's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "disparity_ci")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    rows = [_one_gap(g, args, rng) for g in GAPS]
    res = {
        "cpu": cpu_model(),
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        f"# Disparity CI coverage ({args.groups} groups × {args.n}, flip {args.flip}, {args.reps} datasets, "
        f"{args.n_boot} resamples; {res['cpu']}, {res['seconds']} s)",
        "",
        "| true gap | point bias | 95 % CI covers gap | true Δ | Δ bias | Δ CI covers true Δ | p < 0.05 |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lines.append(
            f"| {x['gap']:.2f} | {x['point_bias']:+.3f} | {x['ci_coverage']:.3f} | {x['true_delta']:+.3f} | "
            f"{x['delta_bias']:+.3f} | {x['delta_ci_coverage']:.3f} | {x['delta_p_below_005']:.3f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
