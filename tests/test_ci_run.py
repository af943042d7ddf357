"""`.ci/run` tests the way a stranger's machine would: a clean clone, fresh HOME and caches.

The real `make` is replaced by a stand-in on PATH that records where and with what
environment it was called, so this checks `.ci/run` itself in about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_MAKE = """#!{python}
import json, os, subprocess, sys
from pathlib import Path
home = Path(os.environ["HOME"])
json.dump({{
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "env": {{k: v for k, v in os.environ.items()}},
    "home_entries": sorted(str(p.relative_to(home)) for p in home.rglob("*")),
    "venv_exists": Path(".venv").exists(),
    "head": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "untracked": subprocess.run(["git", "status", "--porcelain", "--ignored"], capture_output=True, text=True).stdout,
}}, open({out!r}, "w"))
"""


def test_ci_run_uses_a_clean_clone_and_fresh_home_and_caches(tmp_path: Path) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    out = tmp_path / "make-call.json"
    make = bindir / "make"
    make.write_text(FAKE_MAKE.format(python=sys.executable, out=str(out)))
    make.chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{bindir}{os.pathsep}{env['PATH']}",
        TMPDIR=str(tmp_path),
        PRUNE_AUDIT_KERNEL="off",  # a developer's switch must not reach CI
        PRUNE_AUDIT_CACHE_DIR=str(tmp_path / "dev-cache"),
        NLTK_DATA=str(tmp_path / "dev-nltk"),
        HF_HOME=str(tmp_path / "dev-hf"),
    )
    r = subprocess.run(["sh", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    call = json.loads(out.read_text())
    e = call["env"]
    cwd = Path(call["cwd"])
    assert call["argv"][0] == "test"
    assert cwd != ROOT and cwd.is_relative_to(tmp_path)
    assert call["head"] == head and call["untracked"] == ""  # HEAD exactly, nothing else in the tree
    assert call["venv_exists"] is False  # nothing built is carried over
    assert Path(e["HOME"]).is_relative_to(tmp_path)
    assert call["home_entries"] == [".cache", ".config", ".local", ".local/share"]  # made empty
    assert "PRUNE_AUDIT_KERNEL" not in e and "NLTK_DATA" not in e
    for var in ("PRUNE_AUDIT_CACHE_DIR", "HF_HOME", "HF_DATASETS_CACHE", "TORCH_HOME", "XDG_CACHE_HOME"):
        assert Path(e[var]).is_relative_to(Path(e["HOME"]).parent), var
        assert not Path(e[var]).exists(), var
    assert not cwd.exists()  # the temporary tree is removed afterwards
