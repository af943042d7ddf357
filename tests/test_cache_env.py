"""audit.cache: one list of the environment variables that configure a run, forwarded to Ray workers."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from audit.cache import RUN_ENV_VARS, cache_root, run_environment
from audit.executors import worker_env

ROOT = Path(__file__).resolve().parent.parent
OWN_CODE = [ROOT / pkg for pkg in ("audit", "suites", "reports")]
LIBRARIES = ("huggingface_hub", "datasets", "nltk")
"""Libraries that read some of the variables themselves (Hugging Face caches and offline switches, NLTK data)."""


def _sources(roots: list[Path]) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for r in roots for p in sorted(r.rglob("*.py"))}


def test_the_ray_workers_get_exactly_the_run_variables() -> None:
    environ = {var: f"value-of-{var}" for var in RUN_ENV_VARS}
    environ.update({"PRUNE_AUDIT_CACHE": "nothing reads this", "HOME": "/home/x", "PYTHONPATH": "/extra"})
    env = worker_env(environ)
    assert set(env) == set(RUN_ENV_VARS) | {"PYTHONPATH"}
    assert all(env[var] == f"value-of-{var}" for var in RUN_ENV_VARS)
    assert env["PYTHONPATH"].split(":") == [str(ROOT), "/extra"]
    # unset or empty variables are not forwarded
    assert set(worker_env({"CXX": "", "PRUNE_AUDIT_KERNEL": "off"})) == {"PYTHONPATH", "PRUNE_AUDIT_KERNEL"}


def test_the_ray_executor_builds_its_runtime_env_from_worker_env() -> None:
    source = (ROOT / "audit" / "executors.py").read_text()
    assert '"env_vars": worker_env()' in source
    assert 'PRUNE_AUDIT_CACHE"' not in source  # the old, unread name


def test_every_run_variable_is_read_by_the_code_or_a_library_it_configures() -> None:
    own = _sources(OWN_CODE)
    libs = []
    for name in LIBRARIES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, f"{name} is a dependency"
        libs.append(Path(spec.origin).parent)
    lib_sources = _sources(libs)
    read = re.compile(r"""environ(?:\.get|\.setdefault|\[)\(?\s*["']([A-Z_]+)["']|getenv\(\s*["']([A-Z_]+)["']""")

    def names_read(sources: dict[Path, str]) -> set[str]:
        return {a or b for text in sources.values() for a, b in read.findall(text)}

    ours, theirs = names_read(own), names_read(lib_sources)
    unread = [var for var in RUN_ENV_VARS if var not in ours | theirs]
    assert unread == []
    # and every variable our own code reads is in the list, but for CI, Ray and those audit.env sets in each process
    not_run_settings = {"GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "RAY_ADDRESS", "PYTHONPATH"}
    not_run_settings |= {"HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "TOKENIZERS_PARALLELISM"}  # set by every process
    assert ours - not_run_settings <= set(RUN_ENV_VARS)


def test_no_module_outside_the_cli_imports_the_demo() -> None:
    offenders = []
    for path, text in _sources([ROOT / "audit"]).items():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "audit/cli.py" or rel.startswith("audit/demo/"):
            continue
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{rel}:{node.lineno}" for n in names if n == "audit.demo" or n.startswith("audit.demo.")]
    assert offenders == []


def test_cache_is_a_leaf_module() -> None:
    tree = ast.parse((ROOT / "audit" / "cache.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("audit")} <= {"audit.errors"}


def test_cache_root_follows_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNE_AUDIT_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    from audit import demo

    assert demo.cache_root() == tmp_path / "c"  # the old import path still works
    assert run_environment()["PRUNE_AUDIT_CACHE_DIR"] == str(tmp_path / "c")
