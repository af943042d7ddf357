"""The compiled sparse Linear kernel (``spmm.cpp``): build once, cache, load, or explain why not.

The kernel is a small C++ file with no torch headers, so it compiles in about a second
with the system C++ compiler and is called through :mod:`ctypes` on the tensors'
data pointers. Threads come from OpenMP; the library links the ``libgomp`` torch has
already loaded (same soname), so torch and the kernel share one thread pool.

The build is cached under ``<cache>/kernels/spmm-<key>/``, where the key hashes the
source, the compiler and its version, the flags, and the CPU (model name and feature
flags): a ``-march=native`` build is never reused on a different CPU. If no compiler
is found, the build fails, or the built library gives a wrong answer on a self-test,
the kernel is unavailable and :func:`kernel_status` says why; deployment then falls
back to torch's own formats (or dense) and records that reason.

Set ``PRUNE_AUDIT_KERNEL=off`` to disable the kernel, or ``CXX`` to pick the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("spmm.cpp")
LIB_NAME = "libpa_spmm.so"
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-math-errno")
ARCH_FLAGS = ("-march=native",)
OMP_FLAGS = ("-fopenmp",)
_P = ctypes.c_void_p
_I = ctypes.c_int


@dataclass
class KernelStatus:
    """Whether the compiled kernel is usable here, and why (not)."""

    available: bool
    reason: str
    path: str | None = None
    key: str | None = None
    simd_width: int | None = None
    openmp: bool | None = None
    compiler: str | None = None
    flags: list[str] = field(default_factory=list)
    build_seconds: float | None = None

    def describe(self) -> str:
        if not self.available:
            return f"compiled kernel unavailable: {self.reason}"
        isa = {16: "AVX-512", 8: "AVX2", 4: "SSE"}.get(self.simd_width or 0, f"{self.simd_width}-wide")
        threads = "OpenMP" if self.openmp else "single-threaded"
        return f"compiled kernel ({isa}, {threads}, {self.compiler})"


class KernelLib:
    """The loaded library and typed entry points."""

    def __init__(self, lib: ctypes.CDLL, status: KernelStatus) -> None:
        self.lib = lib
        self.status = status
        for fn in (lib.pa_spmm_u16, lib.pa_spmm_i32):
            fn.argtypes = [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _P]
            fn.restype = None
        lib.pa_compact_mm.argtypes = [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I]
        lib.pa_compact_mm.restype = None
        lib.pa_compact_avx512.restype = ctypes.c_int
        lib.pa_act_mm.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I, _P, _P]
        lib.pa_act_mm.restype = None
        lib.pa_work_floats.argtypes = [_I, _I]
        lib.pa_work_floats.restype = ctypes.c_int64
        lib.pa_simd_width.restype = ctypes.c_int
        lib.pa_has_openmp.restype = ctypes.c_int
        self._local = threading.local()

    def workspace(self, n: int, in_features: int) -> int | None:
        """Address of a scratch buffer for ``n`` tokens (grow-only, one per calling thread)."""
        if n <= 1:
            return None
        local = self._local
        cap = getattr(local, "cap", 0)
        if (n, in_features) != getattr(local, "last", None):
            floats = int(self.lib.pa_work_floats(n, in_features))
            if floats > cap:
                local.buf = torch.empty(int(floats * 1.25) + 64, dtype=torch.float32)
                local.cap = local.buf.numel()
            local.last = (n, in_features)
        return local.buf.data_ptr()

    def spmm(
        self,
        rowptr: torch.Tensor,
        cols: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        x: torch.Tensor,
        out_features: int,
    ) -> torch.Tensor:
        """``x @ W.T + bias`` for a 2-D contiguous fp32 ``x``; W given as CSR arrays."""
        n, in_features = x.shape
        y = torch.empty((n, out_features), dtype=torch.float32)
        work = self.workspace(n, in_features)
        fn = self.lib.pa_spmm_u16 if cols.dtype == torch.int16 else self.lib.pa_spmm_i32
        fn(
            rowptr.data_ptr(),
            cols.data_ptr(),
            values.data_ptr(),
            bias.data_ptr() if bias is not None else None,
            x.data_ptr(),
            y.data_ptr(),
            n,
            in_features,
            out_features,
            torch.get_num_threads(),
            work,
        )
        return y

    def act_mm(self, wt: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """``x @ wt + bias`` for a 2-D contiguous fp32 ``x`` and a dense input-major ``wt`` ``[in, out]``,
        reading only the rows of ``wt`` whose input is non-zero (activation sparsity).
        """
        n, in_features = x.shape
        out_features = int(wt.shape[1])
        y = torch.empty((n, out_features), dtype=torch.float32)
        idx = torch.empty((n, in_features), dtype=torch.int32)
        cnt = torch.empty(n, dtype=torch.int32)
        self.lib.pa_act_mm(
            wt.data_ptr(),
            bias.data_ptr() if bias is not None else None,
            x.data_ptr(),
            y.data_ptr(),
            n,
            in_features,
            out_features,
            torch.get_num_threads(),
            idx.data_ptr(),
            cnt.data_ptr(),
        )
        return y


_lock = threading.Lock()
_loaded: KernelLib | None = None
_status: KernelStatus | None = None


def cpu_identity() -> dict[str, str]:
    """What a ``-march=native`` build depends on: architecture, CPU model and feature flags."""
    ident = {"machine": platform.machine(), "model": "", "flags": ""}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and not ident["model"]:
            ident["model"] = value.strip()
        elif key in ("flags", "Features") and not ident["flags"]:
            ident["flags"] = " ".join(sorted(value.split()))
    if not ident["model"]:
        ident["model"] = platform.processor() or platform.platform()
    return ident


def _compiler() -> str | None:
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unknown"


def build_key(source: str, cxx: str, version: str, flags: list[str], cpu: dict[str, str]) -> str:
    h = hashlib.sha256()
    for part in (source, cxx, version, " ".join(flags), json.dumps(cpu, sort_keys=True)):
        h.update(part.encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.hexdigest()


def _kernel_dir() -> Path:
    from audit.cache import cache_root

    return cache_root() / "kernels"


def _compile(cxx: str, flags: list[str], src: Path, dst: Path) -> tuple[bool, str]:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    cmd = [cxx, *flags, str(src), "-o", str(tmp)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if out.returncode != 0:
        tmp.unlink(missing_ok=True)
        lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        return False, (lines[0] if lines else f"exit code {out.returncode}")[:300]
    os.replace(tmp, dst)
    return True, ""


def _self_test(lib: KernelLib) -> str | None:
    """Compare the kernel with numpy on a small random problem; returns an error or None."""
    rng = np.random.default_rng(0)
    out_f, in_f = 45, 37
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    b = rng.standard_normal(out_f).astype(np.float32)
    rows, cols = np.nonzero(w)
    rowptr = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=out_f))]).astype(np.int32))
    vals = torch.from_numpy(w[rows, cols].copy())
    for n in (1, 5, 21, 150):
        x = rng.standard_normal((n, in_f)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
        for idx in (torch.from_numpy(cols.astype(np.int32)), torch.from_numpy(cols.astype(np.uint16).view(np.int16))):
            y = lib.spmm(rowptr, idx, vals, torch.from_numpy(b), torch.from_numpy(x), out_f).numpy()
            err = float(np.abs(y - ref).max())
            if not np.isfinite(err) or err > 1e-3:
                return f"self-test failed (n={n}, index {idx.dtype}): max error {err:.3g}"
    return _self_test_compact(lib, rng, w, b) or _self_test_act(lib, rng)


def _self_test_act(lib: KernelLib, rng: np.random.Generator) -> str | None:
    """The activation-sparse kernel (``pa_act_mm``) against numpy: half the inputs zero, a chunk tail."""
    in_f, out_f = 37, 16 * (lib.status.simd_width or 4) + 13  # one full chunk of outputs and a tail
    wt = rng.standard_normal((in_f, out_f)).astype(np.float32)
    b = rng.standard_normal(out_f).astype(np.float32)
    for n in (1, 3):
        x = rng.standard_normal((n, in_f)).astype(np.float32)
        x[rng.random(x.shape) < 0.5] = 0.0
        ref = x.astype(np.float64) @ wt.astype(np.float64) + b
        y = lib.act_mm(torch.from_numpy(wt), torch.from_numpy(b), torch.from_numpy(x)).numpy()
        err = float(np.abs(y - ref).max())
        if not np.isfinite(err) or err > 1e-3:
            return f"activation-sparse self-test failed (n={n}): max error {err:.3g}"
    return None


def _self_test_compact(lib: KernelLib, rng: np.random.Generator, w: np.ndarray, b: np.ndarray) -> str | None:
    """The bitmap format (``pa_compact_mm``, vector and scalar path) against numpy."""
    out_f, in_f = w.shape
    nb = (in_f + 15) // 16
    keep = np.zeros((out_f, nb * 16), dtype=np.uint32)
    keep[:, :in_f] = w != 0
    masks = (keep.reshape(out_f, nb, 16) << np.arange(16, dtype=np.uint32)).sum(-1).astype(np.uint16)
    rowptr = np.concatenate([[0], np.cumsum((w != 0).sum(1))]).astype(np.int32)
    vals = np.concatenate([w[w != 0], np.zeros(16)]).astype(np.float32)  # 16 floats of padding
    for n in (1, 3):
        x = rng.standard_normal((n, in_f)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
        for scalar in (0, 1):
            y = np.empty((n, out_f), dtype=np.float32)
            lib.lib.pa_compact_mm(
                rowptr.ctypes.data, masks.ctypes.data, vals.ctypes.data, b.ctypes.data,
                x.ctypes.data, y.ctypes.data, n, in_f, out_f, 1, scalar,
            )  # fmt: skip
            err = float(np.abs(y - ref).max())
            if not np.isfinite(err) or err > 1e-3:
                return f"self-test failed (bitmap, n={n}, scalar={scalar}): max error {err:.3g}"
    return None


def _load(path: Path, status: KernelStatus) -> KernelLib:
    lib = KernelLib(ctypes.CDLL(str(path)), status)
    status.simd_width = int(lib.lib.pa_simd_width())
    status.openmp = bool(lib.lib.pa_has_openmp())
    return lib


def _build_and_load() -> tuple[KernelLib | None, KernelStatus]:
    setting = os.environ.get("PRUNE_AUDIT_KERNEL", "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return None, KernelStatus(False, "disabled by PRUNE_AUDIT_KERNEL")
    cxx = _compiler()
    if cxx is None:
        return None, KernelStatus(False, "no C++ compiler found (install g++ or set CXX)")
    source = SOURCE.read_text(encoding="utf-8")
    version = _compiler_version(cxx)
    cpu = cpu_identity()
    attempts = [
        [*BASE_FLAGS, *ARCH_FLAGS, *OMP_FLAGS],
        [*BASE_FLAGS, *OMP_FLAGS],  # a compiler without -march=native
        [*BASE_FLAGS, *ARCH_FLAGS],  # a compiler without OpenMP
        list(BASE_FLAGS),
    ]
    errors = []
    for flags in attempts:
        key = build_key(source, cxx, version, flags, cpu)
        d = _kernel_dir() / f"spmm-{key[:16]}"
        path = d / LIB_NAME
        status = KernelStatus(True, "", str(path), key, compiler=version, flags=flags)
        from audit.cache import file_lock

        with file_lock(d / ".lock"):
            if not path.is_file():
                (d / "spmm.cpp").write_text(source, encoding="utf-8")
                t0 = time.perf_counter()
                ok, err = _compile(cxx, flags, d / "spmm.cpp", path)
                if not ok:
                    errors.append(f"{' '.join(flags)}: {err}")
                    log.info("kernel build failed with %s: %s", " ".join(flags), err)
                    continue
                status.build_seconds = time.perf_counter() - t0
                meta = {"compiler": version, "cxx": cxx, "flags": flags, "cpu": cpu, "seconds": status.build_seconds}
                from audit.atomic import atomic_write_text

                atomic_write_text(d / "build.json", json.dumps(meta, indent=2) + "\n")
                log.info("built the sparse kernel in %.1fs (%s)", status.build_seconds, path)
        try:
            lib = _load(path, status)
        except OSError as exc:
            errors.append(f"{' '.join(flags)}: cannot load: {exc}")
            continue
        problem = _self_test(lib)
        if problem is not None:
            errors.append(f"{' '.join(flags)}: {problem}")
            continue
        if flags != attempts[0]:
            status.reason = "built without " + " ".join(sorted(set(attempts[0]) - set(flags)))
        return lib, status
    return None, KernelStatus(False, "build failed: " + " | ".join(errors), compiler=version)


def load_kernel() -> KernelLib | None:
    """The compiled kernel, built on first use (thread-safe); None if unavailable."""
    global _loaded, _status
    if _status is not None:
        return _loaded
    with _lock:
        if _status is None:
            try:
                _loaded, _status = _build_and_load()
            except Exception as exc:  # noqa: BLE001 - any failure means: fall back, and say why
                log.warning("sparse kernel unavailable: %s", exc)
                _loaded, _status = None, KernelStatus(False, f"{type(exc).__name__}: {exc}")
            if _loaded is None:
                log.warning("sparse kernel unavailable: %s", _status.reason)
        return _loaded


def kernel_status() -> KernelStatus:
    """Status of the compiled kernel (tries to build it if that was not done yet)."""
    load_kernel()
    assert _status is not None
    return _status


def _reset_for_tests() -> None:
    """Forget the loaded kernel so that the next call re-evaluates (tests only)."""
    global _loaded, _status
    with _lock:
        _loaded, _status = None, None
