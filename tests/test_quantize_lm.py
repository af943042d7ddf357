"""Quantized and hybrid variants of a tiny causal LM (Llama): quantized through the sweep's method
(the registered ``int8_dynamic`` pruner), deployed by :func:`deploy_variant` on the quantized
kernel, verified on next-token logits and greedy continuations; a kernel with wrong scales fails."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from lm_helpers import TEXTS, tiny_llama, tiny_tokenizer
from pruning_helpers import run

from audit.config import DeployConfig
from audit.data import EvalSet
from audit.deploy.lm import prompts_of
from audit.deploy.pipeline import DeployContext, deploy_variant
from audit.deploy.quantized import DynamicInt8Linear, QuantReferenceLinear, TokenInt8Linear
from audit.models import adapter_of
from audit.models.decoders import prunable_linears
from audit.pruning.base import CalibrationData
from audit.results import CalibrationRecord


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm() -> tuple:
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    adapter = adapter_of(model)
    predictor = adapter.predictor(tok, max_length=32, batch_size=4)
    es = EvalSet(name="probe", texts=list(TEXTS), labels=np.full(len(TEXTS), -1))
    return tok, model, adapter, predictor, es


def _calibration(tok) -> CalibrationData:
    """The texts tokenized into two right-padded batches, with a causal LM's unused label placeholders."""
    batches = [dict(tok(list(TEXTS[i : i + 3]), padding=True, return_tensors="pt")) for i in (0, 3)]
    labels = [torch.full((b["input_ids"].shape[0],), -1, dtype=torch.long) for b in batches]
    record = CalibrationRecord(dataset="tiny", split="train", n=len(TEXTS), seed=0, point_seed=0, fingerprint="x",
                               batches=2, tokens=sum(int(b["attention_mask"].sum()) for b in batches))  # fmt: skip
    return CalibrationData(texts=list(TEXTS), labels=np.full(len(TEXTS), -1), batches=batches, batch_labels=labels,
                           record=record)  # fmt: skip


def _context(lm: tuple, dense: torch.nn.Module) -> DeployContext:
    tok, _, adapter, predictor, es = lm
    cfg = DeployConfig(timing_cache=False, speed_cache=False, measure_speed=False)
    probe = adapter.probe_batches(es, predictor, 8)
    return DeployContext.create(cfg, probe, dense, adapter=adapter, tokenizer=tok, prompts=prompts_of(es.texts))


@pytest.mark.parametrize(
    ("scheme", "cls"), [("int8_dynamic", DynamicInt8Linear), ("int8_dynamic_token", TokenInt8Linear)]
)
@pytest.mark.parametrize(("sparsity", "params"), [(0.0, {}), (0.5, {"prune": "wanda"})], ids=["plain", "wanda"])
def test_a_quantized_llama_deploys_on_the_dynamic_int8_kernel_and_verifies(
    lm, scheme: str, cls: type, sparsity: float, params: dict
) -> None:
    tok, dense, *_ = lm
    model = copy.deepcopy(dense)
    head = model.lm_head.weight.detach().clone()
    record = run(model, scheme, sparsity, _calibration(tok) if params else None, **params)
    block = [n for n, _ in prunable_linears(model)]
    assert [layer.name for layer in record.layers] == block and len(block) == 14  # 2 blocks x 7 Linear layers
    assert all(isinstance(model.get_submodule(n), QuantReferenceLinear) for n in block)
    out = deploy_variant(model, record, _context(lm, dense))
    rec = out.record
    assert rec.equivalence.passed and rec.generation is not None and rec.generation.passed, (
        rec.equivalence.max_abs_logit_diff,
        rec.equivalence.tolerance,
    )
    assert rec.formats == {scheme: 14, "dense": 1}  # the LM head is protected: kept dense, not quantized
    assert all(isinstance(model.get_submodule(n), cls) for n in block)
    assert torch.equal(model.lm_head.weight.detach(), head)
    assert all(layer.format == scheme and layer.quant.scheme == scheme for layer in record.layers)
    assert rec.linear_bytes_deployed < rec.linear_bytes_dense
    if params:
        assert record.achieved_sparsity >= 0.5
        assert all(layer.quant.zeros_kept and layer.quant.zeros_before > 0 for layer in record.layers)


def test_a_quantized_llama_with_kernel_scales_half_off_fails_the_model_level_check(
    lm, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, dense, *_ = lm
    model = copy.deepcopy(dense)
    record = run(model, "int8_dynamic", 0.0)
    real = QuantReferenceLinear.deploy

    def skewed(self: QuantReferenceLinear) -> torch.nn.Module:
        dep = real(self)
        dep.scales.mul_(1.5)  # the kernel packs these: every output of the layer is 1.5x the reference's
        return dep

    monkeypatch.setattr(QuantReferenceLinear, "deploy", skewed)
    # the model-level check on its own: the per-layer check (which would raise first) passes everything here
    monkeypatch.setattr("audit.deploy.convert.check_quant_layer", lambda ref, dep, **kw: (0.0, 1.0))
    rec = deploy_variant(model, record, _context(lm, dense)).record
    assert "dynamic int8" in (rec.equivalence.tolerance_basis or "")
    assert not rec.equivalence.passed
    assert rec.equivalence.max_abs_logit_diff > rec.equivalence.tolerance


def test_a_quantized_llama_with_one_scale_one_percent_off_fails_its_layer_check(
    lm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.deploy.verify import EquivalenceError

    _, dense, *_ = lm
    model = copy.deepcopy(dense)
    record = run(model, "int8_dynamic", 0.0)
    target = "model.layers.1.mlp.down_proj"
    real = QuantReferenceLinear.deploy

    def skewed(self: QuantReferenceLinear) -> torch.nn.Module:
        dep = real(self)
        if self is model.get_submodule(target):
            dep.scales[0].mul_(1.01)  # one output row of one layer, 1 % off
        return dep

    monkeypatch.setattr(QuantReferenceLinear, "deploy", skewed)
    with pytest.raises(EquivalenceError, match=rf"layer {target} \(int8_dynamic\)"):
        deploy_variant(model, record, _context(lm, dense))
