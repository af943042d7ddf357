"""Process-wide settings that must be in place before heavy libraries are imported."""

from __future__ import annotations

import os

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def configure_offline(offline: bool) -> None:
    """Forbid hub access for transformers, datasets and evaluate when ``offline``.

    huggingface_hub reads these variables at import time, so this runs before any
    of them is imported; loaders also pass ``local_files_only`` explicitly.
    """
    if offline:
        for var in _OFFLINE_VARS:
            os.environ[var] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
    # tokenizers' fork warning is noise for our batch inference
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
