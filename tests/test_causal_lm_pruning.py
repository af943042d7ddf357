"""Every pruning method through the Pruner API on tiny random decoders of each covered architecture."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import ARCHS, VOCAB, batch, tiny_decoder
from pruning_helpers import ctx, pruner

from audit.models import adapter_of
from audit.models.decoders import convert_conv1d, decoder_blocks, prunable_linears
from audit.pruning.base import CalibrationData
from audit.pruning.structured import load_pruned, save_pruned
from audit.results import CalibrationRecord

METHODS = {
    "magnitude": {},
    "nm": {"n": 2, "m": 4},
    "wanda": {},
    "sparsegpt": {},
    "gradient": {},
    "gradual": {"steps": 2, "finetune_steps": 2},
    "movement": {"steps": 2, "finetune_steps": 2, "final_finetune_steps": 1, "distill": {"alpha": 0.5}},
    "imp": {"rounds": 2, "finetune_steps": 2, "final_finetune_steps": 1},
}
FINE_TUNED = {"gradual", "movement", "imp"}


def _model(arch: str) -> torch.nn.Module:
    model = tiny_decoder(arch)
    convert_conv1d(model)
    return model


def _calibration() -> CalibrationData:
    """Two tokenized batches (one right-padded row) with the unused label placeholders a causal LM gets."""
    batches = [batch(1), batch(2, n=2, length=6, pad_last=0)]
    labels = [torch.full((b["input_ids"].shape[0],), -1, dtype=torch.long) for b in batches]
    record = CalibrationRecord(dataset="tiny", split="train", n=5, seed=0, point_seed=0, fingerprint="x",
                               batches=2, tokens=sum(int(b["attention_mask"].sum()) for b in batches))  # fmt: skip
    return CalibrationData(texts=[], labels=torch.full((5,), -1).numpy(), batches=batches, batch_labels=labels,
                           record=record)  # fmt: skip


def test_the_causal_lm_adapter_serves_every_covered_architecture() -> None:
    for arch in ARCHS:
        model = _model(arch)
        adapter = adapter_of(model)
        assert adapter.spec.name == "causal-lm", arch
        assert [n for n, _ in adapter.prunable_linears(model)] == [n for n, _ in prunable_linears(model)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_unstructured_methods_reach_the_target_on_the_block_linears_only(arch: str, method: str) -> None:
    model = _model(arch)
    head = model.get_output_embeddings().weight.detach().clone()
    emb = model.get_input_embeddings().weight.detach().clone()
    p = pruner(method, **METHODS[method])
    c = ctx(0.5, _calibration() if p.needs_calibration else None)
    p.validate(model, c)
    record = p.prune(model, c)
    linears = prunable_linears(model)
    assert sorted(layer.name for layer in record.layers) == sorted(n for n, _ in linears)
    for name, mod in linears:
        zeros = int((mod.weight == 0).sum())
        assert zeros == mod.weight.numel() // 2, (name, zeros, mod.weight.numel())
    if method == "nm":  # exactly 2 of every 4 consecutive input weights kept
        for name, mod in linears:
            kept = (mod.weight != 0).reshape(mod.out_features, -1, 4).sum(-1)
            assert torch.all(kept == 2), name
    if method in FINE_TUNED:  # they fine-tune every weight between pruning steps, but never prune the head
        assert int((model.get_output_embeddings().weight == 0).sum()) == int((head == 0).sum()) == 0
    else:  # the LM head and the embeddings are never pruned nor changed
        assert torch.equal(model.get_output_embeddings().weight, head)
        assert torch.equal(model.get_input_embeddings().weight, emb)
    out = model(**batch(3)).logits
    assert out.shape == (3, 9, VOCAB) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("criterion", ["l1", "importance"])
def test_structured_removes_groups_and_neurons_and_round_trips(arch: str, criterion: str, tmp_path) -> None:
    model = _model(arch)
    before = {b.index: (b.heads, b.kv_heads, b.ffn) for b in decoder_blocks(model)}
    p = pruner("structured", criterion=criterion)
    c = ctx(0.5, _calibration() if p.needs_calibration else None)
    p.validate(model, c)
    p.prune(model, c)
    for b in decoder_blocks(model):
        heads, kv, ffn = before[b.index]
        assert b.kv_heads == kv // 2 and b.ffn == ffn // 2, b.name
        assert b.heads * kv == heads * b.kv_heads, b.name  # the GQA ratio is kept (llama: 4/2 -> 2/1)
    probe = batch(4)
    with torch.no_grad():
        logits = model(**probe, use_cache=False).logits
    assert torch.isfinite(logits).all()
    save_pruned(model, tmp_path / "pruned")
    again = load_pruned(tmp_path / "pruned")
    assert [(b.heads, b.kv_heads, b.ffn) for b in decoder_blocks(again)] == [
        (b.heads, b.kv_heads, b.ffn) for b in decoder_blocks(model)
    ]
    with torch.no_grad():
        assert torch.allclose(again(**probe, use_cache=False).logits, logits, atol=1e-5, rtol=0)


def test_structured_on_gpt2_drops_the_lowest_norm_heads_from_the_fused_qkv() -> None:
    """GPT-2's c_attn is [q | k | v]: a head's rows are three separate slices (a per-unit reshape would mix heads)."""
    model = _model("gpt2")
    blk = decoder_blocks(model)[0]
    d, h = blk.head_dim, blk.heads
    with torch.no_grad():  # head 2 clearly the weakest in q, k and v; k of head 3 and v of head 0 strong
        w = blk.linear("qkv").weight
        for part in range(3):
            w[part * h * d + 2 * d : part * h * d + 3 * d].mul_(1e-3)
        w[h * d + 3 * d : h * d + 4 * d].mul_(10.0)
        w[2 * h * d : 2 * h * d + d].mul_(10.0)
        kept_q = torch.cat([w[: 2 * d], w[3 * d : 4 * d]]).clone()
    # a per-unit reshape of [q | k | v] would see rows 2hd/4.. as "head 2" (k2, k3, v0): strong, never chosen
    p = pruner("structured", units=["heads"])
    c = ctx(0.25)
    p.validate(model, c)
    p.prune(model, c)
    blk = decoder_blocks(model)[0]
    assert blk.heads == 3
    assert torch.equal(blk.linear("qkv").weight[: 3 * d], kept_q)  # q of heads 0, 1, 3 kept, head 2 gone


def test_the_lm_loss_ignores_padding_and_labels() -> None:
    model = _model("llama")
    adapter = adapter_of(model)
    b = batch(1)
    full = adapter.loss(model, b, torch.zeros(3, dtype=torch.long), reduction="sum")
    b2 = {k: v.clone() for k, v in b.items()}
    b2["input_ids"][-1, -3:] = 7  # other ids under the padded positions
    assert torch.allclose(adapter.loss(model, b2, None, reduction="sum"), full)
    tokens = int(b["attention_mask"][:, 1:].sum())
    mean = adapter.loss(model, b, None)
    assert torch.allclose(mean * tokens, full, rtol=1e-5)
