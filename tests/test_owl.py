"""OWL layer-wise sparsity profiles (issue 20): per-block sparsities, planted outliers, masks,
uniform unchanged, the lambda band as a config error, the record, a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_config
from pruning_helpers import calibration, ctx, masks, pruner, run
from transformers import AutoModelForSequenceClassification

from audit.config import load_config
from audit.errors import ConfigError
from audit.plan import plan
from audit.pruning.owl import owl_sparsities
from audit.runner import run_audit


@pytest.fixture(scope="module")
def calib(tiny_model_dir: Path, tiny_data_dir: Path):
    return calibration(tiny_model_dir, tiny_data_dir, n=32)


def _model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


def test_skewed_outlier_ratios_keep_the_weighted_mean_and_the_band() -> None:
    # one block with many outliers among three with none: the reference's plain shift leaves the band
    sizes = [100, 300, 300, 300]
    s = owl_sparsities([0.9, 0.0, 0.0, 0.01], sizes, 0.6, 0.08)
    mean = sum(a * b for a, b in zip(s, sizes, strict=True)) / sum(sizes)
    assert abs(mean - 0.6) < 1e-6
    assert all(0.6 - 0.08 - 1e-12 <= x <= 0.6 + 0.08 + 1e-12 for x in s)


def test_recorded_block_sparsities_average_to_the_target_within_the_band(tiny_model_dir: Path, calib) -> None:
    rec = run(_model(tiny_model_dir), "wanda", 0.6, calib, profile="owl", owl={"M": 5, "lambda": 0.1})
    p = rec.profile
    assert p is not None
    mean = sum(b.weights * b.target_sparsity for b in p.blocks) / sum(b.weights for b in p.blocks)
    assert abs(mean - 0.6) < 1e-6
    assert all(0.5 - 1e-12 <= b.target_sparsity <= 0.7 + 1e-12 for b in p.blocks)


def test_a_block_with_planted_outliers_gets_the_lower_sparsity(tiny_model_dir: Path, calib) -> None:
    model = _model(tiny_model_dir)
    block = model.bert.encoder.layer[1]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lin in (block.attention.self.query, block.intermediate.dense, block.output.dense):
            planted = torch.rand(lin.weight.shape, generator=gen) < 0.05
            lin.weight[planted] *= 40.0
    rec = run(model, "magnitude", 0.5, calib, profile="owl")
    by_index = {b.index: b for b in rec.profile.blocks}
    assert by_index[1].outlier_ratio > by_index[0].outlier_ratio
    assert by_index[1].target_sparsity < by_index[0].target_sparsity


def test_each_layer_is_pruned_to_its_block_sparsity(tiny_model_dir: Path, calib) -> None:
    rec = run(_model(tiny_model_dir), "wanda", 0.5, calib, profile="owl")
    s_of = {b.block: b.target_sparsity for b in rec.profile.blocks}
    for layer in rec.layers:
        block = ".".join(layer.name.split(".")[:4])
        assert layer.target_sparsity == s_of[block]
        # Wanda drops round(S_l * inputs) of every row
        assert abs(layer.achieved_sparsity - s_of[block]) <= 0.5 / layer.shape[1] + 1e-12, layer.name


def test_uniform_profile_gives_the_existing_masks_and_keys(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, calib
) -> None:
    plain, uniform = _model(tiny_model_dir), _model(tiny_model_dir)
    a = run(plain, "wanda", 0.5, calib)
    b = run(uniform, "wanda", 0.5, calib, profile="uniform")
    assert all(torch.equal(x, y) for x, y in zip(masks(plain).values(), masks(uniform).values(), strict=True))
    assert a.mask_fingerprint == b.mask_fingerprint and b.profile is None
    assert "profile" not in b.model_dump(mode="json") and b.params == {"n": None, "m": None}
    sweep = (
        "sweep:\n  methods: [wanda, {name: wanda, params: {profile: uniform}}, {name: wanda, params: {profile: owl}}]\n"
    )
    points = plan(load_config(write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep)))
    # the explicit uniform entry is the plain one (same id and key: planned once); OWL has its own id and key
    assert [p.id for p in points] == ["dense", "wanda-s0.50-seed0", "wanda-owl-s0.50-seed0"]
    assert points[1].params == {"n": None, "m": None} and points[2].key != points[1].key


def test_lambda_that_leaves_zero_one_is_a_located_config_error(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    sweep = (
        "sweep:\n"
        "  methods:\n"
        "    - {name: wanda, params: {profile: owl, owl: {M: 5, lambda: 0.3}}}\n"
        "  sparsities: [0.2, 0.5]\n"
    )
    path = write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "sparsities:" in text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "lambda 0.3 at sparsity 0.2" in str(exc.value) and exc.value.line == line


def test_results_json_records_the_profile(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    sweep = (
        "sweep:\n  methods: [{name: wanda, params: {profile: owl, owl: {M: 4, lambda: 0.05}}}]\n"
        "  sparsities: [0.5]\n  calibration: {n: 32}\n"
    )
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep=sweep,
            policy="policy: null\n",
            runtime="runtime:\n  n_boot: 0\n  batch_size: 64\n",
            deploy="deploy:\n  enabled: false\n",
        )
    )
    out = run_audit(cfg)
    data = json.loads((Path(out.output_dir) / "results.json").read_text())
    variant = next(v for v in data["variants"] if v["id"] == "wanda-owl[M=4,lambda=0.05]-s0.50-seed0")
    prof = variant["pruning"]["profile"]
    assert (prof["name"], prof["M"], prof["lambda"], prof["target_sparsity"]) == ("owl", 4.0, 0.05, 0.5)
    assert [b["index"] for b in prof["blocks"]] == [0, 1]
    assert {"outlier_ratio", "target_sparsity", "achieved_sparsity"} <= set(prof["blocks"][0])
    assert prof["achieved_sparsity"] == pytest.approx(variant["pruning"]["achieved_sparsity"], abs=1e-12)
    report = (Path(out.output_dir) / "report.html").read_text()
    assert "<h3>Layer-wise sparsity profiles</h3>" in report and "<code>bert.encoder.layer.1</code>" in report


def test_owl_through_the_causal_lm_adapter_on_a_tiny_llama() -> None:
    from lm_helpers import TEXTS, tiny_llama, tiny_tokenizer

    from audit.pruning.base import CalibrationData
    from audit.results import CalibrationRecord

    tok = tiny_tokenizer()
    model = tiny_llama(tok, layers=3)
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    calib = CalibrationData(
        texts=TEXTS,
        labels=None,
        batches=[dict(enc)],
        batch_labels=[],
        record=CalibrationRecord(dataset="t", split="t", n=len(TEXTS), seed=0, fingerprint="x"),
    )
    p = pruner("sparsegpt", profile="owl", blocksize=16)
    c = ctx(0.5, calib)
    p.validate(model, c)
    rec = p.prune(model, c)
    assert [b.block for b in rec.profile.blocks] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert rec.profile.weighted_target == pytest.approx(0.5, abs=1e-6)
    assert all(b.layers == 7 for b in rec.profile.blocks)


def test_magnitude_with_owl_needs_calibration_data(tiny_model_dir: Path) -> None:
    from audit.errors import UsageError

    p = pruner("magnitude", profile="owl")
    with pytest.raises(UsageError, match="needs calibration data"):
        p.validate(_model(tiny_model_dir), ctx(0.5, None))
    assert pruner("magnitude").needs_calibration is False
