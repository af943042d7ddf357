"""Provenance: tool version, git sha, package versions, platform."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import audit
from audit.results import Provenance

PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "tokenizers",
    "safetensors",
    "fairlearn",
    "scikit-learn",
    "scipy",
    "numpy",
    "textattack",
    "evaluate",
    "jinja2",
    "pydantic",
)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def tool_version() -> str:
    try:
        return metadata.version("prune-audit")
    except metadata.PackageNotFoundError:
        return audit.__version__


def git_sha() -> str | None:
    """The commit of the prune-audit checkout, when it runs from one."""
    root = Path(audit.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def collect(
    *, seed: int, started_at: str, command: str | None, config_fingerprint: str, threads: int | None
) -> Provenance:
    return Provenance(
        tool_version=tool_version(),
        git_sha=git_sha(),
        python=sys.version.split()[0],
        platform=f"{platform.system()} {platform.machine()} ({os.cpu_count()} cpus)",
        packages=package_versions(),
        seed=seed,
        started_at=started_at,
        command=command,
        config_fingerprint=config_fingerprint,
        threads=threads,
    )
