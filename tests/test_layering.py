"""The package's layering: what may import what, modules that import in any order, file sizes.

These are the structural checks of the restructuring (issue 14): a low layer reaching into
the demo, an import cycle that only bites in one order, or a module grown past a
reviewable size fails here rather than in a reader's head.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "suites", "reports")

MAX_LINES = 600
LONG_FILES: dict[str, str] = {
    "audit/results.py": "the versioned results.json schema, every record in one module (652 lines with OWL records)",
}
"""Files allowed over :data:`MAX_LINES`, each with its stated reason."""

DEMO_IMPORTERS = {"audit/cli.py"}
"""The only module outside :mod:`audit.demo` that may import it (the CLI's ``demo`` command)."""


def _py_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_nothing_below_the_cli_imports_the_demo():
    offenders = []
    for path in _py_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("audit/demo/") or rel in DEMO_IMPORTERS:
            continue
        hits = {m for m in _imported(path) if m == "audit.demo" or m.startswith("audit.demo.")}
        if hits:
            offenders.append(f"{rel}: {sorted(hits)}")
    assert offenders == []


def test_no_module_is_over_the_size_limit_without_a_reason():
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in _py_files()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert {k: v for k, v in long.items() if k not in LONG_FILES} == {}


def test_every_module_imports_in_reversed_and_shuffled_order():
    """An import cycle that only works when one module happens to be imported first fails here."""
    mods = sorted({_module_name(p) for p in _py_files()})
    shuffled = mods[:]
    random.Random(14).shuffle(shuffled)
    for order in (mods[::-1], shuffled):
        code = "\n".join(f"import {m}" for m in order)
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
