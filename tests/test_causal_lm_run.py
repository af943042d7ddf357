"""End to end: `prune-audit run` on a tiny causal LM saved to a directory, kind auto, deployment stage only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST_DEPLOY, write_config, write_jsonl
from lm_helpers import TEXTS, tiny_llama, tiny_tokenizer

from audit.results import load_results

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "audit", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lm")
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    model.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    rows = [{"id": f"r{i}", "text": f"{t} {i}"} for i, t in enumerate(TEXTS * 4)]  # no label column
    write_jsonl(root / "data" / "train.jsonl", rows)
    write_jsonl(root / "data" / "test.jsonl", rows[:12])
    return root / "model", root / "data"


def _deploy_policy(directory: Path) -> str:
    """Gates deployment metrics only (a run without suites): generation agreement and the decode speed-up."""
    path = directory / "lm-deploy.yaml"
    path.write_text(
        "name: lm-deploy\nfail_on_error: true\nrules:\n"
        "  - {id: generation, metric: deployment/prompts/generation_agreement, aggregate: overall,\n"
        "     comparison: absolute, min: 0.999, severity: fail, rationale: the deployed LM generates what it did}\n"
        "  - {id: decode, metric: deployment/*/decode_speedup, aggregate: overall, comparison: absolute,\n"
        "     min: 0.0, severity: fail, rationale: a decode speed-up was measured}\n",
        encoding="utf-8",
    )
    return f"policy: {path}\n"


def _config(tmp_path: Path, model: Path, data: Path, **over: str) -> Path:
    sections = {
        "model": f"model:\n  path: {model}\n  max_length: 32\n",
        "data": (
            "data:\n"
            f"  files: {{train: {data / 'train.jsonl'}, test: {data / 'test.jsonl'}}}\n"
            "  columns: {text: text, id: id}\n"
            "  splits: {eval: test, calibration: train}\n"
        ),
        "sweep": "sweep:\n  methods: [magnitude, wanda]\n  sparsities: [0.5]\n  seeds: [0]\n  calibration: {n: 8}\n",
        "suites": "suites: {}\n",
        "policy": _deploy_policy(tmp_path),
        "runtime": "runtime:\n  n_boot: 50\n  batch_size: 4\n",
        "deploy": FAST_DEPLOY + "  force_format: csr\n",
        **over,
    }
    return write_config(tmp_path / "audit.yaml", model, data, **sections)


@pytest.mark.slow
def test_run_on_a_tiny_causal_lm_with_only_the_deployment_stage(lm_dirs, tmp_path: Path) -> None:
    model, data = lm_dirs
    r = cli("run", "--config", str(_config(tmp_path, model, data)))
    assert r.returncode == 0, r.stderr[-3000:]
    res = load_results(tmp_path / "out" / "results.json")
    assert res.model.kind == "causal-lm" and res.model.architecture == "LlamaForCausalLM"
    assert res.model.num_labels == 0 and res.model.labels == {}
    pruned = [v for v in res.variants if not v.is_baseline]
    assert [v.point.method for v in pruned] == ["magnitude", "wanda"]
    for v in pruned:
        dep = v.deployment
        assert dep.equivalence.passed and dep.generation.passed and dep.generation.token_agreement == 1.0
        assert dep.speed.decode_speedup is not None and dep.speed.decode_speedup_ci is not None
        assert v.pruning.layers and all(".layers." in layer.name for layer in v.pruning.layers)
    assert res.verdict.status == "PASS"
    raw = json.loads((tmp_path / "out" / "results.json").read_text())
    assert raw["model"]["kind"] == "causal-lm" and "gguf" not in raw["model"]


def test_a_classifier_suite_is_refused_for_a_causal_lm_before_any_work(lm_dirs, tmp_path: Path) -> None:
    model, data = lm_dirs
    r = cli("run", "--config", str(_config(tmp_path, model, data, suites="suites:\n  performance: {}\n")))
    assert r.returncode == 4
    assert "model.zero_shot: suite 'performance' measures a causal LM as a zero-shot classifier" in r.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_null_label_column_is_refused_for_a_classifier(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path):
    data = (
        "data:\n"
        f"  files: {{train: {tiny_data_dir / 'train.jsonl'}, test: {tiny_data_dir / 'test.jsonl'}}}\n"
        "  columns: {text: text, label: null}\n"
        "  splits: {eval: test, calibration: train}\n"
    )
    r = cli("run", "--config", str(write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, data=data)))
    assert r.returncode == 4
    assert "data.columns.label is null, but the audited model is a classifier" in r.stderr


def test_model_kind_classifier_with_a_gguf_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        f"model: {{gguf_file: {tmp_path / 'm.gguf'}, kind: classifier}}\n"
        f"data: {{files: {{test: {tmp_path / 't.jsonl'}}}, splits: {{eval: test, calibration: null}}}}\n",
        encoding="utf-8",
    )
    r = cli("validate", str(cfg))
    assert r.returncode == 4
    assert "model.gguf_file holds a causal LM, but model.kind is classifier" in r.stderr
