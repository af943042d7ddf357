"""Structured pruning: heads and FFN neurons removed physically, config patched, save → load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pruning_helpers import calibration, ctx, pruner, run
from transformers import AutoModelForSequenceClassification

from audit.errors import UsageError
from audit.models.classifier import HEADS_KEY
from audit.pruning.structured import FFN_WIDTHS_KEY, bert_blocks, load_pruned, norm_scores, save_pruned


@pytest.fixture(scope="module")
def dense(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()


@pytest.fixture()
def model(dense: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(dense)


@pytest.fixture(scope="module")
def calib(tiny_model_dir: Path, tiny_data_dir: Path):
    return calibration(tiny_model_dir, tiny_data_dir)


def _logits(model: torch.nn.Module, calib) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in calib.batches])


def test_heads_and_neurons_are_removed_physically(model, dense, calib) -> None:
    n_before = sum(p.numel() for p in model.parameters())
    heads0, neurons0 = norm_scores(bert_blocks(dense), 2)
    rec = run(model, "structured", 0.5)
    # tiny model: hidden 32, 4 heads of 8, FFN 64 → 2 heads, 32 neurons per block
    for i in range(2):
        blk = model.bert.encoder.layer[i]
        assert tuple(blk.attention.self.query.weight.shape) == (16, 32)
        assert tuple(blk.attention.self.key.bias.shape) == (16,)
        assert tuple(blk.attention.output.dense.weight.shape) == (32, 16)
        assert tuple(blk.intermediate.dense.weight.shape) == (32, 32)
        assert tuple(blk.output.dense.weight.shape) == (32, 32)
        assert blk.attention.self.num_attention_heads == 2
        # the lowest-norm heads went
        expected = sorted(torch.argsort(heads0[i])[:2].tolist())
        assert rec.heads_removed[f"bert.encoder.layer.{i}"] == expected
        assert rec.neurons_removed[f"bert.encoder.layer.{i}"] == 32
    removed = {int(k.rsplit(".", 1)[1]): v for k, v in rec.heads_removed.items()}
    assert getattr(model.config, HEADS_KEY) == [[h for h in range(4) if h not in removed[i]] for i in range(2)]
    assert getattr(model.config, FFN_WIDTHS_KEY) == [32, 32] and model.config.intermediate_size == 32
    # the record counts the real tensors against the original sizes
    assert rec.structured and rec.achieved_sparsity == pytest.approx(0.5)
    q = next(r for r in rec.layers if r.name.endswith("layer.0.attention.self.query"))
    assert q.shape == [32, 32] and q.shape_after == [16, 32] and q.total == 1024 and q.heads_removed
    assert q.achieved_sparsity == pytest.approx(0.5)
    ffn = next(r for r in rec.layers if r.name.endswith("layer.1.intermediate.dense"))
    assert ffn.neurons_removed == 32 and ffn.shape_after == [32, 32]
    assert rec.params_total == n_before
    assert rec.params_nonzero == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert rec.model_sparsity > 0
    # still a working classifier; the dense model it was copied from is untouched
    assert _logits(model, calib).shape == (64, 2)
    assert dense.config.intermediate_size == 64
    assert not hasattr(dense.config, FFN_WIDTHS_KEY) and not hasattr(dense.config, HEADS_KEY)


def test_save_and_load_round_trip_to_an_identical_model(model, calib, tmp_path: Path) -> None:
    run(model, "structured", 0.5)
    out = save_pruned(model, tmp_path / "pruned")
    again = load_pruned(out)
    assert torch.equal(_logits(model, calib), _logits(again, calib))
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    with pytest.raises(UsageError, match="already exists"):
        save_pruned(model, out)


def test_non_uniform_widths_from_overrides_round_trip(model, calib, tmp_path: Path) -> None:
    p = pruner("structured", units=["ffn"], criterion="l1")
    c = ctx(0.5, overrides={r"layer\.1\.intermediate": 0.25})
    p.validate(model, c)
    rec = p.prune(model, c)
    assert rec.neurons_removed == {"bert.encoder.layer.0": 32, "bert.encoder.layer.1": 16}
    assert rec.heads_removed == {}
    assert getattr(model.config, FFN_WIDTHS_KEY) == [32, 48]
    assert model.config.intermediate_size == 64  # HF's single size cannot describe both
    again = load_pruned(save_pruned(model, tmp_path / "p"))
    assert [b.ffn_width for b in bert_blocks(again)] == [32, 48]
    assert torch.equal(_logits(model, calib), _logits(again, calib))


def test_importance_ranking_uses_labelled_calibration(model, calib) -> None:
    p = pruner("structured", criterion="importance")
    with pytest.raises(UsageError, match="needs calibration data"):
        p.validate(model, ctx(0.5))
    p.validate(model, ctx(0.5, calib))
    rec = p.prune(model, ctx(0.5, calib))
    assert rec.calibration is not None and rec.calibration.n == 64
    assert all(len(v) == 2 for v in rec.heads_removed.values())
    assert rec.achieved_sparsity == pytest.approx(0.5)


def test_removing_every_head_is_refused_before_any_work(model) -> None:
    p = pruner("structured")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(UsageError, match=r"would remove all 4 heads of bert\.encoder\.layer\.0"):
        p.validate(model, ctx(0.9))  # round(0.9 * 4) = 4
    with pytest.raises(UsageError, match="all 4 heads"):
        p.validate(model, ctx(0.5, overrides={r"layer\.0\.attention": 0.95}))
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    p.validate(model, ctx(0.8))  # round(3.2) = 3 heads: fine


def test_the_seed_does_not_change_norm_ranking(dense) -> None:
    fps = {pruner("structured").prune(copy.deepcopy(dense), ctx(0.5, seed=s)).mask_fingerprint for s in (0, 1)}
    assert len(fps) == 1


def test_roberta_is_supported(tmp_path: Path) -> None:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=2
    )
    model = RobertaForSequenceClassification(cfg).eval()
    rec = run(model, "structured", 0.25)
    assert set(rec.heads_removed) == {"roberta.encoder.layer.0", "roberta.encoder.layer.1"}
    assert all(len(v) == 1 for v in rec.heads_removed.values())
    assert model.roberta.encoder.layer[0].attention.self.query.weight.shape[0] == 24
    ids = torch.randint(3, 50, (2, 7))
    again = load_pruned(save_pruned(model, tmp_path / "r"))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_unsupported_architecture_is_a_usage_error() -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64)
    model = DistilBertForSequenceClassification(cfg)
    with pytest.raises(UsageError, match=r"supports BERT-family encoders \(bert, roberta\).*DistilBert"):
        pruner("structured").validate(model, ctx(0.5, include=[r"transformer\.layer"]))
