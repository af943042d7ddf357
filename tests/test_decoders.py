"""Decoder layouts, GPT-2's Conv1D conversion and block-by-block calibration on tiny random causal LMs."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import ARCHS, batch, tiny_decoder
from torch import nn

from audit.errors import UsageError
from audit.models.decoders import (
    convert_conv1d,
    decoder_blocks,
    embeddings_tied,
    layout_for,
    protected_modules,
    prunable_linears,
)
from audit.pruning.base import CalibrationData
from audit.pruning.calibration import block_inputs, block_outputs, find_blocks, sequential_calibrate

EXPECTED_BLOCK_LINEARS = {
    "llama": ("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    "gpt2": ("transformer.h", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
    "gpt_neox": ("gpt_neox.layers", ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                     "mlp.dense_4h_to_h"]),
    "opt": ("model.decoder.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.out_proj", "fc1", "fc2"]),
}  # fmt: skip
EXPECTED_PROTECTED = {
    "llama": {"lm_head", "model.embed_tokens", "model.norm"},
    "gpt2": {"lm_head", "transformer.wte", "transformer.wpe", "transformer.ln_f"},
    "gpt_neox": {"embed_out", "gpt_neox.embed_in", "gpt_neox.final_layer_norm"},
    "opt": {"lm_head", "model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.final_layer_norm"},
}


def _converted(arch: str, **kw) -> nn.Module:
    model = tiny_decoder(arch, **kw)
    convert_conv1d(model)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_finds_exactly_the_block_linears(arch: str) -> None:
    model = _converted(arch)
    prefix, suffixes = EXPECTED_BLOCK_LINEARS[arch]
    expected = [f"{prefix}.{i}.{s}" for i in range(2) for s in suffixes]
    assert [n for n, _ in prunable_linears(model)] == expected
    # every nn.Linear of the model is either a block linear or the LM head (OPT: also none outside)
    all_linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    head = {"gpt_neox": "embed_out"}.get(arch, "lm_head")
    assert all_linears == set(expected) | {head}
    assert set(protected_modules(model)) == EXPECTED_PROTECTED[arch]


@pytest.mark.parametrize(("arch", "tied"), [("llama", False), ("gpt2", True), ("gpt_neox", False), ("opt", True)])
def test_head_geometry_and_tied_embeddings(arch: str, tied: bool) -> None:
    model = _converted(arch)
    blocks = decoder_blocks(model)
    assert len(blocks) == 2
    b = blocks[0]
    assert (b.heads, b.kv_heads, b.head_dim, b.ffn) == (4, 2 if arch == "llama" else 4, 8, 64)
    assert b.group_size == (2 if arch == "llama" else 1)
    assert embeddings_tied(model) is tied


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_mistral_and_qwen2_share_the_llama_layout(arch: str) -> None:
    model = tiny_decoder(arch)
    assert layout_for(model).family == "llama"
    names = [n for n, _ in prunable_linears(model)]
    assert names[:7] == [f"model.layers.0.{s}" for s in EXPECTED_BLOCK_LINEARS["llama"][1]]
    assert decoder_blocks(model)[0].kv_heads == 2


def test_unsupported_model_type_names_the_supported_ones() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1))
    with pytest.raises(UsageError, match=r"model_type llama, mistral, qwen2, gpt2, gpt_neox, opt.*'bert'"):
        layout_for(model)


def test_gpt2_conv1d_becomes_linear_with_identical_logits() -> None:
    model = tiny_decoder("gpt2")
    with pytest.raises(UsageError, match="Conv1D.*convert_conv1d"):
        decoder_blocks(model)
    b = batch()
    with torch.no_grad():
        before = model(**b).logits
    names = convert_conv1d(model)
    assert names == [f"transformer.h.{i}.{s}" for i in range(2) for s in EXPECTED_BLOCK_LINEARS["gpt2"][1]]
    assert all(isinstance(m, nn.Linear) for _, m in prunable_linears(model))
    with torch.no_grad():
        after = model(**b).logits
    assert torch.equal(before, after)
    assert embeddings_tied(model)  # the LM head is still the embedding matrix
    assert convert_conv1d(model) == []


def _full_forward_block_io(model: nn.Module, blocks: nn.ModuleList, batches: list[dict]) -> list[list[torch.Tensor]]:
    """Each block's output hidden states in plain full forward passes (the KV cache on, as by default)."""
    outs: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks = [
        blk.register_forward_hook(lambda _m, _i, o, k=k: outs[k].append((o[0] if isinstance(o, tuple) else o).clone()))
        for k, blk in enumerate(blocks)
    ]
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("arch", ARCHS)
def test_block_by_block_outputs_equal_the_full_forward(arch: str) -> None:
    model = _converted(arch)
    assert model.config.use_cache
    prefix, blocks = find_blocks(model)
    assert prefix == EXPECTED_BLOCK_LINEARS[arch][0]
    batches = [batch(1), batch(2, n=2, length=6, pad_last=0)]
    reference = _full_forward_block_io(model, blocks, batches)
    with torch.no_grad():
        hidden0 = [model(**b, output_hidden_states=True).hidden_states[0] for b in batches]
    captured = block_inputs(model, blocks[0], batches)
    for (args, kwargs), h in zip(captured, hidden0, strict=True):
        assert torch.equal(args[0] if args else kwargs["hidden_states"], h)
    for k, blk in enumerate(blocks):
        outputs = block_outputs(blk, captured)
        got = [args[0] if args else kwargs["hidden_states"] for args, kwargs in outputs]
        for g, r in zip(got, reference[k], strict=True):
            assert torch.allclose(g, r, atol=1e-6, rtol=0), f"block {k}"
        # re-running a block on the same inputs gives the same outputs (no KV cache grows between runs)
        rerun = [args[0] if args else kwargs["hidden_states"] for args, kwargs in block_outputs(blk, captured)]
        assert all(torch.equal(a, b) for a, b in zip(got, rerun, strict=True))
        captured = outputs
    assert model.config.use_cache  # restored


class _Rows:
    def __init__(self, store: dict, name: str) -> None:
        self.store, self.name = store, name

    def add(self, x: torch.Tensor) -> None:
        self.store.setdefault(self.name, []).append(x.clone())


@pytest.mark.parametrize("arch", ARCHS)
def test_sequential_calibration_sees_the_full_forward_inputs_without_padding(arch: str) -> None:
    model = _converted(arch)
    batches = [batch(1), batch(2, n=2, length=6, pad_last=0)]
    layers = prunable_linears(model)
    ref: dict[str, list[torch.Tensor]] = {}
    hooks = [
        mod.register_forward_hook(lambda _m, i, _o, n=n: ref.setdefault(n, []).append(i[0].clone()))
        for n, mod in layers
    ]
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    got: dict[str, list[torch.Tensor]] = {}
    calib = CalibrationData(texts=[], labels=None, batches=batches, batch_labels=[], record=None)
    notes = sequential_calibrate(
        model, layers, calib, make_stat=lambda n, _m: _Rows(got, n), finish=lambda *_: None,
        blocks=find_blocks(model),
    )  # fmt: skip
    assert "block by block" in notes[0]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    for name, _ in layers:
        rows = [
            x.reshape(*b["attention_mask"].shape, -1)[b["attention_mask"].bool()]
            for x, b in zip(ref[name], batches, strict=True)
        ]
        expected = torch.cat(rows)
        seen = torch.cat(got[name])
        assert seen.shape[0] == tokens == 27 + 12 - 3, name  # the 3 padded positions dropped
        assert torch.allclose(seen, expected, atol=1e-6, rtol=0), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_wanda_and_sparsegpt_prune_decoder_blocks_only(arch: str, method: str) -> None:
    from pruning_helpers import ctx, pruner

    from audit.pruning.base import row_keep_mask
    from audit.pruning.wanda import wanda_keep_mask

    model = _converted(arch)
    batches = [batch(1), batch(2, n=2, length=6, pad_last=0)]
    prefix = EXPECTED_BLOCK_LINEARS[arch][0]
    first = f"{prefix}.0.{EXPECTED_BLOCK_LINEARS[arch][1][0]}"
    inputs: list[torch.Tensor] = []
    hook = dict(model.named_modules())[first].register_forward_hook(lambda _m, i, _o: inputs.append(i[0].clone()))
    with torch.no_grad():
        for b in batches:
            model(**b)
    hook.remove()
    x = torch.cat([t[b["attention_mask"].bool()] for t, b in zip(inputs, batches, strict=True)])
    dense_first = dict(model.named_modules())[first].weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    calib = CalibrationData(texts=[], labels=None, batches=batches, batch_labels=[], record=None)
    p = pruner(method)
    c = ctx(0.5, calib, include=[rf"^{prefix}\.\d+\."])
    p.validate(model, c)
    p.prune(model, c)
    for name, mod in prunable_linears(model):
        zeros = (mod.weight == 0).sum(dim=1)
        if method == "wanda":  # compared per output row
            assert torch.all(zeros == mod.in_features // 2), name
        else:  # SparseGPT chooses within column blocks of the whole layer
            assert int(zeros.sum()) == mod.weight.numel() // 2, name
    assert torch.equal(model.get_output_embeddings().weight, head_before)  # the LM head is not pruned
    if method == "wanda":  # block 0 is scored on the dense model's own (unpadded) hidden states
        got = dict(model.named_modules())[first].weight != 0
        assert torch.equal(got, wanda_keep_mask(dense_first, x.double().pow(2).sum(0).sqrt(), 0.5))
        assert not torch.equal(got, row_keep_mask(dense_first.abs(), 0.5))
    assert torch.isfinite(model(**batches[0]).logits).all()
