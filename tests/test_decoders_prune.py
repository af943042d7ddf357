"""Structured pruning of tiny random decoders: which rows and columns go, GQA kept, save/load round trip.

Through the real path: the removal functions of :mod:`audit.models.decoder_prune` (what the causal-LM
adapter calls), the adapter, and the ``structured`` method (:mod:`audit.pruning.structured`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from decoder_helpers import ARCHS, batch, tiny_decoder
from pruning_helpers import ctx, pruner
from torch import nn

from audit.errors import ModelError, UsageError
from audit.models import adapter_of
from audit.models.decoder_prune import (
    SHAPES_KEY,
    group_scores,
    load_decoder,
    neuron_scores,
    remove_kv_groups,
    remove_neurons,
)
from audit.models.decoders import convert_conv1d, decoder_blocks, embeddings_tied
from audit.pruning.base import CalibrationData, PruneContext
from audit.pruning.structured import importance_scores, load_pruned, plan_removal, save_pruned, unit_blocks
from audit.results import CalibrationRecord


def _converted(arch: str, **kw) -> nn.Module:
    model = tiny_decoder(arch, **kw)
    convert_conv1d(model)
    return model


def _logits(model: nn.Module, b: dict | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(b or batch())).logits


def _levels(model: nn.Module, heads: dict[int, float], ffn: dict[int, float], calib=None) -> PruneContext:
    """A structured context removing ``heads[i]`` of block i's KV groups and ``ffn[i]`` of its neurons (else 0)."""
    overrides = {}
    for b in unit_blocks(model):
        for names, ratio in ((b.attn_linears, heads.get(b.index, 0.0)), (b.ffn_linears, ffn.get(b.index, 0.0))):
            overrides.update({re.escape(f"{b.name}.{s}") + "$": ratio for s in names})
    return ctx(0.5, calib, overrides=overrides)


def _structured(model: nn.Module, c: PruneContext, **params):
    p = pruner("structured", **params)
    p.validate(model, c)
    return p.prune(model, c)


def _silenced(dense: nn.Module, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> nn.Module:
    """The dense model with the removed query heads' and neurons' input columns of o / down zeroed.

    A head whose output never reaches the residual stream, and a neuron whose output
    column is zero, contribute nothing: this model must compute what the pruned one does.
    """
    ref = copy.deepcopy(dense)
    blocks = decoder_blocks(ref)
    with torch.no_grad():
        for i, hs in heads.items():
            b = blocks[i]
            for h in hs:
                b.linear("o").weight[:, h * b.head_dim : (h + 1) * b.head_dim] = 0
        for i, ns in neurons.items():
            blocks[i].linear("down").weight[:, ns] = 0
    return ref


@pytest.mark.parametrize("arch", [*ARCHS, "qwen2"])  # Qwen2: GQA with q/k/v biases
def test_pruned_model_computes_what_the_dense_model_does_without_those_units(arch: str) -> None:
    dense = _converted(arch)
    model = copy.deepcopy(dense)
    # remove the highest-index group of block 0, neurons 5 and 17 of block 1
    blocks = decoder_blocks(model)
    kv = blocks[0].kv_heads
    heads_removed = {0: remove_kv_groups(blocks[0], [kv - 1])}
    remove_neurons(blocks[1], [17, 5])
    expected_heads = [2, 3] if arch in ("llama", "qwen2") else [3]  # GQA: KV head 1 serves query heads 2 and 3
    assert heads_removed == {0: expected_heads}
    blocks = decoder_blocks(model)
    assert (blocks[0].heads, blocks[0].kv_heads, blocks[1].heads) == (
        (2, 1, 4) if arch in ("llama", "qwen2") else (3, 3, 4)
    )
    assert blocks[0].ffn == 64 and blocks[1].ffn == 62
    ref = _silenced(dense, heads_removed, {1: [5, 17]})
    assert torch.allclose(_logits(model), _logits(ref), atol=1e-5, rtol=0)
    # removing the wrong head instead would not match
    wrong = _silenced(dense, {0: [0]}, {1: [5, 17]})
    assert not torch.allclose(_logits(model), _logits(wrong), atol=1e-3)
    # decoding with the KV cache (blocks of different widths) gives the logits the silenced dense model
    # gives for the same sequence without a cache
    prompt = batch(n=1, pad_last=0)
    with torch.no_grad():
        out = model.generate(
            **prompt, max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True,
            return_dict_in_generate=True,
        )  # fmt: skip
        full = ref(input_ids=out.sequences, use_cache=False).logits[0]
    start = prompt["input_ids"].shape[1] - 1
    for j, step in enumerate(out.logits):
        assert torch.allclose(step[0], full[start + j], atol=1e-5, rtol=0), j


def test_llama_rows_and_columns_removed_keep_the_gqa_ratio() -> None:
    dense = _converted("llama")
    model = copy.deepcopy(dense)
    adapter = adapter_of(model)
    adapter.remove_heads(model, {0: [0], 1: [1]})
    for g in unit_blocks(model):
        adapter.remove_neurons(model, g, list(range(16)))
    adapter.finish_structured(model)
    d0, p0 = decoder_blocks(dense)[0], decoder_blocks(model)[0]
    d1, p1 = decoder_blocks(dense)[1], decoder_blocks(model)[1]
    # block 0 lost KV group 0 (k/v rows 0..7) with query heads 0,1 (q rows 0..15, o columns 0..15)
    assert torch.equal(p0.linear("k").weight, d0.linear("k").weight[8:])
    assert torch.equal(p0.linear("v").weight, d0.linear("v").weight[8:])
    assert torch.equal(p0.linear("q").weight, d0.linear("q").weight[16:])
    assert torch.equal(p0.linear("o").weight, d0.linear("o").weight[:, 16:])
    # block 1 lost KV group 1 with query heads 2,3
    assert torch.equal(p1.linear("k").weight, d1.linear("k").weight[:8])
    assert torch.equal(p1.linear("q").weight, d1.linear("q").weight[:16])
    for b in (p0, p1):
        assert (b.heads, b.kv_heads, b.group_size) == (2, 1, 2)
        assert b.attention.num_key_value_groups == 2
        assert b.linear("gate").out_features == b.linear("up").out_features == b.linear("down").in_features == 48
    assert torch.equal(p1.linear("down").weight, d1.linear("down").weight[:, 16:])
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == (2, 1, 48, 8)


def test_the_structured_method_removes_the_weakest_units_by_magnitude() -> None:
    dense = _converted("llama")
    blocks = decoder_blocks(dense)
    with torch.no_grad():  # make KV group 1 of block 0 and neuron 9 of block 1 clearly the weakest
        for role in ("k", "v"):
            blocks[0].linear(role).weight[8:] *= 0.01
        blocks[0].linear("q").weight[16:] *= 0.01
        blocks[0].linear("o").weight[:, 16:] *= 0.01
        for role in ("gate", "up"):
            blocks[1].linear(role).weight[9] *= 0.01
        blocks[1].linear("down").weight[:, 9] *= 0.01
    assert int(group_scores(dense)[0].argmin()) == 1
    assert int(neuron_scores(dense)[1].argmin()) == 9
    model = copy.deepcopy(dense)
    rec = _structured(model, _levels(model, {0: 0.5}, {1: 1 / 64}), criterion="l1")
    assert rec.heads_removed == {"model.layers.0": [1]}
    assert rec.neurons_removed == {"model.layers.1": 1}
    down, dense_down = decoder_blocks(model)[1].linear("down").weight, blocks[1].linear("down").weight
    assert torch.equal(down, torch.cat([dense_down[:, :9], dense_down[:, 10:]], dim=1))  # neuron 9 is the one gone


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_groups_magnitude_covers_its_query_heads_kv_rows_and_output_columns(arch: str) -> None:
    model = _converted(arch)
    b = decoder_blocks(model)[0]
    d, g = b.head_dim, b.group_size
    unit = 1  # the second KV group (GPT-2: the second head)
    if b.layout.fused:  # GPT-2's c_attn is [q | k | v], each heads * d rows
        w = b.linear("qkv").weight
        rows = torch.cat([w[part * b.heads * d + unit * d : part * b.heads * d + (unit + 1) * d] for part in range(3)])
    else:
        q = b.linear("q").weight[unit * g * d : (unit + 1) * g * d]
        k, v = (b.linear(r).weight[unit * d : (unit + 1) * d] for r in ("k", "v"))
        rows = torch.cat([q, k, v])
    cols = b.linear("o").weight[:, unit * g * d : (unit + 1) * g * d]
    by_hand = float(rows.detach().double().abs().sum() + cols.detach().double().abs().sum())
    assert float(group_scores(model, 1)[0][unit]) == pytest.approx(by_hand, rel=1e-12)
    assert group_scores(model)[0].shape == (b.kv_heads,)


def test_the_plan_refuses_to_empty_a_block() -> None:
    model = _converted("llama")
    plan = plan_removal(model, ctx(0.5, overrides={r"mlp\.": 0.25}), ["heads", "ffn"])
    assert (plan.heads, plan.neurons) == ({0: 1, 1: 1}, {0: 16, 1: 16})
    plan = plan_removal(model, _levels(model, {1: 0.5}, {}), ["heads"])
    assert (plan.heads, plan.neurons) == ({0: 0, 1: 1}, {})
    with pytest.raises(UsageError, match="all 2 heads of model.layers.0"):
        plan_removal(model, ctx(0.8), ["heads"])
    with pytest.raises(UsageError, match="would empty"):
        remove_kv_groups(decoder_blocks(model)[0], [0, 1])


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_reproduces_non_uniform_pruning(arch: str, tmp_path: Path) -> None:
    model = _converted(arch)
    tied = embeddings_tied(model)
    _structured(model, _levels(model, {0: 0.5}, {1: 0.25}))  # blocks end up with different widths
    b = batch()
    expected = _logits(model, b)
    save_pruned(model, tmp_path / "pruned")
    record = json.loads((tmp_path / "pruned" / "config.json").read_text())[SHAPES_KEY]
    kv0 = 1 if arch == "llama" else 2
    assert record["kv_heads"] == [kv0, 2 if arch == "llama" else 4]
    assert record["ffn"] == [64, 48]
    loaded = load_pruned(tmp_path / "pruned")
    assert [(x.heads, x.kv_heads, x.ffn) for x in decoder_blocks(loaded)] == [
        (x.heads, x.kv_heads, x.ffn) for x in decoder_blocks(model)
    ]
    assert torch.equal(_logits(loaded, b), expected)
    assert embeddings_tied(loaded) is tied
    with pytest.raises(UsageError, match="already exists"):
        save_pruned(model, tmp_path / "pruned")


def test_uniformly_pruned_llama_also_loads_with_plain_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = _converted("llama")
    _structured(model, ctx(0.5, overrides={r"mlp\.": 0.25}))
    assert [(x.kv_heads, x.ffn) for x in decoder_blocks(model)] == [(1, 48), (1, 48)]
    save_pruned(model, tmp_path / "p")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p", local_files_only=True).eval()
    assert torch.equal(_logits(plain), _logits(model))


def test_tied_llama_stays_tied_after_pruning_and_reload(tmp_path: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         num_hidden_layers=2, vocab_size=100, tie_word_embeddings=True)  # fmt: skip
    model = tf.LlamaForCausalLM(cfg).eval()
    assert embeddings_tied(model)
    _structured(model, _levels(model, {0: 0.5}, {0: 0.125}))
    assert [(x.kv_heads, x.ffn) for x in decoder_blocks(model)] == [(1, 56), (2, 64)]
    assert embeddings_tied(model)
    save_pruned(model, tmp_path / "t")
    loaded = load_pruned(tmp_path / "t")
    assert embeddings_tied(loaded)
    assert torch.equal(_logits(loaded), _logits(model))


def test_load_decoder_rejects_weights_that_do_not_fit(tmp_path: Path) -> None:
    model = _converted("opt")
    adapter = adapter_of(model)
    adapter.remove_neurons(model, unit_blocks(model)[0], list(range(8)))
    save_pruned(model, tmp_path / "o")
    cfg_path = tmp_path / "o" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg[SHAPES_KEY]["ffn"] == [56, 64]
    cfg[SHAPES_KEY]["ffn"] = [64, 64]  # lies about block 0
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not fit"):
        load_pruned(tmp_path / "o")
    with pytest.raises(ModelError, match="no config.json"):
        load_decoder(tmp_path / "missing")


def _calibration(batches: list[dict]) -> CalibrationData:
    """Tokenized batches with the unused label placeholders a causal LM gets."""
    labels = [torch.full((b["input_ids"].shape[0],), -1, dtype=torch.long) for b in batches]
    n = sum(b["input_ids"].shape[0] for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    record = CalibrationRecord(
        dataset="tiny", split="train", n=n, seed=0, point_seed=0, fingerprint="x", batches=len(batches), tokens=tokens
    )
    return CalibrationData(
        texts=[], labels=torch.full((n,), -1).numpy(), batches=batches, batch_labels=labels, record=record
    )


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_importance_scores_are_the_gate_gradients(arch: str) -> None:
    model = _converted(arch).double()  # float64, so that central differences are close enough to compare
    b0 = decoder_blocks(model)[0]
    span = b0.group_size * b0.head_dim  # the o columns of one KV group (GPT-NeoX: of one head)
    with torch.no_grad():  # group 1 of block 0 writes nothing: its gate cannot matter
        b0.linear("o").weight[:, span : 2 * span] = 0
    batches = [batch(1), batch(2, n=2, length=6, pad_last=0)]
    calib = _calibration(batches)
    heads, ffn = importance_scores(model, unit_blocks(model), calib)
    assert heads[0][1] == 0 and heads[0][0] > 0
    assert heads[0].shape == (b0.kv_heads,) and ffn[1].shape == (64,)

    def nll(m: nn.Module, b: dict) -> float:  # summed next-token NLL over the real tokens, in float64
        with torch.no_grad():
            logits = m(**b, use_cache=False).logits[:, :-1]
        keep = b["attention_mask"][:, 1:].bool()
        return float(torch.nn.functional.cross_entropy(logits[keep], b["input_ids"][:, 1:][keep], reduction="sum"))

    # the score of neuron 7 of block 1 is |dL/dg| summed over batches: check against central differences
    down = decoder_blocks(model)[1].linear("down")
    eps, fd = 1e-2, 0.0  # (RMSNorm computes in float32 even here: a smaller step only adds noise)
    for b in batches:
        vals = []
        for g in (1 + eps, 1 - eps):
            with torch.no_grad():
                down.weight[:, 7] *= g
            vals.append(nll(model, b))
            with torch.no_grad():
                down.weight[:, 7] /= g
        fd += abs(vals[0] - vals[1]) / (2 * eps)
    assert float(ffn[1][7]) == pytest.approx(fd, rel=1e-3)
    # the structured method ranks by these scores: the lowest group and the lowest neurons go
    lowest_group = int(torch.argmin(heads[0]))
    kept_neurons = sorted(int(i) for i in torch.argsort(ffn[1], stable=True)[4:])
    dense_down = down.weight.detach().clone()
    rec = _structured(model, _levels(model, {0: 1 / b0.kv_heads}, {1: 4 / 64}, calib), criterion="importance")
    assert rec.heads_removed == {b0.name: [lowest_group]}
    assert torch.equal(decoder_blocks(model)[1].linear("down").weight, dense_down[:, kept_neurons])
