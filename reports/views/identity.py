"""The identity sections: the model, the datasets and the run's provenance."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from audit.config_zero_shot import describe_zero_shot
from audit.results import DatasetIdentity, RunResult
from reports.views.common import clip

_GENERIC = re.compile(r"^(model|models|checkpoint|checkpoints|snapshots?|final|best|output|[0-9a-f]{12,})$", re.I)


def model_name(source: str) -> str:
    """The model's name in a title: the checkpoint directory's name, with its parent when that
    name says nothing (``model``, ``checkpoint``, a snapshot hash): ``minilm-sst2/model``.
    """
    parts = [p for p in PurePath(source.rstrip("/\\")).parts if p not in ("/", "\\")]
    if not parts:
        return source
    hub = next((p for p in reversed(parts) if p.startswith("models--")), None)
    if hub is not None:  # the Hugging Face cache: models--org--name/snapshots/<hash>
        return hub[len("models--") :].replace("--", "/")
    name = parts[-1]
    if not _GENERIC.match(name):
        return name
    parent = next((p for p in reversed(parts[:-1]) if not _GENERIC.match(p)), None)
    return f"{parent}/{name}" if parent else name


def default_title(source: str) -> str:
    """The report title when the config sets none: it names the model."""
    return f"Pruning audit of {model_name(source)}"


def truncation_cell(d: DatasetIdentity) -> str:
    """``12 (5.0%) at 64 tokens``; empty when the run did not record truncation."""
    if d.truncated is None:
        return ""
    share = d.truncated / d.n if d.n else 0.0
    return f"{d.truncated} ({share:.1%}) at {d.max_length} tokens"


def model_view(result: RunResult) -> dict[str, Any]:
    return {
        "source": result.model.source,
        "architecture": result.model.architecture,
        "fingerprint": result.model.fingerprint[:16],
        "labels": ", ".join(f"{k}={v}" for k, v in result.model.labels.items()),
        "num_labels": result.model.num_labels,
        "params": f"{result.model.params_total:,}",
        "revision": result.model.revision or "",
        "zero_shot": describe_zero_shot(result.config),
    }


def dataset_rows(result: RunResult) -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "source": d.source,
            "split": d.split or "",
            "n": d.n,
            "fingerprint": d.fingerprint[:16],
            "columns": ", ".join(f"{k}: {clip(v, 60)}" for k, v in d.columns.items()),
            "truncated": truncation_cell(d),
            "truncated_any": bool(d.truncated),
        }
        for d in result.datasets
    ]


def provenance_view(result: RunResult) -> dict[str, Any]:
    prov = result.provenance
    return {
        "tool_version": prov.tool_version,
        "git_sha": prov.git_sha or "unknown",
        "python": prov.python,
        "platform": prov.platform,
        "seed": prov.seed,
        "threads": prov.threads if prov.threads is not None else "",
        "started_at": prov.started_at,
        "finished_at": prov.finished_at or "",
        "command": prov.command or "",
        "packages": sorted(prov.packages.items()),
        "config_fingerprint": prov.config_fingerprint[:16],
    }
