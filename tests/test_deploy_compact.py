"""The compact CPU formats ``bitmap`` and ``nm24``: numerics, the portable path, bytes, save/load, choice."""

from __future__ import annotations

import copy
import ctypes
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.config import DeployConfig
from audit.deploy import kernel as kmod
from audit.deploy.choose import DENSE, LayerTimer, TimingCache, build_module, quantize_density, synthetic_2_4
from audit.deploy.compact import PAD, BitmapLinear, NM24Linear
from audit.deploy.convert import Converter
from audit.deploy.format_classes import implementation, stored_bytes
from audit.deploy.modules import format_of


def _sparse(shape: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    w[1] = 0.0  # an empty row
    return w


def _two_four(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    w = synthetic_2_4(shape, seed=seed, dtype=torch.float32)
    w[1] = 0.0  # an empty row
    w[2, :4] = 0.0  # a group with no non-zero
    w[3, 4:8] = torch.tensor([1.5, 0.0, 0.0, 0.0])  # a group with a single non-zero
    return w


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max())


@pytest.mark.parametrize("shape", [(37, 45), (64, 130), (20, 16), (9, 3)])  # in_features not / 16, / 64
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_bitmap_equals_masked_dense(shape: tuple[int, int], density: float) -> None:
    w, b = _sparse(shape, density), torch.randn(shape[0])
    mod = build_module("bitmap", w, b)
    assert isinstance(mod, BitmapLinear) and format_of(mod) == "bitmap"
    assert torch.equal(mod.dense_weight(), w)
    for n in (1, 5, 40):
        x = torch.randn(n, shape[1])
        ref = x.double() @ w.double().T + b.double()
        assert _rel_err(mod(x), ref) < 1e-5


@pytest.mark.parametrize("shape", [(24, 20), (33, 148), (64, 64)])  # in_features / 4, not all / 16
def test_nm24_equals_masked_dense(shape: tuple[int, int]) -> None:
    w, b = _two_four(shape), torch.randn(shape[0])
    mod = build_module("nm24", w, b)
    assert isinstance(mod, NM24Linear) and format_of(mod) == "nm24"
    assert torch.equal(mod.dense_weight(), w)
    assert mod.nnz == int(torch.count_nonzero(w))  # the padding slots are explicit zeros, not counted
    for n in (1, 7):
        x = torch.randn(n, shape[1])
        ref = x.double() @ w.double().T + b.double()
        assert _rel_err(mod(x), ref) < 1e-5


@pytest.mark.parametrize("fmt", ["bitmap", "nm24"])
def test_scalar_path_gives_the_vector_paths_result_exactly(fmt: str) -> None:
    w = _two_four((70, 100)) if fmt == "nm24" else _sparse((70, 100), 0.4)
    mod = build_module(fmt, w, torch.randn(70))
    x = torch.randn(6, 100)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        vector = mod(x)
        mod.scalar = True
        scalar = mod(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(vector, scalar)  # the same summation order, bit for bit


def test_a_build_without_avx512_computes_the_same(tmp_path: Path) -> None:
    """The portable build (``-mno-avx512f``, as on a CI machine without AVX-512) equals this build."""
    cxx = kmod._compiler()
    assert cxx is not None
    flags = [*kmod.BASE_FLAGS, *kmod.ARCH_FLAGS, "-mno-avx512f", *kmod.OMP_FLAGS]
    ok, err = kmod._compile(cxx, flags, kmod.SOURCE, tmp_path / "portable.so")
    assert ok, err
    portable = ctypes.CDLL(str(tmp_path / "portable.so"))
    portable.pa_compact_mm.argtypes = kmod.load_kernel().lib.pa_compact_mm.argtypes  # type: ignore[union-attr]
    assert portable.pa_compact_avx512() == 0
    w = _sparse((50, 90), 0.5)
    mod = build_module("bitmap", w, None)
    x = torch.randn(3, 90)
    y = torch.empty(3, 50)
    portable.pa_compact_mm(
        mod.rowptr.data_ptr(), mod.masks.data_ptr(), mod.values.data_ptr(), None,
        x.data_ptr(), y.data_ptr(), 3, 90, 50, 1, 0,
    )  # fmt: skip
    assert torch.equal(y, mod(x))


@pytest.mark.parametrize("fmt", ["bitmap", "nm24"])
def test_every_token_of_a_batch_gets_the_single_token_result(fmt: str) -> None:
    w = _two_four((40, 64)) if fmt == "nm24" else _sparse((40, 64), 0.5)
    mod = build_module(fmt, w, torch.randn(40))
    x = torch.randn(9, 64)
    rows = torch.cat([mod(x[i : i + 1]) for i in range(9)])
    assert torch.equal(mod(x), rows)  # deterministic: the order does not depend on the batch


def test_nm24_refuses_a_weight_that_is_not_2_4() -> None:
    w = _two_four((8, 16))
    w[5, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"nm24 needs 2:4 sparsity .* found 3 in row 5, inputs 8-11"):
        NM24Linear.from_linear(w, None)
    with pytest.raises(ValueError, match="nm24 needs in_features divisible by 4"):
        NM24Linear.from_linear(torch.zeros(4, 10), None)
    cands, skipped = implementation("nm24").applies_to(w, 0.5, DeployConfig())
    assert cands == [] and skipped == ["nm24: weight is not 2:4 sparse"]


def test_stored_bytes_follow_the_formula() -> None:
    out_f, in_f = 37, 45
    w = _sparse((out_f, in_f), 0.5)
    nnz = int(torch.count_nonzero(w))
    masks = 2 * out_f * math.ceil(in_f / 16)
    bitmap = build_module("bitmap", w, torch.randn(out_f))  # the bias is not counted
    assert stored_bytes(bitmap) == 4 * (nnz + PAD) + masks + 4 * (out_f + 1)
    w24 = _two_four((out_f, 44))
    nm24 = build_module("nm24", w24, None)
    assert stored_bytes(nm24) == 4 * (out_f * 44 // 2 + PAD) + 2 * out_f * math.ceil(44 / 16)


def test_copies_own_their_arrays_and_still_run() -> None:
    w = _sparse((30, 40), 0.5)
    mod = build_module("bitmap", w, None)
    x = torch.randn(2, 40)
    y = mod(x)  # binds the data pointers
    twin = copy.deepcopy(mod)
    assert twin.values.data_ptr() != mod.values.data_ptr()
    del mod
    assert torch.equal(twin(x), y)


def _inject(conv: Converter, shape: tuple[int, int], density: float, seconds: dict[str, float]) -> None:
    timer: LayerTimer = conv.timer("cpu")
    for fmt, s in seconds.items():
        conv.cache.data[timer.key(fmt, shape, density, True, 1)] = s


def test_the_choice_keeps_dense_unless_a_compact_format_is_faster(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[0].weight.copy_(_sparse((48, 64), 0.5))
        model[1].weight.copy_(_sparse((64, 48), 0.5, seed=1))
        model[2].weight.copy_(_two_four((64, 64)))
    conv = Converter(
        DeployConfig(choose_tokens=[1], formats=["kernel", "bitmap", "nm24"]), TimingCache(tmp_path / "t.json")
    )
    d = [quantize_density(int(torch.count_nonzero(m.weight)) / m.weight.numel()) for m in model]
    _inject(conv, (48, 64), d[0], {DENSE: 1.0, "kernel": 1.3, "bitmap": 1.2})  # both slower than dense
    _inject(conv, (64, 48), d[1], {DENSE: 1.0, "kernel": 0.8, "bitmap": 0.5})
    _inject(conv, (64, 64), d[2], {DENSE: 1.0, "kernel": 0.8, "bitmap": 0.6})
    _inject(conv, (64, 64), 0.5, {"nm24": 0.55})
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    ref = model(x).double()
    result = conv.convert(model)
    assert result.timings_measured == 0  # decided from the injected timings alone
    assert [layer.format for layer in result.layers] == [DENSE, "bitmap", "nm24"]
    assert isinstance(model[0], nn.Linear) and result.layers[0].kept_dense == "no_speedup"
    assert _rel_err(model(x), ref) < 1e-5  # relative to the largest output (three layers deep)


@pytest.mark.parametrize("fmt", ["bitmap", "nm24"])
def test_save_and_load_gives_identical_outputs(tiny_model_dir: Path, tmp_path: Path, fmt: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.deploy.io import load_deployed, read_manifest, save_deployed

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    layers = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in f".{n}."]
    with torch.no_grad():
        for m in layers:
            m.weight.copy_(_two_four(tuple(m.weight.shape)) if fmt == "nm24" else _sparse(tuple(m.weight.shape), 0.5))
    conv = Converter(DeployConfig(formats=[fmt], force_format=fmt), TimingCache(None))  # opt-in format
    conv.convert(model)
    assert sum(format_of(m) == fmt for m in model.modules()) == len(layers)
    path = save_deployed(model, tmp_path / "v", tokenizer=tok)
    assert read_manifest(path)["layers"]  # the manifest names the layers and their formats
    back = load_deployed(path)
    assert sum(format_of(m) == fmt for m in back.modules()) == len(layers)
    batch = dict(tok(["a short text", "another, longer text to batch"], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        assert torch.equal(back(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("fmt", [DENSE, "kernel", "bitmap"])
def test_a_decode_timing_streams_distinct_copies_of_the_weights_from_memory(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.deploy import choose

    monkeypatch.setattr(choose, "stream_bytes", lambda: 1 << 20)  # 1 MiB: 64x64 fp32 (16 KiB) needs 64 copies
    timer = LayerTimer(TimingCache(tmp_path / "t.json"), threads=1)
    decode = timer.prepare(fmt, (64, 64), 0.5, True, 1)
    assert len(decode.modules) == 64 == timer.copies((64, 64), 1)
    storage = {t.data_ptr() for m in decode.modules for t in m.state_dict().values() if t.numel() > 64}
    assert len(storage) >= 64  # every copy has weights of its own: none is read from cache by the next call
    first = decode()
    assert all(torch.equal(decode(), first) for _ in range(63))  # the same layer, whichever copy computes it
    assert len(timer.prepare(fmt, (64, 64), 0.5, True, choose.STREAM_TOKENS + 1).modules) == 1  # prefill: in cache
