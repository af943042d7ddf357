from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_config

from audit.config import load_config
from audit.errors import DataError, ModelError
from audit.results import load_results
from audit.runner import run_audit


def test_pipeline_end_to_end_in_process(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir))
    outcome = run_audit(cfg, command="test")
    res = outcome.result
    assert [v.id for v in res.all_variants()] == ["dense", "magnitude-s0.50-seed0", "magnitude-s0.90-seed0"]
    assert res.baseline.pruning is None
    acc = {v.id: v.measurement("performance/test/accuracy").value for v in res.all_variants()}
    assert acc["dense"] > 0.75  # the tiny model really learned the task
    assert acc["magnitude-s0.90-seed0"] < acc["dense"]
    heavy = res.variants[1]
    assert abs(heavy.pruning.achieved_sparsity - 0.9) < 1e-3
    assert heavy.measurement("performance/test/accuracy_delta").value == pytest.approx(
        acc["magnitude-s0.90-seed0"] - acc["dense"]
    )
    assert heavy.measurement("performance/test/accuracy_delta").details["paired"]["test"] == "exact McNemar"
    groups = res.baseline.measurement("performance/test/accuracy").groups
    assert set(groups) == {"gender", "identity", "gender&identity"}
    # provenance and identity
    assert res.provenance.packages["torch"].startswith("2.")
    assert res.model.fingerprint and res.datasets[0].n == 240
    assert res.metrics["performance/accuracy"].higher_is_better is True
    # outputs: written atomically, valid against the schema, nothing else left behind
    out = cfg.output_path()
    assert sorted(p.name for p in out.iterdir()) == [
        ".prune-audit-store",  # finished units of work, for --resume
        "junit.xml",
        "model-card.md",
        "report.html",
        "results.json",
        "summary.md",
    ]
    assert not list(out.rglob("*.tmp"))
    again = load_results(out / "results.json")
    assert again.verdict is not None and again.verdict.status == outcome.verdict.status
    assert int(outcome.exit_code) == again.verdict.exit_code


def test_bad_data_fails_before_any_output(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        tiny_data_dir,
        data=(
            "data:\n"
            f"  files: {{train: {tiny_data_dir / 'train.jsonl'}, test: {tiny_data_dir / 'test.jsonl'}}}\n"
            "  columns: {text: text, label: label, groups: [ethnicity]}\n"
        ),
    )
    cfg = load_config(path)
    with pytest.raises(DataError, match="column 'ethnicity' \\(columns.groups\\) not found"):
        run_audit(cfg)
    assert not cfg.output_path().exists()


def test_missing_model_fails_before_any_output(tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "audit.yaml", tmp_path / "no-model", tiny_data_dir))
    with pytest.raises(ModelError, match="no model directory"):
        run_audit(cfg)
    assert not cfg.output_path().exists()
