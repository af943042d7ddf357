"""Deployed Linear formats, the per-layer decision (with injected timings) and the timing cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.config import DeployConfig
from audit.deploy.choose import (
    DENSE,
    LayerTimer,
    TimingCache,
    build_module,
    decide,
    quantize_density,
    synthetic_2_4,
    synthetic_weight,
)
from audit.deploy.convert import Converter
from audit.deploy.kernel import kernel_status
from audit.deploy.modules import KernelLinear, SemiStructuredLinear, TorchBSRLinear, TorchCSRLinear, format_of

FORMATS = ["kernel", "csr", "bsr4", "bsr8"]


def _weight(shape: tuple[int, int] = (48, 64), density: float = 0.15, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_equals_masked_dense_linear(fmt: str) -> None:
    w = _weight()
    b = torch.randn(48)
    x = torch.randn(3, 7, 64)  # (batch, seq, features) like a transformer's activations
    mod = build_module(fmt, w, b)
    assert format_of(mod) == fmt
    torch.testing.assert_close(mod(x), nn.functional.linear(x, w, b), atol=1e-5, rtol=1e-5)
    assert torch.equal(mod.dense_weight(), w)
    twin = copy.deepcopy(mod)  # variants are deep-copied; a copy must own its arrays and still run
    assert twin.values.data_ptr() != mod.values.data_ptr()
    torch.testing.assert_close(twin(x), mod(x), atol=0, rtol=0)
    nb = build_module(fmt, w, None)
    torch.testing.assert_close(nb(x), nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_input_gradient_matches_dense(fmt: str) -> None:
    w = _weight(seed=1)
    x1 = torch.randn(5, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    build_module(fmt, w, None)(x1).square().sum().backward()
    nn.functional.linear(x2, w).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)


def test_stored_bytes_are_what_each_format_stores() -> None:
    w = _weight((64, 96), 0.1)
    nnz = int(torch.count_nonzero(w))
    assert KernelLinear.from_linear(w, None).stored_bytes() == 6 * nnz + 4 * 65  # fp32 + uint16 + row pointers
    assert TorchCSRLinear.from_linear(w, None).stored_bytes() == 8 * nnz + 4 * 65  # fp32 + int32 (never int64)
    blocky = synthetic_weight((64, 96), 0.25, block=8)
    bsr = TorchBSRLinear.from_linear(blocky, None, block=8)
    nblocks = int(TorchBSRLinear.block_mask(blocky, 8).sum())
    assert nblocks == round(0.25 * 8 * 12)
    assert bsr.stored_bytes() == nblocks * (64 * 4 + 4) + 4 * 9
    assert bsr.format == "bsr8" and bsr.meta() == {"block": 8}


def test_synthetic_weights_have_the_requested_structure() -> None:
    w = synthetic_weight((32, 64), 0.1)
    assert int(torch.count_nonzero(w)) == round(0.1 * 32 * 64)
    nm = synthetic_2_4((16, 32), dtype=torch.float32)
    assert SemiStructuredLinear.is_2_4(nm) and int(torch.count_nonzero(nm)) == 16 * 16
    assert not SemiStructuredLinear.is_2_4(w)
    assert quantize_density(0.1049) == pytest.approx(0.10) and quantize_density(0.0001) == pytest.approx(0.01)


# -- the decision, from injected timings (no wall clock) ------------------------------------


def test_decide_picks_the_fastest_format_that_wins_everywhere() -> None:
    t = {
        DENSE: {128: 4.0, 1024: 30.0},
        "csr": {128: 2.8, 1024: 20.0},  # 1.43x / 1.5x
        "kernel": {128: 1.3, 1024: 10.0},  # 3.1x / 3.0x
        "bsr8": {128: 1.0, 1024: 40.0},  # fastest at 128 but slower than dense at 1024
    }
    d = decide(t, min_speedup=1.1)
    assert d.format == "kernel"
    assert d.speedup == pytest.approx(4.0 / 1.3)
    assert "fastest measured: kernel 3.08x at 128 tokens" in d.reason
    assert "csr" in d.reason and "bsr8" in d.reason


def test_decide_never_picks_a_format_slower_than_dense() -> None:
    t = {DENSE: {128: 1.0}, "csr": {128: 2.5}, "kernel": {128: 1.05}}
    d = decide(t, min_speedup=1.1)
    assert d.format == DENSE
    assert d.reason.startswith("kept dense: no sparse format is >= 1.1x faster")
    assert "best: kernel 0.95x at 128 tokens" in d.reason
    # a format within the noise margin is not chosen either
    assert decide({DENSE: {16: 1.0}, "kernel": {16: 0.95}}, min_speedup=1.1).format == DENSE
    assert decide({DENSE: {16: 1.0}, "kernel": {16: 0.95}}, min_speedup=1.0).format == "kernel"
    with pytest.raises(ValueError, match="dense timings"):
        decide({"csr": {16: 1.0}})


def _converter(tmp_path: Path, **opts: object) -> Converter:
    options = DeployConfig(choose_tokens=[16], timing_min_s=0.001, **opts)  # type: ignore[arg-type]
    return Converter(options, TimingCache(tmp_path / "timings.json"))


def _inject(conv: Converter, shape: tuple[int, int], density: float, seconds: dict[str, float]) -> None:
    timer: LayerTimer = conv.timer("cpu")
    for fmt, s in seconds.items():
        conv.cache.data[timer.key(fmt, shape, density, True, 16)] = s


def test_converter_uses_cached_timings_and_records_reasons(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[0].weight.copy_(_weight((48, 64), 0.10))
        model[2].weight.copy_(_weight((64, 48), 0.10, seed=3))
        model[3].weight.copy_(_weight((64, 64), 0.80))  # too dense to try
    x = torch.randn(5, 64)
    ref = model(x)
    conv = _converter(tmp_path)
    d0 = quantize_density(int(torch.count_nonzero(model[0].weight)) / (48 * 64))
    d2 = quantize_density(int(torch.count_nonzero(model[2].weight)) / (64 * 48))
    _inject(conv, (48, 64), d0, {DENSE: 1.0, "kernel": 0.3, "csr": 0.6})  # kernel wins
    _inject(conv, (64, 48), d2, {DENSE: 1.0, "kernel": 1.2, "csr": 0.98})  # nothing wins by 10 %
    result = conv.convert(model)
    assert result.timings_measured == 0 and result.timings_cached == 6  # decided from the cache alone
    by_name = {layer.name: layer for layer in result.layers}
    assert by_name["0"].format == "kernel" and isinstance(model[0], KernelLinear)
    assert by_name["0"].speedup == pytest.approx(1 / 0.3)
    assert by_name["2"].format == DENSE and isinstance(model[2], nn.Linear)
    assert by_name["2"].reason.startswith("kept dense: no sparse format is >= 1.1x")
    assert by_name["3"].format == DENSE and "above deploy.max_density" in by_name["3"].reason
    assert "bsr4: " in by_name["0"].reason  # why BSR was not tried on an unstructured mask
    assert result.formats() == {"dense": 2, "kernel": 1}
    assert by_name["0"].bytes_deployed < by_name["0"].bytes_dense == 48 * 64 * 4
    assert not any("semi24" in n for n in result.notes)  # not a 2:4 mask: 2:4 kernels are irrelevant here
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_layers_without_zeros_stay_dense_untimed(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    conv = _converter(tmp_path)
    result = conv.convert(model)
    assert [layer.format for layer in result.layers] == [DENSE, DENSE]
    assert all(layer.reason == "no zeros to skip: stays dense" for layer in result.layers)
    assert result.timings_measured == 0


def test_measured_timings_are_cached_on_disk(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight.copy_(_weight((32, 32), 0.1))
    conv = _converter(tmp_path, formats=("csr",))
    first = conv.convert(model)
    assert first.timings_measured == 2  # dense and csr, each the figure of interleaved rounds
    assert (tmp_path / "timings.json").is_file()
    model2 = nn.Sequential(nn.Linear(32, 32))
    with torch.no_grad():
        model2[0].weight.copy_(_weight((32, 32), 0.1, seed=9))
    again = Converter(conv.config, TimingCache(tmp_path / "timings.json")).convert(model2)
    assert again.timings_measured == 0 and again.timings_cached == 2
    assert again.layers[0].format == first.layers[0].format


def test_force_format_and_unavailable_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.deploy import kernel as kmod

    w = _weight((16, 32), 0.2)
    model = nn.Sequential(nn.Linear(32, 16))
    with torch.no_grad():
        model[0].weight.copy_(w)
    res = _converter(tmp_path, force_format="csr").convert(model)
    assert res.layers[0].format == "csr" and res.layers[0].reason == "forced by deploy.force_format=csr"
    monkeypatch.setenv("PRUNE_AUDIT_KERNEL", "off")
    kmod._reset_for_tests()
    try:
        model = nn.Sequential(nn.Linear(32, 16))
        with torch.no_grad():
            model[0].weight.copy_(w)
        res = _converter(tmp_path, force_format="kernel").convert(model)
        assert res.layers[0].format == DENSE
        assert "forced format kernel does not apply" in res.layers[0].reason
        assert "disabled by PRUNE_AUDIT_KERNEL" in res.layers[0].reason
        assert any("disabled by PRUNE_AUDIT_KERNEL" in n for n in res.notes)
    finally:
        monkeypatch.undo()
        kmod._reset_for_tests()
    # the switch is read again after a reset: with it unset, the status no longer says "disabled"
    monkeypatch.delenv("PRUNE_AUDIT_KERNEL", raising=False)
    try:
        assert "disabled by PRUNE_AUDIT_KERNEL" not in kernel_status().describe()
    finally:
        monkeypatch.undo()
        kmod._reset_for_tests()
