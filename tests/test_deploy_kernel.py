"""The compiled sparse kernel: build cache, numerics against torch, and the fallback path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audit.deploy import kernel as kmod
from audit.deploy.modules import KernelLinear, csr_arrays

needs_compiler = pytest.mark.skipif(
    kmod._compiler() is None, reason="no C++ compiler on this machine: the fallback test covers this case"
)


def _masked(shape: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return w * (torch.rand(shape, generator=g) < density)


@needs_compiler
def test_kernel_builds_once_and_is_cached_per_cpu() -> None:
    kmod._reset_for_tests()  # loaded under this test's cache root, not one an earlier test set
    lib = kmod.load_kernel()
    status = kmod.kernel_status()
    assert lib is not None and status.available, status.reason
    assert status.simd_width in (4, 8, 16) and status.openmp is True
    assert "-march=native" in status.flags
    build_dir = kmod._kernel_dir() / f"spmm-{status.key[:16]}"
    assert status.path is not None and Path(status.path).parent == build_dir
    meta = json.loads((build_dir / "build.json").read_text())
    assert meta["cpu"] == kmod.cpu_identity()
    mtime = (build_dir / kmod.LIB_NAME).stat().st_mtime_ns
    kmod._reset_for_tests()
    assert kmod.load_kernel() is not None  # loaded again from the cache, not rebuilt
    assert (build_dir / kmod.LIB_NAME).stat().st_mtime_ns == mtime
    # a -march=native build is keyed on the CPU: another CPU (or other flags) gets another build
    src = kmod.SOURCE.read_text()
    cpu = kmod.cpu_identity()
    base = kmod.build_key(src, "c++", "v", status.flags, cpu)
    assert kmod.build_key(src, "c++", "v", status.flags, {**cpu, "flags": "sse2"}) != base
    assert kmod.build_key(src, "c++", "v", status.flags, {**cpu, "model": "other"}) != base
    assert kmod.build_key(src + " ", "c++", "v", status.flags, cpu) != base


@needs_compiler
@pytest.mark.parametrize("in_features,out_features", [(37, 45), (64, 130), (300, 17)])
@pytest.mark.parametrize("n", [1, 2, 17, 40, 130, 300])
def test_kernel_matches_dense_linear(in_features: int, out_features: int, n: int) -> None:
    w = _masked((out_features, in_features), 0.2, seed=n)
    w[3] = 0.0  # an empty row
    b = torch.randn(out_features)
    x = torch.randn(n, in_features)
    ref = torch.nn.functional.linear(x, w, b)
    mod = KernelLinear.from_linear(w, b)
    assert mod.cols.dtype == torch.int16  # uint16 column indices
    torch.testing.assert_close(mod(x), ref, atol=1e-5, rtol=1e-5)
    nobias = KernelLinear.from_linear(w, None)
    torch.testing.assert_close(nobias(x), torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)


@needs_compiler
def test_kernel_int32_indices_and_edge_cases() -> None:
    lib = kmod.load_kernel()
    assert lib is not None
    w = _masked((20, 70), 0.3)
    rowptr, cols, vals = csr_arrays(w)
    x = torch.randn(33, 70)
    y = lib.spmm(rowptr, cols.to(torch.int32), vals, None, x, 20)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)
    # an all-zero weight gives the bias
    z = KernelLinear.from_linear(torch.zeros(5, 8), torch.arange(5.0))
    assert torch.equal(z(torch.randn(3, 8)), torch.arange(5.0).expand(3, 5))
    # columns above 32767 survive the uint16 round trip
    wide = torch.zeros(2, 40000)
    wide[0, 39999] = 2.0
    wide[1, 32768] = -1.0
    m = KernelLinear.from_linear(wide, None)
    xw = torch.randn(4, 40000)
    torch.testing.assert_close(m(xw), torch.nn.functional.linear(xw, wide))
    assert torch.equal(m.dense_weight(), wide)


@needs_compiler
@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32])
def test_single_token_rows_of_every_length_match_dense(index_dtype: torch.dtype) -> None:
    """One token (the decode path: 16-wide gathers, two accumulators, a masked tail): rows with
    0, 1, 15, 16, 17, 31, 32, 33, 48 and 70 non-zeros, with uint16 and int32 column indices."""
    lib = kmod.load_kernel()
    assert lib is not None
    lengths = [0, 1, 15, 16, 17, 31, 32, 33, 48, 70]
    g = torch.Generator().manual_seed(7)
    w = torch.zeros(len(lengths), 40000)
    for row, k in enumerate(lengths):
        cols = torch.randperm(40000, generator=g)[:k]
        w[row, cols] = torch.randn(k, generator=g)
    w[-1, 39999] = 1.5  # a column above 32767 (uint16 storage)
    rowptr, cols, vals = csr_arrays(w)
    b = torch.randn(len(lengths), generator=g)
    x = torch.randn(1, 40000, generator=g)
    y = lib.spmm(rowptr, cols.to(index_dtype), vals, b, x, len(lengths))
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), atol=1e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("density", [0.5, 0.1])  # 64-token panels in feature blocks; 32-token panels
@pytest.mark.parametrize("n", [33, 64, 128, 129])
def test_prefill_tiles_and_feature_blocks_match_dense(density: float, n: int) -> None:
    """In features 600 at 50 % density split into blocks of 128 (the last one ragged),
    out features 70 leave a ragged row block and 16 x 16 transposes with edges."""
    w = _masked((70, 600), density, seed=n)
    w[5] = 0.0  # an empty row
    w[6, :590] = 0.0  # a row whose non-zeros all sit in the last block
    b = torch.randn(70)
    x = torch.randn(n, 600)
    mod = KernelLinear.from_linear(w, b)
    torch.testing.assert_close(mod(x), torch.nn.functional.linear(x, w, b), atol=1e-4, rtol=1e-5)


@needs_compiler
def test_a_build_without_avx512_computes_spmm_correctly(tmp_path: Path) -> None:
    """The portable build (scalar transposes, narrower vectors) agrees with dense on the prefill path."""
    import ctypes

    cxx = kmod._compiler()
    assert cxx is not None
    flags = [*kmod.BASE_FLAGS, *kmod.ARCH_FLAGS, "-mno-avx512f", *kmod.OMP_FLAGS]
    ok, err = kmod._compile(cxx, flags, kmod.SOURCE, tmp_path / "portable.so")
    assert ok, err
    lib = kmod.KernelLib(ctypes.CDLL(str(tmp_path / "portable.so")), kmod.KernelStatus(True, ""))
    assert lib.lib.pa_simd_width() < 16
    for density in (0.5, 0.1):
        w = _masked((50, 300), density)
        rowptr, cols, vals = csr_arrays(w)
        b = torch.randn(50)
        x = torch.randn(100, 300)
        y = lib.spmm(rowptr, cols.to(torch.int32), vals, b, x, 50)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), atol=1e-4, rtol=1e-5)
        one = lib.spmm(rowptr, cols.to(torch.int32), vals, b, x[:1], 50)  # the scalar decode path
        torch.testing.assert_close(one, torch.nn.functional.linear(x[:1], w, b), atol=1e-4, rtol=1e-5)


def test_unavailable_kernel_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNE_AUDIT_KERNEL", "off")
    kmod._reset_for_tests()
    try:
        assert kmod.load_kernel() is None
        assert "disabled by PRUNE_AUDIT_KERNEL" in kmod.kernel_status().describe()
        with pytest.raises(RuntimeError, match="unavailable"):
            KernelLinear.from_linear(torch.eye(4), None)
        monkeypatch.delenv("PRUNE_AUDIT_KERNEL")
        monkeypatch.setenv("CXX", "/nonexistent/c++")
        kmod._reset_for_tests()
        assert kmod.load_kernel() is None
        assert "no C++ compiler found" in kmod.kernel_status().reason
    finally:
        monkeypatch.undo()
        kmod._reset_for_tests()


@needs_compiler
def test_failed_build_falls_back_with_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A compiler that rejects every flag set: the kernel is unavailable and the error is kept."""
    fake = tmp_path / "bad-cxx"
    fake.write_text("#!/bin/sh\necho 'error: unsupported option' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    kmod._reset_for_tests()
    try:
        assert kmod.load_kernel() is None
        reason = kmod.kernel_status().reason
        assert reason.startswith("build failed") and "unsupported option" in reason
    finally:
        monkeypatch.undo()
        kmod._reset_for_tests()
