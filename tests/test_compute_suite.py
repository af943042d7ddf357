"""The compute suite: per-input active fractions and FLOPs, group disparity, density shift, via the real CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.deploy.activation import ActSparseReferenceLinear
from audit.inference import Predictor
from suites.compute.run import _disparity, _shift, measure_inputs

TEXTS = ["the food was great", "awful, never again and again and again", "fine", "a long book about a quiet hotel"]


@pytest.fixture
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    return model, Predictor(AutoTokenizer.from_pretrained(tiny_model_dir), max_length=64, batch_size=3)


def _linear_macs(model: torch.nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_dense_flops_are_twice_the_linear_macs_per_real_token(tiny) -> None:
    model, pred = tiny
    per = measure_inputs(model, pred, TEXTS, None)
    lengths = [len(pred.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert per.tokens.tolist() == lengths
    assert per.flops.tolist() == [2.0 * _linear_macs(model) * n for n in lengths]
    assert per.active_fraction.tolist() == [1.0] * len(TEXTS)


def test_a_gated_layer_counts_the_inputs_its_gate_lets_through_on_real_tokens_only(tiny) -> None:
    model, pred = tiny
    gated = copy.deepcopy(model)
    name = "bert.encoder.layer.0.intermediate.dense"
    lin = gated.get_submodule(name)
    ref = ActSparseReferenceLinear(lin, 0.5)
    gated.bert.encoder.layer[0].intermediate.dense = ref
    seen: list[torch.Tensor] = []
    h = ref.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    one = []
    for text in TEXTS:  # one text per call: no padding at all
        enc = pred.tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            gated(**enc)
        one.append(int((seen[-1].abs() >= 0.5).sum()))
    h.remove()
    per = measure_inputs(gated, pred, TEXTS, None)  # batches of 3, padded to the longest
    assert per.active.tolist() == one
    assert per.gated.tolist() == [lin.in_features * n for n in per.tokens]
    static = _linear_macs(model) - lin.in_features * lin.out_features
    expected = [2.0 * static * n + 2.0 * lin.out_features * a for n, a in zip(per.tokens, one, strict=True)]
    assert per.flops.tolist() == pytest.approx(expected, rel=1e-12)


def test_disparity_is_the_gap_between_the_highest_and_lowest_group_mean() -> None:
    from audit.suite import SuiteContext

    ctx = SuiteContext.__new__(SuiteContext)
    ctx.n_boot, ctx.ci_level = 200, 0.95
    values = np.array([0.5, 0.5, 0.7, 0.7, 0.9, 0.9])
    col = np.array(["a", "a", "b", "b", "c", "c"])
    point, lo, hi, _ = _disparity(values, col, ctx, 0)
    assert point == pytest.approx(0.4) and lo == pytest.approx(0.4) and hi == pytest.approx(0.4)
    shift, slo, shi = _shift(np.array([0.3, 0.5]), np.array([0.6, 0.6, 0.6]), ctx, 0)
    assert shift == pytest.approx(-0.2) and slo <= shift <= shi


@pytest.mark.slow
def test_cli_run_measures_per_input_compute_of_a_teal_variant(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    from helpers import pass_policy, write_config

    root = Path(__file__).resolve().parents[1]
    suites = (
        "suites:\n  performance: {}\n  compute:\n"
        f"    datasets: [{{name: shifted, path: {tiny_data_dir / 'ood.jsonl'}}}]\n    top_k: 3\n"
    )
    cfg = write_config(
        tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir,
        sweep="sweep:\n  methods: [teal]\n  sparsities: [0.5]\n  seeds: [0]\n", suites=suites,
        policy=pass_policy(tmp_path),
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-m", "audit", "run", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    dense = {(m["dataset"], m["metric"]): m for m in results["baseline"]["measurements"] if m["suite"] == "compute"}
    [variant] = results["variants"]
    got = {(m["dataset"], m["metric"]): m for m in variant["measurements"] if m["suite"] == "compute"}
    assert dense[("test", "relative_compute")]["value"] == 1.0 and dense[("shifted", "density_shift")]["value"] == 0.0
    assert 0.0 < got[("test", "active_fraction")]["value"] < 1.0
    assert got[("test", "relative_compute")]["value"] < 1.0
    assert set(got[("test", "relative_compute")]["groups"]) >= {"gender", "identity"}
    disparity = got[("test", "compute_disparity")]
    feats = disparity["details"]["features"]
    assert disparity["value"] == max(f["disparity"] for f in feats.values())
    assert all("accuracy_delta" in g for f in feats.values() for g in f["groups"].values())
    shift = got[("shifted", "density_shift")]
    assert shift["value"] == pytest.approx(
        got[("shifted", "active_fraction")]["value"] - got[("test", "active_fraction")]["value"]
    )
    top = got[("test", "relative_compute")]["details"]["highest_compute"]
    assert len(top) == 3 and top[0]["relative_compute"] >= top[-1]["relative_compute"]
    assert variant["pruning"]["activation"]["mode"] == "teal"
    assert {layer["format"] for layer in variant["pruning"]["layers"]} == {"act_sparse"}
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="activation-sparsity"' in html and 'id="suite-compute"' in html


def test_the_group_test_rejects_compute_that_depends_on_the_group_and_not_constant_compute() -> None:
    from suites.compute.run import group_test

    rng = np.random.default_rng(0)
    col = np.array(["a"] * 50 + ["b"] * 50)
    shifted = np.concatenate([rng.normal(0.5, 0.02, 50), rng.normal(0.6, 0.02, 50)])
    assert group_test(shifted, col) < 1e-6
    assert group_test(np.ones(100), col) == 1.0
    assert group_test(shifted, np.array(["a"] * 100)) is None
