"""Crash safety and resume: a sweep killed with SIGKILL and resumed gives the results of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FAST_DEPLOY, pass_policy, write_config

from audit.store import ResultStore, StoreKey, decode_tree, encode_tree

ROOT = Path(__file__).resolve().parent.parent

SWEEP = "sweep:\n  methods: [magnitude, wanda]\n  sparsities: [0.5, 0.9]\n  seeds: [0]\n  calibration: {n: 32}\n"
SUITES = "suites:\n  performance: {}\n  bias:\n    counterfactual: {categories: [gender]}\n"
# one kernel for every layer: the format choice is by timing, which is the one thing that may differ
DEPLOY = FAST_DEPLOY + "  force_format: kernel\n"

VOLATILE = {"started_at", "finished_at", "evaluated_at", "wall_time_s", "command", "speed", "timing", "timings"}
TIMED = ("speedup", "latency", "throughput")
"""Deployment metrics measured with a clock (and the verdict's counts, which may depend on them)."""


def normalized(path: Path) -> Any:
    """results.json without what legitimately differs between two runs: clocks and timings."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            if any(w in str(node.get("metric", "")) for w in TIMED):
                return None  # a timed measurement, or a policy rule on one
            if "counts" in node and "rules" in node:
                node = {k: v for k, v in node.items() if k != "counts"}
            return {
                k: strip(v)
                for k, v in node.items()
                if k not in VOLATILE and not k.endswith(("_ms", "_us", "_s")) and "speed" not in k
            }
        if isinstance(node, list):
            return [x for x in (strip(v) for v in node) if x is not None]
        return node

    return strip(json.loads(path.read_text()))


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON trees differ (for a readable failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:200]} != {str(b)[:200]}"]


def _cli(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "audit", "run", "-c", str(cfg), "--format", "json", *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_sigkill_mid_sweep_then_resume_gives_the_uninterrupted_results(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        tiny_data_dir,
        sweep=SWEEP,
        suites=SUITES,
        deploy=DEPLOY,
        policy=pass_policy(tmp_path),
    )
    out = tmp_path / "out"
    # 1. the uninterrupted run
    done = subprocess.run(_cli(cfg), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = normalized(out / "results.json")
    (out / "results.json").rename(tmp_path / "reference.json")
    store = ResultStore(out / ".prune-audit-store")
    total = store.entries()
    assert total == 2 + 4 * 3  # dense: 2 suites; each variant: its pruning/deployment + 2 suites
    store.clear()

    # 2. the same run, killed with SIGKILL once some (not all) points are finished
    proc = subprocess.Popen(_cli(cfg), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while store.entries() < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = store.entries()
    assert 5 <= kept < total, f"the kill did not land mid-sweep ({kept}/{total} units)"
    assert not (out / "results.json").exists()  # nothing half-written: the results are written at the end
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix == ".json" and p.stat().st_size == 0]

    # 3. resumed: finished units are reused, the rest recomputed, and the results are the same
    resumed = subprocess.run(_cli(cfg, "--resume"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == done.returncode, resumed.stderr[-3000:]
    assert "reused" in resumed.stderr
    assert store.entries() == total
    diff = differences(normalized(out / "results.json"), reference)
    assert not diff, "\n".join(diff[:20])
    # the run id is deterministic, so the resumed run is the same run
    assert (
        json.loads((out / "results.json").read_text())["run_id"]
        == json.loads((tmp_path / "reference.json").read_text())["run_id"]
    )
    # non-TTY progress: plain lines with an ETA, no carriage returns
    assert "\r" not in resumed.stderr and "sweep: 1/5" in resumed.stderr and "ETA" in resumed.stderr


def test_resume_recomputes_only_what_changed(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    from audit.config import load_config
    from audit.runner import run_audit

    sweep = "sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n"
    suites = "suites:\n  performance: {}\n  ood:\n    corruptions: [{kind: casing}]\n"
    cfg_path = write_config(tmp_path / "a.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep, suites=suites)
    first = run_audit(load_config(cfg_path), formats=["json"])
    store = ResultStore(first.output_dir / ".prune-audit-store")
    assert store.entries() == 2 + 3

    # the same config resumed: nothing is recomputed (a pruner that runs would fail)
    from audit.pruning import magnitude

    calls = []
    original = magnitude.MagnitudePruner.prune

    def counting(self: Any, *a: Any, **k: Any) -> Any:
        calls.append(1)
        return original(self, *a, **k)

    magnitude.MagnitudePruner.prune = counting  # type: ignore[method-assign]
    try:
        again = run_audit(load_config(cfg_path), formats=["json"], resume=True)
        assert calls == []
        assert [m.model_dump() for m in again.result.variants[0].measurements] == [
            m.model_dump() for m in first.result.variants[0].measurements
        ]
        # a changed suite param invalidates that suite's units only; the variant is pruned again to run it
        suites2 = "suites:\n  performance: {}\n  ood:\n    corruptions: [{kind: casing, rate: 0.5}]\n"
        cfg2 = write_config(tmp_path / "a.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep, suites=suites2)
        third = run_audit(load_config(cfg2), formats=["json"], resume=True)
        assert calls == [1]
        assert store.entries() == 2 + 3 + 2  # two new ood units (dense and the variant)
        perf = "performance/test/accuracy"
        assert third.result.variants[0].measurement(perf) == first.result.variants[0].measurement(perf)
    finally:
        magnitude.MagnitudePruner.prune = original  # type: ignore[method-assign]


def test_store_trees_round_trip_without_pickle(tmp_path: Path) -> None:
    tree = {
        "proba": np.random.default_rng(0).random((5, 2)),
        "names": np.array(["a", "b"]),
        "nested": {"sets": {"x": [1, 2.5, None, True, "t"]}, "pair": (1, "two")},
        "int_keys": {0: "zero", 7: np.int64(3)},
        "nan": float("nan"),
    }
    payload, arrays = encode_tree(tree)
    store = ResultStore(tmp_path)
    key = StoreKey("suite", "m", "d", "p", name="s")
    store.put(key, {"artifacts": payload}, arrays)
    got, got_arrays = store.get(key)
    back = decode_tree(got["artifacts"], got_arrays)
    np.testing.assert_array_equal(back["proba"], tree["proba"])
    assert back["names"].tolist() == ["a", "b"]
    assert back["nested"] == {"sets": {"x": [1, 2.5, None, True, "t"]}, "pair": (1, "two")}
    assert back["int_keys"] == {0: "zero", 7: 3} and np.isnan(back["nan"])
    with pytest.raises(TypeError, match="pickle"):
        encode_tree({"bad": object()})
    with pytest.raises(TypeError, match="pickle"):
        encode_tree({"bad": np.array([{"a": 1}], dtype=object)})
    # a truncated entry is ignored (recomputed), never trusted
    path = next(tmp_path.rglob("*.json"))
    path.write_bytes(path.read_bytes()[:10])
    assert store.get(key) is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_sweep_exits_2_keeps_finished_units_and_resume_reuses_them(
    sig: signal.Signals, tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        tiny_data_dir,
        sweep=SWEEP,
        suites=SUITES,
        deploy=DEPLOY,
        policy=pass_policy(tmp_path),
    )
    out = tmp_path / "out"
    store = ResultStore(out / ".prune-audit-store")
    total = 2 + 4 * 3
    cli = _cli(cfg, "--format", "markdown", "--format", "junit")
    proc = subprocess.Popen(cli, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while store.entries() < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    kept = store.entries()
    assert 5 <= kept < total, f"the signal did not land mid-sweep ({kept}/{total} units)\n{stderr[-2000:]}"
    assert proc.returncode == 2, stderr[-3000:]
    assert f"interrupted by {sig.name}" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    # nothing partial: no results, no report, no verdict on stdout, no temp file left by a write
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith(".prune-audit-store/")] == []
    assert [p for p in written if p.endswith(".tmp")] == []
    assert "verdict" not in stdout

    resumed = subprocess.run(cli + ["--resume"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {kept} finished unit(s)" in resumed.stderr
    reused = sum(int(n) for n in re.findall(r"(\d+) unit\(s\) reused", resumed.stderr))
    assert reused == kept  # every unit that finished before the signal, and no other
    assert store.entries() == total
    assert {"results.json", "summary.md", "junit.xml"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_sigterm_under_ray_exits_2_stops_ray_and_keeps_the_finished_points(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is installed by `make test`")
    psutil = pytest.importorskip("psutil")
    cfg = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        tiny_data_dir,
        sweep=SWEEP,
        suites=SUITES,
        deploy=DEPLOY,
        policy=pass_policy(tmp_path),
        executor="executor: {kind: ray, num_cpus: 1, num_cpus_per_task: 1}\n",
    )
    out = tmp_path / "out"
    store = ResultStore(out / ".prune-audit-store")
    proc = subprocess.Popen(_cli(cfg), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while store.entries() < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ray_processes = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
    kept = store.entries()
    assert 5 <= kept < 2 + 4 * 3, f"the signal did not land mid-sweep ({kept} units)\n{stderr[-2000:]}"
    assert proc.returncode == 2, stderr[-3000:]  # Ray's own SIGTERM handler would exit with 15
    assert "interrupted by SIGTERM" in stderr
    assert ray_processes, "Ray started no processes"
    _, alive = psutil.wait_procs(ray_processes, timeout=60)
    assert [p.pid for p in alive] == []  # Ray was shut down, its workers with it
    assert not (out / "results.json").exists()
    # the store is the same whichever executor wrote it: resume in process
    resumed = subprocess.run(
        _cli(cfg, "--resume", "--executor", "local"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sum(int(n) for n in re.findall(r"(\d+) unit\(s\) reused", resumed.stderr)) == kept
