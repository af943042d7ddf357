"""Unstructured and N:M methods on the tiny model: targets, patterns, criteria, seeds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pruning_helpers import calibration, ctx, masks, pruner, run
from transformers import AutoModelForSequenceClassification

from audit.config import LayerSelection
from audit.pruning.base import row_keep_mask, select_layers
from audit.pruning.calibration import Hessian, SquaredNorm, sequential_calibrate, tokens_of
from audit.pruning.gradual import cubic_schedule
from audit.pruning.sparsegpt import sparsegpt_prune
from audit.pruning.wanda import wanda_keep_mask


@pytest.fixture(scope="module")
def dense(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()


@pytest.fixture()
def model(dense: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(dense)


@pytest.fixture(scope="module")
def calib(tiny_model_dir: Path, tiny_data_dir: Path):
    return calibration(tiny_model_dir, tiny_data_dir)


METHODS = [
    ("magnitude", {}),
    ("wanda", {}),
    ("sparsegpt", {"blocksize": 16}),
    ("gradient", {"criterion": "taylor"}),
    ("gradient", {"criterion": "snip", "scope": "global"}),
    ("gradual", {"steps": 2, "finetune_steps": 2}),
]


@pytest.mark.parametrize(("name", "params"), METHODS, ids=lambda v: str(v))
def test_each_method_hits_its_target_counted_on_the_real_tensors(model, calib, name, params) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = run(model, name, 0.7, calib, **params)
    layers = dict(select_layers(model, LayerSelection()))
    assert {r.name for r in rec.layers} == set(layers)
    for r in rec.layers:
        w = layers[r.name].weight
        assert r.nonzero == int(torch.count_nonzero(w)) and r.total == w.numel()
        if params.get("scope") != "global":
            assert abs(r.achieved_sparsity - 0.7) <= 0.5 / w.shape[1] + 1e-9, r.name
    assert abs(rec.achieved_sparsity - 0.7) < 0.01
    assert rec.prunable_nonzero == sum(int(torch.count_nonzero(m.weight)) for m in layers.values())
    assert rec.params_nonzero == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    if name != "gradual":  # only recovery fine-tuning may touch what is not pruned
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "embeddings" in n or n.startswith(("classifier", "bert.pooler")):
                assert torch.equal(p, before[n]), n
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert rec.calibration is not None and rec.calibration.n == 64 if name != "magnitude" else rec.calibration is None


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("nm", {"n": 2, "m": 4}),
        ("nm", {"n": 4, "m": 8}),
        ("wanda", {"n": 2, "m": 4}),
        ("sparsegpt", {"n": 2, "m": 4, "blocksize": 16}),
    ],
    ids=lambda v: str(v),
)
def test_nm_pattern_holds_in_every_group(model, calib, name, params) -> None:
    n, m = params["n"], params["m"]
    rec = run(model, name, 1 - n / m, calib, **params)
    for lname, mod in select_layers(model, LayerSelection()):
        w = mod.weight.detach()
        per_group = (w.reshape(w.shape[0], -1, m) != 0).sum(-1)
        assert int(per_group.max()) <= n, lname
        # exactly n kept per group, up to weights that were (or became) zero by chance
        assert (per_group == n).float().mean() > 0.99, lname
    assert rec.achieved_sparsity == pytest.approx(1 - n / m, abs=1e-3)


def test_nm_keeps_the_largest_weights_of_each_group(model, dense) -> None:
    run(model, "nm", 0.5, n=2, m=4)
    name, mod = select_layers(model, LayerSelection())[0]
    orig = dict(dense.named_modules())[name].weight.detach().abs().reshape(-1, 4)
    kept = (mod.weight.detach() != 0).reshape(-1, 4)
    # every kept weight is at least as large as every pruned weight of its group
    smallest_kept = torch.where(kept, orig, torch.inf).min(1).values
    largest_gone = torch.where(~kept, orig, -torch.inf).max(1).values
    assert bool((smallest_kept >= largest_gone).all())


def _block_inputs(model: torch.nn.Module, module_name: str, calib) -> torch.Tensor:
    """The calibration inputs of one Linear layer (padding dropped), from a plain forward pass."""
    module = dict(model.named_modules())[module_name]
    rows = []
    state = {}
    h = module.register_forward_hook(lambda _m, inp, _o: rows.append(tokens_of(inp[0].detach(), state["mask"])))
    try:
        with torch.no_grad():
            for b in calib.batches:
                state["mask"] = b["attention_mask"].bool()
                model(**b)
    finally:
        h.remove()
    return torch.cat(rows).double()


def test_wanda_scores_use_the_activations(model, dense, calib) -> None:
    name = "bert.encoder.layer.0.attention.self.query"
    X = _block_inputs(dense, name, calib)
    norms = X.pow(2).sum(0).sqrt()
    assert norms.max() / norms.min() > 1.5  # activations are far from uniform
    w = dict(dense.named_modules())[name].weight.detach()
    expected = row_keep_mask(w.abs().double() * norms, 0.5)
    run(model, "wanda", 0.5, calib)
    got = dict(model.named_modules())[name].weight != 0
    assert torch.equal(got, expected)
    magnitude_rows = row_keep_mask(w.abs(), 0.5)
    assert (got != magnitude_rows).float().mean() > 0.05  # activations changed the choice
    # with uniform activations Wanda is magnitude per row
    assert torch.equal(wanda_keep_mask(w, torch.ones(w.shape[1]), 0.5), magnitude_rows)


def test_blocks_are_calibrated_on_the_outputs_of_already_pruned_blocks(model, dense, calib) -> None:
    seen: dict[str, torch.Tensor] = {}

    class Keep:
        def __init__(self) -> None:
            self.rows: list[torch.Tensor] = []

        def add(self, x: torch.Tensor) -> None:
            self.rows.append(x.clone())

    def finish(name, module, stat) -> None:
        seen[name] = torch.cat(stat.rows).double()
        with torch.no_grad():
            module.weight.mul_(row_keep_mask(module.weight.abs(), 0.8))

    layers = select_layers(model, LayerSelection())
    sequential_calibrate(model, layers, calib, make_stat=lambda n, m: Keep(), finish=finish)
    name = "bert.encoder.layer.1.attention.self.query"
    pruned_inputs = _block_inputs(model, name, calib)  # block 1's inputs in the finished model
    dense_inputs = _block_inputs(dense, name, calib)
    assert torch.allclose(seen[name], pruned_inputs, atol=1e-5)
    assert not torch.allclose(seen[name], dense_inputs, atol=1e-2)
    # block 0 saw the dense embeddings
    first = "bert.encoder.layer.0.attention.self.query"
    assert torch.allclose(seen[first], _block_inputs(dense, first, calib), atol=1e-6)


def _objective(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """||W X - Ŵ X||² up to the constant 2/N, as (W - Ŵ) H (W - Ŵ)ᵀ."""
    D = (W - W_hat).double()
    return float(torch.einsum("ri,ij,rj->", D, H, D))


def _exact_ls(W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Optimal reconstruction of each row on its kept inputs: ŵ_S = H_SS⁻¹ H_S: w."""
    out = torch.zeros_like(W, dtype=torch.float64)
    Hd = H + 1e-8 * torch.eye(H.shape[0], dtype=H.dtype)
    for r in range(W.shape[0]):
        S = keep[r]
        out[r, S] = torch.linalg.solve(Hd[S][:, S], Hd[S] @ W[r].double())
    return out


@pytest.mark.parametrize("layer", ["bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense"])
@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_beats_magnitude_on_the_layerwise_objective(dense, calib, layer, pattern) -> None:
    X = _block_inputs(dense, layer, calib)
    stat = Hessian(X.shape[1], X.device)
    for chunk in X.split(100):
        stat.add(chunk)
    H = stat.H
    assert torch.allclose(H, 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)
    W = dict(dense.named_modules())[layer].weight.detach()
    n, m = pattern or (None, None)
    W_sgpt, _ = sparsegpt_prune(W, H, 0.5, n=n, m=m, blocksize=16)
    keep = W_sgpt != 0
    assert abs(1 - keep.float().mean().item() - 0.5) < 1e-3
    if pattern:
        from audit.pruning.base import nm_keep_mask

        mag_keep = nm_keep_mask(W.abs(), 2, 4)
    else:
        k = int(round(0.5 * W.numel()))
        mag_keep = torch.ones(W.numel(), dtype=torch.bool)
        mag_keep[torch.topk(W.abs().flatten(), k, largest=False).indices] = False
        mag_keep = mag_keep.reshape(W.shape)
    err_sgpt = _objective(W, W_sgpt, H)
    err_mag = _objective(W, W * mag_keep, H)
    err_wanda = _objective(W, W * wanda_keep_mask(W, X.pow(2).sum(0).sqrt(), 0.5, n, m), H)
    assert err_sgpt < 0.8 * err_mag, (err_sgpt, err_mag)
    assert err_sgpt < err_wanda
    # no reconstruction on SparseGPT's mask can beat the exact least-squares one
    assert _objective(W, _exact_ls(W, H, keep), H) <= err_sgpt * (1 + 1e-9)


def test_sparsegpt_updates_are_exact_when_pruned_weights_precede_kept_ones(dense, calib) -> None:
    """Sequential OBS (Cholesky rows of H⁻¹) gives the exact masked least-squares solution
    when, in every row, all pruned columns come before all kept ones: nothing kept is
    frozen before a later column is pruned."""
    layer = "bert.encoder.layer.1.output.dense"
    X = _block_inputs(dense, layer, calib)
    H = 2 * X.T @ X / X.shape[0]
    W = dict(dense.named_modules())[layer].weight.detach().double().clone()
    cols = W.shape[1]
    # The adaptive criterion now picks the first half of every row: those weights are scaled
    # down, and the second half is pushed away from zero (a trained tiny model can hold a weight
    # near zero anywhere, which would then be picked instead on some CPUs' arithmetic).
    half = W[:, cols // 2 :]
    W[:, cols // 2 :] = half + torch.where(half >= 0, 1.0, -1.0).double() * W.abs().mean()
    W[:, : cols // 2] *= 1e-4
    percdamp = 0.01
    W_sgpt, _ = sparsegpt_prune(W, H, 0.5, blocksize=cols, percdamp=percdamp, dtype=torch.float64)
    keep = W_sgpt != 0
    assert bool(keep[:, cols // 2 :].all()) and not bool(keep[:, : cols // 2].any())
    Hd = H + percdamp * H.diagonal().mean() * torch.eye(cols, dtype=H.dtype)
    assert torch.allclose(W_sgpt, _exact_ls(W, Hd, keep), atol=1e-7)


def test_sparsegpt_lazy_block_updates_equal_column_by_column_updates(dense, calib) -> None:
    """With N:M the mask does not depend on the block partition, so any blocksize must
    give the same weights: the lazy batched updates are exact, not an approximation."""
    layer = "bert.encoder.layer.1.output.dense"
    X = _block_inputs(dense, layer, calib)
    H = 2 * X.T @ X / X.shape[0]
    W = dict(dense.named_modules())[layer].weight.detach()
    one_block, _ = sparsegpt_prune(W, H, 0.5, n=2, m=4, blocksize=W.shape[1], dtype=torch.float64)
    for bs in (4, 16):
        blocks, _ = sparsegpt_prune(W, H, 0.5, n=2, m=4, blocksize=bs, dtype=torch.float64)
        assert torch.equal(blocks != 0, one_block != 0)
        assert torch.allclose(blocks, one_block, atol=1e-5)


def test_sparsegpt_at_zero_sparsity_changes_nothing(dense, calib) -> None:
    layer = "bert.encoder.layer.0.output.dense"
    X = _block_inputs(dense, layer, calib)
    W = dict(dense.named_modules())[layer].weight.detach()
    W_new, loss = sparsegpt_prune(W, 2 * X.T @ X / X.shape[0], 0.0, blocksize=16)
    assert torch.allclose(W_new, W, atol=1e-6) and loss == 0.0


def test_gradient_importance_is_not_magnitude(model, dense, calib) -> None:
    run(model, "gradient", 0.5, calib)
    mag = copy.deepcopy(dense)
    run(mag, "magnitude", 0.5)
    a, b = masks(model), masks(mag)
    differ = sum(int((a[k] != b[k]).sum()) for k in a) / sum(v.numel() for v in a.values())
    assert differ > 0.05


def test_gradual_follows_the_cubic_schedule() -> None:
    s = cubic_schedule(0.0, 0.8, 4)
    assert s == pytest.approx([0.8 * (1 - (1 - t / 4) ** 3) for t in (1, 2, 3, 4)])
    assert s[-1] == 0.8 and all(x < y for x, y in zip(s, s[1:], strict=False))
    assert cubic_schedule(0.2, 0.8, 2) == pytest.approx([0.2, 0.8 - 0.6 / 8, 0.8])


def test_gradual_recovery_finetuning_changes_surviving_weights(model, dense, calib) -> None:
    rec = run(model, "gradual", 0.5, calib, steps=2, finetune_steps=3, learning_rate=1e-3)
    assert abs(rec.achieved_sparsity - 0.5) < 1e-3
    name, mod = select_layers(model, LayerSelection())[0]
    orig = dict(dense.named_modules())[name].weight
    kept = mod.weight != 0
    assert not torch.allclose(mod.weight[kept], orig[kept])  # fine-tuned, not only masked
    assert any("fine-tuning steps" in n for n in rec.notes)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("wanda", {}),
        ("sparsegpt", {"blocksize": 16}),
        ("gradient", {}),
        ("gradual", {"steps": 2, "finetune_steps": 3, "learning_rate": 1e-3}),
    ],
    ids=lambda v: str(v),
)
def test_same_seed_same_mask_other_seed_other_calibration(dense, tiny_model_dir, tiny_data_dir, name, params) -> None:
    c0 = calibration(tiny_model_dir, tiny_data_dir, point_seed=0)
    c0b = calibration(tiny_model_dir, tiny_data_dir, point_seed=0)
    c1 = calibration(tiny_model_dir, tiny_data_dir, point_seed=1)
    assert c0.record.fingerprint == c0b.record.fingerprint != c1.record.fingerprint
    recs = []
    for c, seed in ((c0, 0), (c0b, 0), (c1, 1)):
        m = copy.deepcopy(dense)
        p = pruner(name, **params)
        recs.append(p.prune(m, ctx(0.5, c, seed=seed)))
    assert recs[0].mask_fingerprint == recs[1].mask_fingerprint
    assert recs[0].mask_fingerprint != recs[2].mask_fingerprint
    assert recs[2].calibration.point_seed == 1 and recs[0].calibration.point_seed == 0


@pytest.mark.parametrize(("name", "params"), [("magnitude", {}), ("nm", {})], ids=lambda v: str(v))
def test_data_free_methods_are_deterministic_across_seeds(dense, name, params) -> None:
    fps = set()
    for seed in (0, 1):
        m = copy.deepcopy(dense)
        fps.add(pruner(name, **params).prune(m, ctx(0.5, seed=seed)).mask_fingerprint)
    assert len(fps) == 1


def test_wanda_norms_match_a_direct_computation(dense, calib) -> None:
    layer = "bert.encoder.layer.0.intermediate.dense"
    X = _block_inputs(dense, layer, calib)
    stat = SquaredNorm(X.shape[1], X.device)
    stat.add(X[:50])
    stat.add(X[50:])
    assert torch.allclose(stat.norm(), X.norm(dim=0), rtol=1e-9)
    assert stat.tokens == sum(int(b["attention_mask"].sum()) for b in calib.batches) == calib.record.tokens
