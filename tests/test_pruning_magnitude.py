from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from audit.config import LayerSelection
from audit.pruning.base import PruneContext, select_layers
from audit.pruning.magnitude import MagnitudePruner
from audit.pruning.specs import MAGNITUDE, MagnitudeParams


@pytest.fixture()
def model(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()


def prune(model: torch.nn.Module, sparsity: float, scope: str = "layer", **sel: object):
    pruner = MagnitudePruner(MAGNITUDE, MagnitudeParams(scope=scope))
    ctx = PruneContext(sparsity=sparsity, seed=0, layers=LayerSelection(**sel))
    return pruner.prune(model, ctx)


def test_layerwise_hits_the_target_in_every_layer_counted_on_tensors(model: torch.nn.Module) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = prune(model, 0.6)
    layers = select_layers(model, LayerSelection())
    assert len(layers) == 2 * 6  # q, k, v, attn-out, ffn-in, ffn-out per block
    assert {r.name for r in rec.layers} == {n for n, _ in layers}
    for r, (_, m) in zip(rec.layers, layers, strict=True):
        zeros = int((m.weight == 0).sum())
        assert r.nonzero == m.weight.numel() - zeros
        assert abs(r.achieved_sparsity - 0.6) <= 1.0 / m.weight.numel()
        assert r.target_sparsity == 0.6
    assert abs(rec.achieved_sparsity - 0.6) < 1e-3
    # the smallest weights went: every survivor is at least as large as every pruned weight
    _, m = layers[0]
    orig = before[layers[0][0] + ".weight"].abs()
    kept = orig[m.weight != 0]
    gone = orig[m.weight == 0]
    assert kept.min() >= gone.max()
    # embeddings, LayerNorms and the classifier head are untouched
    for name, p in model.named_parameters():
        if "embeddings" in name or "LayerNorm" in name or name.startswith("classifier") or "pooler" in name:
            assert torch.equal(p, before[name]), name
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert rec.params_total == total and rec.params_nonzero == nonzero
    assert rec.prunable_total == sum(m.weight.numel() for _, m in layers)
    # no pruning hooks or weight_orig left behind
    assert not any(n.endswith("weight_orig") for n, _ in model.named_parameters())


def test_global_scope_shares_one_threshold(model: torch.nn.Module) -> None:
    rec = prune(model, 0.7, scope="global")
    assert abs(rec.achieved_sparsity - 0.7) < 1e-4
    per_layer = [r.achieved_sparsity for r in rec.layers]
    assert max(per_layer) - min(per_layer) > 0.01  # layers differ under one global threshold


def test_overrides_and_excludes(model: torch.nn.Module) -> None:
    rec = prune(model, 0.5, exclude=[r"attention\.self\.query"], overrides={r"layer\.1\.output\.dense": 0.9})
    names = {r.name: r for r in rec.layers}
    assert not any("query" in n for n in names)
    ffn_out = names["bert.encoder.layer.1.output.dense"]
    assert ffn_out.target_sparsity == 0.9 and abs(ffn_out.achieved_sparsity - 0.9) < 0.01
    q = dict(model.named_modules())["bert.encoder.layer.0.attention.self.query"]
    assert int((q.weight == 0).sum()) == 0


def test_same_seed_same_mask_and_record(model: torch.nn.Module) -> None:
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra, rb = prune(a, 0.5), prune(b, 0.5)
    assert ra.mask_fingerprint == rb.mask_fingerprint
    assert ra.model_dump(exclude={"wall_time_s"}) == rb.model_dump(exclude={"wall_time_s"})
    rc = prune(copy.deepcopy(model), 0.6)
    assert rc.mask_fingerprint != ra.mask_fingerprint
