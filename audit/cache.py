"""Where prune-audit caches what it builds, and the environment variables that configure a run.

A leaf module (it imports nothing else from :mod:`audit`), so that any part of the code can
ask for the cache root or a file lock without importing the demo.

The cache root is ``$PRUNE_AUDIT_CACHE_DIR`` if set, else the platform's user cache
directory (``~/.cache/prune-audit`` on Linux). Under it live the demo model, the compiled
sparse kernels, the deployment timing cache, the dequantized GGUF checkpoints
(:func:`gguf_cache_root`) and (outside a virtual environment) the NLTK data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

RUN_ENV_VARS: tuple[str, ...] = (
    # prune-audit's own settings
    "PRUNE_AUDIT_CACHE_DIR",  # cache root (this module)
    "PRUNE_AUDIT_NLTK_DATA",  # provisioned NLTK data (audit.resources)
    "PRUNE_AUDIT_KERNEL",  # off: no compiled sparse kernel (audit.deploy.kernel)
    "CXX",  # the compiler of the sparse kernel (audit.deploy.kernel)
    # NLTK's data path (set by audit.resources.activate, read by nltk)
    "NLTK_DATA",
    # offline switches (audit.env; read by huggingface_hub, transformers, datasets)
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    # where the Hugging Face libraries look for local files (read by huggingface_hub and datasets)
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
)
"""Every environment variable that changes what a run reads or computes.

A worker process on another machine (the Ray executor) gets exactly these, when set, so that
it finds the same caches, data and kernel as the driver.
"""


def cache_root() -> Path:
    """The root of prune-audit's caches (see the module docstring)."""
    env = os.environ.get("PRUNE_AUDIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("prune-audit"))


def gguf_cache_root() -> Path:
    """Where dequantized GGUF checkpoints are cached, one directory per GGUF sha256 (audit.models.gguf)."""
    return cache_root() / "gguf"


def run_environment(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
    """The set (non-empty) variables of :data:`RUN_ENV_VARS` in ``environ`` (default: this process's)."""
    env = os.environ if environ is None else environ
    return {var: env[var] for var in RUN_ENV_VARS if env.get(var)}


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created with its parents) for the duration of the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
