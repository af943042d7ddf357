"""Structured pruning of tiny random decoders: which rows and columns go, GQA kept, save/load round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from decoder_helpers import ARCHS, batch, tiny_decoder
from torch import nn

from audit.errors import ModelError, UsageError
from audit.models.decoder_prune import (
    SHAPES_KEY,
    as_group_scores,
    group_scores,
    importance_scores,
    lm_loss,
    load_decoder,
    neuron_scores,
    plan_counts,
    prune_decoder,
    save_decoder,
)
from audit.models.decoders import convert_conv1d, decoder_blocks, embeddings_tied


def _converted(arch: str, **kw) -> nn.Module:
    model = tiny_decoder(arch, **kw)
    convert_conv1d(model)
    return model


def _logits(model: nn.Module, b: dict | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(b or batch())).logits


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
    # distinct scores so the choice is known: remove the highest-index group of block 0, neurons 5 and 17 of block 1
    kv = decoder_blocks(model)[0].kv_heads
    gs = {0: torch.arange(kv, 0, -1).double()}
    ns = {1: torch.ones(64).index_fill_(0, torch.tensor([5, 17]), 0.0)}
    result = prune_decoder(model, groups={0: 1}, neurons={1: 2}, group_scores_by_block=gs, neuron_scores_by_block=ns)
    assert result.groups_removed == {0: [kv - 1]}
    expected_heads = [2, 3] if arch in ("llama", "qwen2") else [3]  # GQA: KV head 1 serves query heads 2 and 3
    assert result.heads_removed == {0: expected_heads}
    assert result.neurons_removed == {1: [5, 17]}
    blocks = decoder_blocks(model)
    assert (blocks[0].heads, blocks[0].kv_heads, blocks[1].heads) == (
        (2, 1, 4) if arch in ("llama", "qwen2") else (3, 3, 4)
    )
    assert blocks[0].ffn == 64 and blocks[1].ffn == 62
    ref = _silenced(dense, result.heads_removed, result.neurons_removed)
    assert torch.allclose(_logits(model), _logits(ref), atol=1e-5, rtol=0)
    # removing the wrong head instead would not match
    wrong = _silenced(dense, {0: [0]}, result.neurons_removed)
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
    scores = {0: torch.tensor([0.0, 1.0]), 1: torch.tensor([1.0, 0.0])}
    prune_decoder(model, groups={0: 1, 1: 1}, neurons={0: 16, 1: 16}, group_scores_by_block=scores)
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
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == (2, 1, 48, 8)


def test_default_magnitude_scores_remove_the_weakest_units() -> None:
    model = _converted("llama")
    blocks = decoder_blocks(model)
    with torch.no_grad():  # make KV group 1 of block 0 and neuron 9 of block 1 clearly the weakest
        for role in ("k", "v"):
            blocks[0].linear(role).weight[8:] *= 0.01
        blocks[0].linear("q").weight[16:] *= 0.01
        blocks[0].linear("o").weight[:, 16:] *= 0.01
        for role in ("gate", "up"):
            blocks[1].linear(role).weight[9] *= 0.01
        blocks[1].linear("down").weight[:, 9] *= 0.01
    assert int(group_scores(model)[0].argmin()) == 1
    assert int(neuron_scores(model)[1].argmin()) == 9
    result = prune_decoder(model, groups={0: 1}, neurons={1: 1})
    assert result.groups_removed == {0: [1]} and result.neurons_removed == {1: [9]}


def test_query_head_scores_are_summed_per_kv_group() -> None:
    model = _converted("llama")
    # per query head: heads 0,1 (group 0) sum to 1.0, heads 2,3 (group 1) to 0.6 although head 1 is the lowest
    result = prune_decoder(model, groups={1: 1}, group_scores_by_block={1: torch.tensor([0.95, 0.05, 0.3, 0.3])})
    assert result.groups_removed == {1: [1]}
    with pytest.raises(UsageError, match="needs 2 .* or 4 .* got 3"):
        prune_decoder(model, groups={0: 1}, group_scores_by_block={0: torch.ones(3)})


def test_plan_counts_refuses_to_empty_a_block() -> None:
    model = _converted("llama")
    assert plan_counts(model, 0.5, 0.25) == ({0: 1, 1: 1}, {0: 16, 1: 16})
    assert plan_counts(model, {1: 0.5}, None) == ({1: 1}, {})
    with pytest.raises(UsageError, match="all 2 key-value groups"):
        plan_counts(model, 0.8, None)
    with pytest.raises(UsageError, match="would empty"):
        prune_decoder(model, groups={0: 2})


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_reproduces_non_uniform_pruning(arch: str, tmp_path: Path) -> None:
    model = _converted(arch)
    tied = embeddings_tied(model)
    groups, neurons = plan_counts(model, {0: 0.5}, {1: 0.25})  # blocks end up with different widths
    prune_decoder(model, groups=groups, neurons=neurons)
    b = batch()
    expected = _logits(model, b)
    save_decoder(model, tmp_path / "pruned")
    record = json.loads((tmp_path / "pruned" / "config.json").read_text())[SHAPES_KEY]
    kv0 = 1 if arch == "llama" else 2
    assert record["kv_heads"] == [kv0, 2 if arch == "llama" else 4]
    assert record["ffn"] == [64, 48]
    loaded = load_decoder(tmp_path / "pruned")
    assert [(x.heads, x.kv_heads, x.ffn) for x in decoder_blocks(loaded)] == [
        (x.heads, x.kv_heads, x.ffn) for x in decoder_blocks(model)
    ]
    assert torch.equal(_logits(loaded, b), expected)
    assert embeddings_tied(loaded) is tied
    with pytest.raises(UsageError, match="already exists"):
        save_decoder(model, tmp_path / "pruned")


def test_uniformly_pruned_llama_also_loads_with_plain_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = _converted("llama")
    groups, neurons = plan_counts(model, 0.5, 0.25)
    prune_decoder(model, groups=groups, neurons=neurons)
    save_decoder(model, tmp_path / "p")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p", local_files_only=True).eval()
    assert torch.equal(_logits(plain), _logits(model))


def test_tied_llama_stays_tied_after_pruning_and_reload(tmp_path: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         num_hidden_layers=2, vocab_size=100, tie_word_embeddings=True)  # fmt: skip
    model = tf.LlamaForCausalLM(cfg).eval()
    assert embeddings_tied(model)
    prune_decoder(model, groups={0: 1}, neurons={0: 8})
    assert embeddings_tied(model)
    save_decoder(model, tmp_path / "t")
    loaded = load_decoder(tmp_path / "t")
    assert embeddings_tied(loaded)
    assert torch.equal(_logits(loaded), _logits(model))


def test_load_decoder_rejects_weights_that_do_not_fit(tmp_path: Path) -> None:
    model = _converted("opt")
    prune_decoder(model, neurons={0: 8})
    save_decoder(model, tmp_path / "o")
    cfg_path = tmp_path / "o" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[SHAPES_KEY]["ffn"] = [64, 64]  # lies about block 0
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not fit"):
        load_decoder(tmp_path / "o")
    with pytest.raises(ModelError, match="no config.json"):
        load_decoder(tmp_path / "missing")


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_importance_scores_are_the_gate_gradients(arch: str) -> None:
    model = _converted(arch).double()  # float64, so that central differences are close enough to compare
    b0 = decoder_blocks(model)[0]
    with torch.no_grad():  # head 1 of block 0 writes nothing: its gate cannot matter
        b0.linear("o").weight[:, 8:16] = 0
    batches = [batch(1), batch(2, n=2, length=6, pad_last=0)]

    def nll(m: nn.Module, b: dict) -> torch.Tensor:  # in float64 (transformers' own loss runs in float32)
        logits = m(**b, use_cache=False).logits[:, :-1]
        keep = b["attention_mask"][:, 1:].bool()
        return torch.nn.functional.cross_entropy(logits[keep], b["input_ids"][:, 1:][keep])

    with torch.no_grad():  # the default loss predicts the same tokens (none at padded positions)
        assert float(lm_loss(model, batches[0])) == pytest.approx(float(nll(model, batches[0])), rel=1e-5)
    heads, ffn = importance_scores(model, batches, loss_fn=nll)
    assert heads[0][1] == 0 and heads[0][0] > 0
    assert heads[0].shape == (4,) and ffn[1].shape == (64,)
    # the score of neuron 7 of block 1 is |dL/dg| summed over batches: check against central differences
    down = decoder_blocks(model)[1].linear("down")
    eps, fd = 1e-2, 0.0  # (RMSNorm computes in float32 even here: a smaller step only adds noise)
    for b in batches:
        vals = []
        for g in (1 + eps, 1 - eps):
            with torch.no_grad():
                down.weight[:, 7] *= g
                vals.append(float(nll(model, b)))
                down.weight[:, 7] /= g
        fd += abs(vals[0] - vals[1]) / (2 * eps)
    assert ffn[1][7] == pytest.approx(fd, rel=1e-3)
    # the scores prune through prune_decoder like any caller's: the lowest group (query-head scores summed) goes
    lowest_group = int(as_group_scores(b0, heads[0]).argmin())
    lowest_neurons = sorted(int(i) for i in torch.argsort(ffn[1], stable=True)[:4])
    result = prune_decoder(
        model, groups={0: 1}, group_scores_by_block=heads, neurons={1: 4}, neuron_scores_by_block=ffn
    )
    assert result.groups_removed == {0: [lowest_group]}
    assert result.neurons_removed == {1: lowest_neurons}
