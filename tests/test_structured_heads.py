"""Attention heads removed by our own code (transformers 5 has no ``prune_heads``), saved and reloaded.

transformers 4.57's ``prune_heads`` still exists: it is the reference the new removal
must reproduce, and it writes the ``config.pruned_heads`` checkpoints earlier
versions saved (which loading converts). Nothing in ``audit/`` calls it.
"""

from __future__ import annotations

import copy
import io
import json
import tokenize
from pathlib import Path

import pytest
import torch
from pruning_helpers import ctx, pruner
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from audit.errors import ModelError, UsageError
from audit.models import adapter_of
from audit.models.classifier import FFN_WIDTHS_KEY, HEADS_KEY
from audit.pruning.structured import load_pruned, save_pruned, unit_blocks

ROOT = Path(__file__).resolve().parents[1]


def tiny(family: str = "bert", attn: str = "eager", layers: int = 3) -> torch.nn.Module:
    """A random 4-head classifier (hidden 32, head size 8) built in code."""
    torch.manual_seed(0)
    kw = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=3,
        max_position_embeddings=40,
        attn_implementation=attn,
    )
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(**kw)).eval()
    return BertForSequenceClassification(BertConfig(**kw)).eval()


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding must be masked the same way after the cut
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).logits


def blocks(model: torch.nn.Module):
    return model.base_model.encoder.layer


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k
    for x, y in zip(blocks(a), blocks(b), strict=True):
        assert x.attention.self.num_attention_heads == y.attention.self.num_attention_heads
        assert x.attention.self.all_head_size == y.attention.self.all_head_size
    assert torch.allclose(logits(a), logits(b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_removal_matches_transformers_prune_heads(family: str, attn: str) -> None:
    dense = tiny(family, attn)
    ours, ref = copy.deepcopy(dense), copy.deepcopy(dense)
    adapter = adapter_of(ours)
    # two rounds, the second naming heads by their original ids (as HF does)
    for heads in ({0: [1, 3], 2: [0]}, {0: [0], 1: [2]}):
        adapter.remove_heads(ours, heads)
        ref.prune_heads(heads)  # the reference: transformers' own removal
    assert [b.attention.self.num_attention_heads for b in blocks(ours)] == [1, 3, 3]
    assert tuple(blocks(ours)[0].attention.self.query.weight.shape) == (8, 32)
    assert tuple(blocks(ours)[0].attention.output.dense.weight.shape) == (32, 8)
    assert_same_model(ours, ref)
    assert not torch.allclose(logits(ours), logits(dense), atol=1e-4)  # heads really went
    groups = unit_blocks(ours)
    assert [adapter.head_ids(ours, g) for g in groups] == [[2], [0, 1, 3], [1, 2, 3]]
    assert getattr(ours.config, HEADS_KEY) == [[2], [0, 1, 3], [1, 2, 3]]
    assert not ours.config.pruned_heads  # our record only


def test_structured_pruner_with_a_per_layer_override_equals_prune_heads() -> None:
    dense = tiny()
    model = copy.deepcopy(dense)
    p = pruner("structured", units=["heads"])
    c = ctx(0.5, overrides={r"layer\.1\.attention": 0.25})
    p.validate(model, c)
    rec = p.prune(model, c)
    removed = {int(k.rsplit(".", 1)[1]): v for k, v in rec.heads_removed.items()}
    assert [len(removed[i]) for i in range(3)] == [2, 1, 2]
    ref = copy.deepcopy(dense)
    ref.prune_heads(removed)
    assert_same_model(model, ref)


def test_saved_pruned_model_reloads_identically_without_the_hf_record(tmp_path: Path) -> None:
    model = tiny()
    adapter_of(model).remove_heads(model, {0: [0, 1], 1: [0, 1], 2: [2, 3]})
    out = save_pruned(model, tmp_path / "p")
    saved = json.loads((out / "config.json").read_text())
    assert saved[HEADS_KEY] == [[2, 3], [2, 3], [0, 1]]
    assert not saved.get("pruned_heads")  # transformers would re-apply (or, in 5, ignore) it
    again = load_pruned(out)
    assert_same_model(model, again)
    assert [adapter_of(again).head_ids(again, g) for g in unit_blocks(again)] == [[2, 3], [2, 3], [0, 1]]


def test_non_uniform_head_counts_and_ffn_widths_round_trip(tmp_path: Path) -> None:
    model = tiny()
    adapter = adapter_of(model)
    adapter.remove_heads(model, {0: [0, 1, 2], 2: [3]})
    groups = unit_blocks(model)
    adapter.remove_neurons(model, groups[1], list(range(0, 48, 3)))
    out = save_pruned(model, tmp_path / "p")
    again = load_pruned(out)
    assert [g.heads for g in unit_blocks(again)] == [1, 4, 3]
    assert [g.ffn_width for g in unit_blocks(again)] == [48, 32, 48]
    assert getattr(again.config, FFN_WIDTHS_KEY) == [48, 32, 48]
    assert_same_model(model, again)


def test_the_audit_loader_reads_a_head_pruned_checkpoint(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    from audit.config import ModelConfig
    from audit.model_io import load_checkpoint

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    model = tiny()
    adapter_of(model).remove_heads(model, {1: [1, 2, 3]})
    out = save_pruned(model, tmp_path / "ckpt", tokenizer=tok)
    loaded = load_checkpoint(ModelConfig(path=str(out)), out, offline=True)
    assert [g.heads for g in unit_blocks(loaded.model)] == [4, 1, 4]
    assert loaded.identity.params_total == sum(p.numel() for p in model.parameters())
    assert_same_model(model, loaded.model)


def test_an_earlier_versions_pruned_heads_checkpoint_is_converted(tmp_path: Path) -> None:
    legacy = tiny()
    legacy.prune_heads({0: [1], 1: [0, 3]})  # what earlier prune-audit versions saved
    legacy.save_pretrained(tmp_path / "old", safe_serialization=True)
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    assert raw["pruned_heads"] == {"0": [1], "1": [0, 3]} and HEADS_KEY not in raw
    again = load_pruned(tmp_path / "old")
    assert_same_model(legacy, again)
    assert getattr(again.config, HEADS_KEY) == [[0, 2, 3], [1, 2], [0, 1, 2, 3]]
    assert not again.config.pruned_heads
    # an in-memory model with HF's record: original ids still name the heads
    adapter = adapter_of(legacy)
    assert adapter.head_ids(legacy, unit_blocks(legacy)[1]) == [1, 2]
    ours, ref = copy.deepcopy(legacy), copy.deepcopy(legacy)
    adapter.remove_heads(ours, {1: [2]})
    ref.prune_heads({1: [2]})
    assert_same_model(ours, ref)
    assert getattr(ours.config, HEADS_KEY)[1] == [1] and not ours.config.pruned_heads


def test_bad_removals_and_bad_records_are_refused(tmp_path: Path) -> None:
    model = tiny()
    adapter = adapter_of(model)
    adapter.remove_heads(model, {0: [1]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UsageError, match=r"has heads \[0, 2, 3\]; cannot remove \[1\]"):
        adapter.remove_heads(model, {0: [1]})
    with pytest.raises(UsageError, match="removing all 3 heads would empty"):
        adapter.remove_heads(model, {0: [0, 2, 3]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out = save_pruned(model, tmp_path / "p")
    cfg = json.loads((out / "config.json").read_text())
    cfg[HEADS_KEY][2] = [0, 7]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"keeps heads \[0, 7\] of block 2, which has heads 0\.\.3") as err:
        load_pruned(out)
    assert err.value.where == str(out / "config.json")


def test_audit_code_never_calls_prune_heads() -> None:
    """``prune_heads`` may appear in comments and docstrings only: transformers 5 removed it."""
    hits = []
    for path in sorted((ROOT / "audit").rglob("*.py")):
        for t in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
            if t.type == tokenize.NAME and t.string == "prune_heads":
                hits.append(f"{path.relative_to(ROOT)}:{t.start[0]}")
    assert hits == []
