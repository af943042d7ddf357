from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.store import ResultStore, StoreKey, code_fingerprint


def key(**kw: str) -> StoreKey:
    base = dict(kind="suite", model="m", data="d", point="p", name="performance", params="{}", code="c")
    base.update(kw)
    return StoreKey(**base)


def test_roundtrip_with_arrays(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    k = key()
    assert store.get(k) is None and not store.has(k)
    store.put(k, {"measurements": [{"v": 1.5}]}, {"pred": np.array([0, 1, 1])})
    payload, arrays = store.get(k)
    assert payload == {"measurements": [{"v": 1.5}]}
    assert arrays["pred"].tolist() == [0, 1, 1]
    assert store.entries() == 1


def test_every_input_changes_the_address(tmp_path: Path) -> None:
    digests = {key().digest()}
    for field in ("kind", "model", "data", "point", "name", "params", "code"):
        digests.add(key(**{field: "other"}).digest())
    assert len(digests) == 8


def test_partial_and_corrupt_entries_are_not_reused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    k = key()
    path = store.put(k, {"x": 1})
    stray = path.with_name("." + path.name + ".abc.tmp")  # what a killed writer leaves behind
    stray.write_bytes(b"{half")
    assert store.get(k) == ({"x": 1}, {})
    path.write_bytes(b"{not json")
    assert store.get(k) is None
    k2 = key(point="q")
    store.put(k2, {"x": 2}, {"a": np.zeros(2)})
    store._path(k2, ".npz").unlink()
    assert store.get(k2) is None


def test_code_fingerprint_is_the_same_in_a_fresh_process() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", "from audit.store import code_fingerprint; print(code_fingerprint())"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == code_fingerprint()


def test_code_fingerprint_covers_the_kernel_source_and_the_package_versions() -> None:
    from importlib import metadata

    from audit.provenance import tool_version
    from audit.store import code_sources, fingerprint_of, package_versions

    sources, versions = code_sources(), package_versions()
    assert code_fingerprint() == fingerprint_of(tool_version(), sources, versions)
    assert "audit/deploy/spmm.cpp" in sources and "audit/store.py" in sources
    for pkg in ("torch", "transformers", "textattack", "fairlearn", "datasets", "numpy", "scipy", "scikit-learn"):
        assert versions[pkg] == metadata.version(pkg)
    base = fingerprint_of("1", sources, versions)
    cpp = dict(sources)
    cpp["audit/deploy/spmm.cpp"] = sources["audit/deploy/spmm.cpp"] + b"\n// edited\n"
    assert fingerprint_of("1", cpp, versions) != base
    for pkg in ("torch", "transformers", "textattack"):
        bumped = {**versions, pkg: f"{versions[pkg]}.post1"}
        assert fingerprint_of("1", sources, bumped) != base
    assert fingerprint_of("2", sources, versions) != base


def test_pinned_packages_are_the_declared_dependencies() -> None:
    import re

    import tomllib

    from audit.store import PINNED_PACKAGES

    root = Path(__file__).resolve().parent.parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in deps}
    assert declared | {"nltk"} == set(PINNED_PACKAGES)


def test_atomic_writes_get_the_usual_file_mode(tmp_path: Path) -> None:
    import os

    from audit.atomic import atomic_write_text

    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "report.html", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
