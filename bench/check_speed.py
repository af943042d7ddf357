"""How fast `prune-audit check` re-gates saved results, with no model and no torch.

Builds a large synthetic results.json (methods × sparsities × seeds, every suite, groups,
per-layer and deployment records; the generator of the test fixtures), then times the
real CLI in fresh processes: `check` under each shipped policy, `check` writing every
report, and `report -f html`. Also confirms that `check` never imports torch.

    .venv/bin/python -m bench.check_speed                 # 3 methods × 9 sparsities × 5 seeds
    .venv/bin/python -m bench.check_speed --seeds 1 --repeat 3 --out bench/results/check_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, setup_logging, wait_quiet

POLICIES = ("default", "strict", "exploratory")


def build_results(methods: int, sparsities: int, seeds: int) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from results_factory import rich_run, rich_variant  # the fixture generator, written once

    names = ["magnitude", "wanda", "heads"][:methods]
    levels = [round(0.1 * (i + 1), 2) for i in range(sparsities)]
    res = rich_run()
    res.variants = [rich_variant(m, s, seed) for m in names for s in levels for seed in range(seeds)]
    return res.to_json()


def timed(cmd: list[str], repeat: int) -> tuple[float, float, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GITHUB_ACTIONS", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    times = []
    rc = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True).returncode
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", type=int, default=3)
    ap.add_argument("--sparsities", type=int, default=9)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quiet-timeout", type=float, default=300.0, help="Seconds to wait for a quiet CPU.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "check_speed.json")
    args = ap.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        results.write_text(build_results(args.methods, args.sparsities, args.seeds), encoding="utf-8")
        n_variants = args.methods * args.sparsities * args.seeds
        py = [sys.executable, "-m", "audit"]
        probe = (
            "import sys; from audit.cli import main; "
            f"rc = main(['check', {str(results)!r}, '--policy', 'strict']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)"
        )
        torch_free = subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
            text=True,
        ).stdout.split()[-2]  # fmt: skip
        load = wait_quiet(timeout=args.quiet_timeout)
        rows = []
        rows.append(("python -c pass (interpreter start)", *timed([sys.executable, "-c", "pass"], args.repeat)))
        for pol in POLICIES:
            rows.append((f"check --policy {pol}", *timed([*py, "check", str(results), "--policy", pol], args.repeat)))
        out_dir = Path(tmp) / "out"
        rows.append(
            (
                "check --policy default -o DIR -f all",
                *timed(
                    [*py, "check", str(results), "--policy", "default", "-o", str(out_dir), "-f", "all"], args.repeat
                ),
            )
        )
        rows.append(
            ("report -f html", *timed([*py, "report", str(results), "-o", str(out_dir), "-f", "html"], args.repeat))
        )
        size_mb = results.stat().st_size / 1e6
        html_mb = (out_dir / "report.html").stat().st_size / 1e6
    print(f"\nresults.json: {n_variants} variants + dense, {size_mb:.1f} MB; report.html {html_mb:.1f} MB")
    print(f"check imports torch: {torch_free != 'NO-TORCH'}; CPU used by other processes before timing: {load:.0%}")
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'exit':>5}")
    for name, med, best, rc in rows:
        print(f"{name:<40} {med:>9.2f} {best:>7.2f} {rc:>5}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "variants": n_variants,
                "results_mb": round(size_mb, 2),
                "report_mb": round(html_mb, 2),
                "check_imports_torch": torch_free != "NO-TORCH",
                "other_cpu_load": round(load, 3),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "rows": [
                    {"command": n, "median_s": round(m, 3), "min_s": round(b, 3), "exit": rc} for n, m, b, rc in rows
                ],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
