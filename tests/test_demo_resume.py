"""An unchanged re-run reuses every stored unit (the demo resumes by default); a changed input recomputes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import write_config
from test_resume import differences

from audit.config import load_config
from audit.run.session import Session
from audit.runner import run_audit

SWEEP = "sweep:\n  methods: [wanda]\n  sparsities: [0.5]\n  seeds: [0]\n  calibration: {n: 16}\n"
SUITES = (
    "suites:\n  performance: {}\n  ood:\n    corruptions: [{kind: casing}]\n"
    "  bias:\n    counterfactual: {categories: [gender], max_texts: 20}\n"
)
UNITS = 1 + 3 * 2  # the variant's pruning and deployment, each of 3 suites on dense and the variant
CLOCKS = {"started_at", "finished_at", "evaluated_at", "wall_time_s", "command", "total_s", "overhead_s", "reused"}
"""What an unchanged re-run legitimately changes: this run's clocks (stored units keep their own seconds)."""


def _config(tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path, **over: str) -> Path:
    sections = {"sweep": SWEEP, "suites": SUITES, **over}
    return write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, **sections)


def _without_clocks(path: Path) -> Any:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in CLOCKS}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(json.loads(path.read_text()))


@pytest.fixture
def counted_setup(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How often a run set up its suites, points and deploy context (:meth:`Session.setup`)."""
    calls: list[int] = []
    original = Session.setup

    def counting(self: Session) -> None:
        if not self.ready:
            calls.append(1)
        original(self)

    monkeypatch.setattr(Session, "setup", counting)
    return calls


def test_an_unchanged_resumed_run_computes_nothing_and_writes_the_same_results(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, counted_setup: list[int]
) -> None:
    cfg = _config(tmp_path, tiny_model_dir, tiny_data_dir)
    first = run_audit(load_config(cfg), formats=["json"], resume=True)
    assert (first.units_total, first.units_reused) == (UNITS, 0)
    reference = _without_clocks(first.files["json"])
    assert counted_setup == [1]

    again = run_audit(load_config(cfg), formats=["json"], resume=True)
    assert (again.units_total, again.units_reused) == (UNITS, UNITS)
    assert counted_setup == [1]  # nothing to compute: no suite setup, no deploy context, no speed timing
    raw = json.loads(again.files["json"].read_text())
    for v in [raw["baseline"], *raw["variants"]]:
        parts = {"performance", "ood", "bias"} | ({"prune", "deploy"} if v["id"] != "dense" else set())
        assert set(v["timing"]["reused"]) == parts
    diff = differences(_without_clocks(again.files["json"]), reference)
    assert not diff, "\n".join(diff[:20])


def test_a_changed_config_value_recomputes_the_units_it_affects(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, tiny_model_dir, tiny_data_dir)
    run_audit(load_config(cfg), formats=["json"])  # without resume the store is written, not read
    assert run_audit(load_config(cfg), formats=["json"]).units_reused == 0

    # one suite's param: only that suite's two units (dense and the variant)
    bias2 = SUITES.replace("max_texts: 20", "max_texts: 12")
    changed = run_audit(load_config(_config(tmp_path, tiny_model_dir, tiny_data_dir, suites=bias2)), resume=True)
    assert changed.units_reused == UNITS - 2
    # the variant is pruned and deployed again to run bias on it (its stored records are kept)
    assert set(changed.result.variants[0].timing.reused) == {"performance", "ood"}

    # a value every unit depends on (the bootstrap count): nothing is reused
    runtime = "runtime:\n  n_boot: 60\n  batch_size: 64\n"
    cfg3 = _config(tmp_path, tiny_model_dir, tiny_data_dir, suites=bias2, runtime=runtime)
    assert run_audit(load_config(cfg3), formats=["json"], resume=True).units_reused == 0


def test_the_demo_resumes_unless_rebuilt(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit import demo

    text = _config(tmp_path, tiny_model_dir, tiny_data_dir, output_dir="output_dir: .\n").read_text()
    monkeypatch.setattr(demo, "ensure_demo_assets", lambda rebuild=False: {"rebuilt": rebuild})
    monkeypatch.setattr(demo, "demo_config_text", lambda assets: text)
    out = tmp_path / "demo-out"
    assert demo.run_demo(out).units_reused == 0
    assert demo.run_demo(out).units_reused == UNITS
    assert demo.run_demo(out, rebuild=True).units_reused == 0
