"""Deployment of whole (tiny, trained) models: equivalence for every format and pruning kind, save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from audit.config import DeployConfig, LayerSelection
from audit.deploy.choose import TimingCache
from audit.deploy.convert import Converter
from audit.deploy.io import MANIFEST, load_deployed, read_manifest, save_deployed
from audit.deploy.modules import DeployedLinear, KernelLinear, format_of
from audit.deploy.pipeline import DeployContext, deploy_variant
from audit.deploy.verify import compare, probe_logits, tolerance_for
from audit.errors import ModelError
from audit.pruning.base import PruneContext
from audit.registry import PRUNERS

TEXTS = [
    "the food was great and the staff were friendly",
    "terrible service, never again",
    "an average place with decent prices",
    "i loved the atmosphere but the wait was long",
    "worst purchase i have made this year",
    "absolutely wonderful experience",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests check numerics and records, never speed: one thread keeps them fast on a busy
    machine. The kernel's multi-threaded paths are covered in test_deploy_kernel.py."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[nn.Module, object, list[dict[str, torch.Tensor]]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    probe = [
        dict(tok(TEXTS[:3], padding=True, return_tensors="pt")),
        dict(tok(TEXTS[3:], padding=True, return_tensors="pt")),
    ]
    return model, tok, probe


def magnitude(model: nn.Module, sparsity: float):
    spec = PRUNERS.get("magnitude")
    pruner = spec.load()(spec, spec.params.model_validate({}))
    return pruner.prune(model, PruneContext(sparsity=sparsity, seed=0, layers=LayerSelection()))


def two_four(model: nn.Module) -> None:
    """N:M 2:4 by magnitude on every encoder Linear (keeps the 2 largest of each 4 inputs)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and ".encoder.layer." in f".{name}":
            w = m.weight.data
            groups = w.reshape(w.shape[0], -1, 4)
            keep = groups.abs().argsort(dim=-1)[..., 2:]
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
            m.weight.data = (groups * mask).reshape_as(w)


def structured(model: nn.Module, heads: dict[int, list[int]], keep_neurons: int) -> None:
    """Structured pruning as it ships: heads removed (the model adapter's own code), FFN neurons sliced out."""
    from audit.models.adapter import adapter_of

    adapter_of(model).remove_heads(model, heads)
    for layer in model.bert.encoder.layer:
        up, down = layer.intermediate.dense, layer.output.dense
        idx = up.weight.detach().norm(dim=1).argsort(descending=True)[:keep_neurons].sort().values
        new_up = nn.Linear(up.in_features, keep_neurons)
        new_down = nn.Linear(keep_neurons, down.out_features)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[idx])
            new_up.bias.copy_(up.bias[idx])
            new_down.weight.copy_(down.weight[:, idx])
            new_down.bias.copy_(down.bias)
        layer.intermediate.dense, layer.output.dense = new_up, new_down


def converter(tmp_path: Path, **kw: object) -> Converter:
    opts = {"choose_tokens": [16], "timing_min_s": 0.001, "max_block_density": 1.0, **kw}
    return Converter(DeployConfig(**opts), TimingCache(tmp_path / "t.json"))  # type: ignore[arg-type]


def context(tmp_path: Path, dense: nn.Module, probe: list, measure_speed: bool = True, **kw: object) -> DeployContext:
    return DeployContext(
        converter=converter(tmp_path, **kw),
        probe=probe,
        dense=dense,
        measure_speed=measure_speed,
        speed_min_time=0.001,
        speed_rounds=3,
        speed_batch_size=2,
        speed_seq_len=16,
    )


@pytest.mark.parametrize("fmt", ["kernel", "csr", "bsr4", "bsr8"])
def test_unstructured_variant_deploys_equivalently_in_every_format(tiny, tmp_path: Path, fmt: str) -> None:
    dense, _, probe = tiny
    model = copy.deepcopy(dense)
    record = magnitude(model, 0.9)
    deployed = deploy_variant(model, record, context(tmp_path, dense, probe, force_format=fmt))
    eq = deployed.record.equivalence
    assert eq is not None and eq.passed and eq.n == len(TEXTS) and eq.agreement == 1.0
    assert eq.max_abs_logit_diff <= eq.tolerance < 1e-4  # scaled to the logits, far below the old 1e-4
    assert (eq.tolerance_basis or "").startswith("scaled:")
    n_pruned = len(record.layers)
    assert deployed.record.formats[fmt] == n_pruned  # every pruned layer, and only those
    assert deployed.record.formats["dense"] == 2  # pooler and classifier were not pruned
    for layer in record.layers:
        assert layer.format == fmt and layer.format_reason == f"forced by deploy.force_format={fmt}"
        assert isinstance(model.get_submodule(layer.name), DeployedLinear)
    assert deployed.record.linear_bytes_deployed < deployed.record.linear_bytes_dense
    assert deployed.record.weight_bytes_deployed < deployed.record.weight_bytes_dense
    sp = deployed.record.speed
    assert sp is not None and sp.speedup_b1 and sp.speedup_b1 > 0 and sp.seq_len == 16
    ids = {m.id for m in deployed.measurements}
    assert {
        "deployment/probe/max_abs_logit_diff",
        "deployment/seq16/speedup_b1",
        "deployment/weights/size_ratio",
    } <= ids


def test_two_four_variant_on_cpu(tiny, tmp_path: Path) -> None:
    """N:M 2:4: the kernel runs it equivalently; 2:4 hardware kernels are CUDA-only and say so."""
    dense, _, probe = tiny
    model = copy.deepcopy(dense)
    two_four(model)
    out = deploy_variant(model, None, context(tmp_path, dense, probe, force_format="kernel"))
    assert out.passed and out.record.formats["kernel"] == 12
    layer = next(m for m in model.modules() if isinstance(m, KernelLinear))
    assert layer.nnz == layer.in_features * layer.out_features // 2
    model2 = copy.deepcopy(dense)
    two_four(model2)
    out2 = deploy_variant(model2, None, context(tmp_path, dense, probe, force_format="semi24"))
    assert out2.passed and out2.record.formats == {"dense": 14}  # nothing pretends to run 2:4 on CPU
    assert any("semi24" in n and "CUDA" in n for n in out2.record.notes)
    assert all(
        "forced format semi24 does not apply (semi24: PyTorch's 2:4 semi-structured kernels need a CUDA device" in r
        for r in (layer.reason for layer in out2.conversion.layers[:12])
    )


def test_structured_variant_stays_dense_and_round_trips(tiny, tmp_path: Path) -> None:
    dense, tok, probe = tiny
    model = copy.deepcopy(dense)
    structured(model, {0: [0, 1], 1: [2]}, keep_neurons=32)
    deployed = deploy_variant(model, None, context(tmp_path, dense, probe))
    assert deployed.passed and deployed.record.equivalence.max_abs_logit_diff == 0.0
    assert deployed.record.formats == {"dense": 14}
    assert all(layer.reason == "no zeros to skip: stays dense" for layer in deployed.conversion.layers)
    assert deployed.record.weight_bytes_deployed < deployed.record.weight_bytes_dense
    saved = save_deployed(model, tmp_path / "structured", tokenizer=tok, record=deployed.record)
    back = load_deployed(saved)
    assert back.bert.encoder.layer[0].attention.self.query.out_features == 16  # 2 of 4 heads left
    assert back.bert.encoder.layer[1].intermediate.dense.out_features == 32
    np.testing.assert_array_equal(probe_logits(back, probe), probe_logits(model, probe))


@pytest.mark.parametrize("fmt", ["kernel", "csr", "bsr4"])
def test_save_and_load_gives_the_same_model(tiny, tmp_path: Path, fmt: str) -> None:
    dense, tok, probe = tiny
    model = copy.deepcopy(dense)
    magnitude(model, 0.8)
    deployed = deploy_variant(model, None, context(tmp_path, dense, probe, force_format=fmt, measure_speed=False))
    path = save_deployed(model, tmp_path / "v", tokenizer=tok, record=deployed.record)
    assert {"config.json", "model.safetensors", MANIFEST, "tokenizer.json"} <= {p.name for p in path.iterdir()}
    manifest = read_manifest(path)
    assert manifest["deployment"]["formats"] == deployed.record.formats
    back = load_deployed(path)
    formats = {n: format_of(m) for n, m in back.named_modules() if isinstance(m, (nn.Linear, DeployedLinear))}
    assert formats == {n: format_of(m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, DeployedLinear))}
    assert sum(f == fmt for f in formats.values()) == 12
    np.testing.assert_array_equal(probe_logits(back, probe), probe_logits(model, probe))
    # saving again over an existing directory replaces it atomically
    save_deployed(back, path)
    assert load_deployed(path) is not None


def test_load_rejects_tampered_or_foreign_directories(tiny, tmp_path: Path) -> None:
    dense, _, probe = tiny
    with pytest.raises(ModelError, match="not a saved deployed variant"):
        load_deployed(tmp_path)
    model = copy.deepcopy(dense)
    magnitude(model, 0.9)
    deploy_variant(model, None, context(tmp_path, dense, probe, force_format="kernel", measure_speed=False))
    path = save_deployed(model, tmp_path / "v")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("classifier.bias")
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ModelError, match="missing \\['classifier.bias'\\]"):
        load_deployed(path)


def test_a_wrong_deployment_fails_equivalence(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dense, _, probe = tiny
    model = copy.deepcopy(dense)
    magnitude(model, 0.9)
    real = KernelLinear._run
    monkeypatch.setattr(KernelLinear, "_run", lambda self, x: real(self, x) * 1.01)  # a subtly wrong kernel
    out = deploy_variant(model, None, context(tmp_path, dense, probe, force_format="kernel"))
    eq = out.record.equivalence
    assert eq is not None and not eq.passed and eq.max_abs_logit_diff > eq.tolerance
    assert out.record.speed is None  # numbers of an unverified deployment are not measured
    assert "failed its equivalence check" in out.record.notes[-1]  # no int8_dynamic hint on a sparse kernel


def test_compare_tolerates_only_near_ties() -> None:
    ref = np.array([[1.0, 0.0], [0.5, 0.5 + 1e-5], [2.0, -1.0]])
    dep = ref + np.array([[1e-5, 0.0], [0.0, -2e-5], [0.0, 0.0]])  # the near-tie flips
    eq = compare(ref, dep, tolerance=1e-3)
    assert eq.passed and eq.agreement == pytest.approx(2 / 3) and eq.flipped_beyond_tolerance == 0
    bad = compare(ref, ref + np.array([[0, 0], [0, 0], [0, np.nan]]), tolerance=1e-3)
    assert not bad.passed and bad.nonfinite == 1
    far = compare(ref, ref + 0.01, tolerance=1e-3)
    assert not far.passed and far.max_abs_logit_diff == pytest.approx(0.01)


def test_a_perturbation_below_1e4_but_above_the_scaled_tolerance_fails(tiny, tmp_path: Path) -> None:
    """One stored weight moved so that the logits move by more than the scaled tolerance but
    less than the old fixed 1e-4: the check must fail (the fixed tolerance passed it)."""
    dense, _, probe = tiny
    model = copy.deepcopy(dense)
    magnitude(model, 0.9)
    reference = probe_logits(model, probe)
    converter(tmp_path, force_format="kernel").convert(model)
    tol, basis = tolerance_for(model, reference)
    assert tol < 1e-5 and "sqrt(K 64 x D 12)" in basis
    layer = model.get_submodule("bert.encoder.layer.1.output.dense")
    assert isinstance(layer, KernelLinear)
    values = layer.values  # the kernel reads these in place
    original = values[0].item()

    def shift(delta: float) -> float:
        values[0] = original + delta
        return float(np.abs(probe_logits(model, probe) - reference).max())

    target = (tol * 1e-4) ** 0.5  # geometric midpoint of (tolerance, 1e-4)
    d0 = shift(1e-2)
    moved = shift(1e-2 * target / d0)  # logits are linear in one weight at this scale
    assert tol < moved < 1e-4
    deployed = probe_logits(model, probe)
    assert not compare(reference, deployed, tolerance=tol).passed
    assert compare(reference, deployed, tolerance=1e-4).passed  # what the fixed tolerance let through
    values[0] = original
    assert compare(reference, probe_logits(model, probe), tolerance=tol).passed


def test_an_all_dense_variant_reports_one_and_counts_its_layers(tiny, tmp_path: Path) -> None:
    """30 % magnitude: every pruned layer is denser than max_density, so nothing runs sparse."""
    dense, _, probe = tiny
    model = copy.deepcopy(dense)
    magnitude(model, 0.3)
    out = deploy_variant(model, None, context(tmp_path, dense, probe, max_density=0.5))
    rec = out.record
    assert rec.formats == {"dense": 14} and rec.kept_dense == {"above_max_density": 12, "no_zeros": 2}
    assert rec.speed is not None and rec.speed.identical and rec.speed.speedup_b1 == 1.0
    by_id = {m.id: m for m in out.measurements}
    assert by_id["deployment/seq16/speedup_b1"].value == 1.0
    assert by_id["deployment/seq16/speedup_b2"].value == 1.0  # named after the configured batch size (2)
    assert by_id["deployment/layers/sparse_layers"].value == 0
    assert by_id["deployment/layers/dense_layers"].details["kept_dense"] == {"above_max_density": 12, "no_zeros": 2}
