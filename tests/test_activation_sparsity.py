"""Activation sparsity (TEAL, CATS): calibrated gates, the skipping kernel, deployment and its checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from decoder_helpers import batch, tiny_decoder
from pruning_helpers import calibration, ctx, pruner, run
from torch import nn

from audit.config import DeployConfig
from audit.deploy.activation import (
    ActSparseLinear,
    ActSparseReferenceLinear,
    GatedActivation,
    MagnitudeGate,
    active_inputs,
)
from audit.deploy.pipeline import DeployContext, deploy_variant
from audit.errors import UsageError
from audit.pruning.activation import MagnitudeSample
from audit.pruning.base import CalibrationData
from audit.results import CalibrationRecord


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _lm_calibration() -> CalibrationData:
    batches = [batch(1, n=4, length=8), batch(2, n=2, length=6, pad_last=0)]
    labels = [torch.full((b["input_ids"].shape[0],), -1, dtype=torch.long) for b in batches]
    record = CalibrationRecord(dataset="tiny", split="train", n=6, seed=0, point_seed=0, fingerprint="x",
                               batches=2, tokens=sum(int(b["attention_mask"].sum()) for b in batches))  # fmt: skip
    return CalibrationData(texts=[], labels=torch.full((6,), -1).numpy(), batches=batches, batch_labels=labels,
                           record=record)  # fmt: skip


def test_the_gate_zeroes_exactly_the_entries_below_its_threshold() -> None:
    x = torch.tensor([[-0.5, 0.125, 0.25, -0.0625, 0.0, 2.0]])
    out = MagnitudeGate(0.25)(x)
    assert out.tolist() == [[-0.5, 0.0, 0.25, 0.0, 0.0, 2.0]]


def test_the_threshold_is_the_quantile_of_the_calibration_magnitudes() -> None:
    stat = MagnitudeSample(cap=10_000)
    stat.add(torch.arange(1, 101, dtype=torch.float32).reshape(10, 10) * -1)  # magnitudes 1..100
    t, below = stat.threshold(0.4)
    assert t == 41.0 and below == pytest.approx(0.40)


@pytest.mark.parametrize(("tokens", "max_tokens"), [(1, 1), (3, 4), (5, 1)])
def test_the_deployed_layer_computes_its_thresholded_reference(tokens: int, max_tokens: int) -> None:
    gen = torch.Generator().manual_seed(3)
    lin = nn.Linear(40, 70)
    ref = ActSparseReferenceLinear(lin, 0.6, max_tokens=max_tokens)
    dep = ref.deploy()
    x = torch.randn(tokens, 40, generator=gen)
    with torch.inference_mode():
        expected = nn.functional.linear(x.masked_fill(x.abs() < 0.6, 0.0), lin.weight, lin.bias)
        assert torch.allclose(dep(x), expected, atol=1e-5)
        assert torch.allclose(ref(x), expected, atol=1e-6)


def test_the_kernel_never_reads_the_weight_rows_of_zero_inputs() -> None:
    """Poison the rows of zeroed inputs with NaN: the kernel path must not touch them (the GEMM path would)."""
    lin = nn.Linear(32, 48, bias=False)
    dep = ActSparseReferenceLinear(lin, 0.0, gated=False, max_tokens=1).deploy()
    x = torch.randn(1, 32)
    x[0, ::2] = 0.0
    with torch.no_grad():
        dep.wt[::2] = float("nan")
    with torch.inference_mode():
        y = dep(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, x[:, 1::2] @ lin.weight[:, 1::2].T, atol=1e-5)


def test_active_inputs_count_what_the_gate_lets_through() -> None:
    ref = ActSparseReferenceLinear(nn.Linear(4, 3), 0.5)
    x = torch.tensor([[[0.1, 0.6, -0.7, 0.0], [1.0, 1.0, 1.0, 1.0]]])
    assert active_inputs(ref, x).tolist() == [[2, 4]]
    assert active_inputs(nn.Linear(4, 3), x) is None


def test_teal_gates_every_selected_layer_and_changes_no_weight(tiny_model_dir: Path, tiny_data_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, "teal", 0.4, calibration(tiny_model_dir, tiny_data_dir))
    gated = {n: m for n, m in model.named_modules() if isinstance(m, ActSparseReferenceLinear)}
    assert set(gated) == {layer.name for layer in record.layers} and gated
    for name, module in gated.items():
        assert torch.equal(module.weight, dense.get_submodule(name).weight)
    assert record.achieved_sparsity == 0.0 and record.activation is not None
    assert record.activation.mode == "teal" and record.activation.gates == len(gated)
    for layer in record.layers:
        assert layer.activation is not None and layer.activation.gate == "input"
        assert abs(layer.activation.calibrated_sparsity - 0.4) < 0.02
        assert layer.activation.threshold == pytest.approx(gated[layer.name].threshold)


def test_teal_variant_deploys_on_the_skipping_kernel_and_verifies(tiny_model_dir: Path, tiny_data_dir: Path) -> None:
    from test_quantize import _probe
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, "teal", 0.5, calibration(tiny_model_dir, tiny_data_dir), max_tokens=8)
    cfg = DeployConfig(timing_cache=False, speed_cache=False, measure_speed=False)
    dep = deploy_variant(model, record, DeployContext.create(cfg, _probe(tiny_model_dir), dense))
    assert dep.passed
    assert dep.record.formats["act_sparse"] == len(record.layers)
    assert all(layer.format == "act_sparse" and "pa_act_mm" in layer.format_reason for layer in record.layers)
    assert all(isinstance(model.get_submodule(layer.name), ActSparseLinear) for layer in record.layers)


def test_a_skipping_kernel_that_reads_a_wrong_row_fails_its_layer_check(
    tiny_model_dir: Path, tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_quantize import _probe
    from transformers import AutoModelForSequenceClassification

    from audit.deploy.verify import EquivalenceError

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, "teal", 0.5, calibration(tiny_model_dir, tiny_data_dir))
    original = ActSparseReferenceLinear.deploy

    def shifted(self: ActSparseReferenceLinear) -> ActSparseLinear:
        dep = original(self)
        with torch.no_grad():
            dep.wt.copy_(torch.roll(dep.wt, 1, dims=0))  # input i multiplies row i-1: an off-by-one index
        return dep

    monkeypatch.setattr(ActSparseReferenceLinear, "deploy", shifted)
    cfg = DeployConfig(timing_cache=False, speed_cache=False, measure_speed=False)
    with pytest.raises(EquivalenceError, match="thresholded reference layer"):
        deploy_variant(model, record, DeployContext.create(cfg, _probe(tiny_model_dir), dense))


def test_cats_gates_the_gated_mlp_activation_and_deploys_down_proj() -> None:
    model = tiny_decoder("llama")
    record = run(model, "cats", 0.5, _lm_calibration())
    blocks = model.model.layers
    assert all(isinstance(b.mlp.act_fn, GatedActivation) for b in blocks)
    assert [layer.name for layer in record.layers] == [f"model.layers.{i}.mlp.down_proj" for i in range(len(blocks))]
    assert all(layer.activation.gate == f"model.layers.{i}.mlp.act_fn" for i, layer in enumerate(record.layers))
    assert all(abs(layer.activation.calibrated_sparsity - 0.5) < 0.05 for layer in record.layers)
    # the down_proj input is zero wherever the gate closed: at least the calibrated share on new input
    seen = []
    hook = blocks[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.inference_mode():
        model(**batch(7, n=2, length=8))
    hook.remove()
    assert float((seen[0] == 0).float().mean()) > 0.3


def test_cats_on_an_mlp_without_a_gate_is_a_usage_error(tiny_model_dir: Path, tiny_data_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    p = pruner("cats")
    with pytest.raises(UsageError, match="gated MLP"):
        p.validate(model, ctx(0.5, calibration(tiny_model_dir, tiny_data_dir)))


@pytest.mark.parametrize("sparsity", [0.0])
def test_activation_sparsity_zero_is_a_usage_error(sparsity: float, tiny_model_dir: Path, tiny_data_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    with pytest.raises(UsageError, match="target activation sparsity"):
        pruner("teal").validate(model, ctx(sparsity, calibration(tiny_model_dir, tiny_data_dir)))


def test_a_deployed_cats_variant_saves_and_reloads_with_its_gates(tmp_path: Path) -> None:
    from audit.deploy.io import load_deployed, save_deployed
    from audit.deploy.modules import DeployedLinear

    dense = tiny_decoder("llama")
    model = copy.deepcopy(dense)
    record = run(model, "cats", 0.5, _lm_calibration())
    cfg = DeployConfig(timing_cache=False, speed_cache=False, measure_speed=False)
    probe = [batch(5, n=2, length=8)]
    dep = deploy_variant(model, record, DeployContext.create(cfg, probe, dense))
    assert dep.passed
    save_deployed(model, tmp_path / "v", record=dep.record)
    back = load_deployed(tmp_path / "v")
    assert isinstance(back.model.layers[1].mlp.act_fn, GatedActivation)
    assert isinstance(back.model.layers[1].mlp.down_proj, DeployedLinear)
    x = batch(9, n=2, length=8)
    with torch.inference_mode():
        assert torch.allclose(back(**x).logits, model(**x).logits, atol=1e-5)
