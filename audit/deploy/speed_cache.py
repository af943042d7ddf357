"""Deployed-speed measurements kept per machine, so re-running an unchanged audit re-gates the same figure.

A speed-up is a measurement of a noisy machine: two honest timings of one deployment differ,
and a rule whose bound lies inside that spread would flip between identical runs. The
format choice already keeps its timings per machine (:class:`audit.deploy.choose.TimingCache`);
this does the same for the speed record of a whole deployed variant. The key is everything
the measured figure depends on: the machine (:func:`audit.deploy.choose.environment_key`:
CPU, its flags, torch, threads, device, kernel build), the dense model's weights, the variant's
masked-dense weights before conversion, the format chosen for every layer, and the speed
protocol's settings (sequence length, batch size, rounds, minimum time). A hit returns the
stored record, with a note saying when it was measured and how to measure again
(``deploy.speed_cache: false``, or delete the file). Entries are JSON, written atomically
under a file lock.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.results import SpeedRecord

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the speed protocol (audit/deploy/speed.py) changes what a record means."""


def cache_file() -> Path:
    from audit.cache import cache_root

    return cache_root() / "deploy" / "speed.json"


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in ``state_dict`` order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim: a gate's threshold
    return h.hexdigest()


def speed_key(*, env: str, dense: str, variant: str, formats: list[tuple[str, str]], settings: dict[str, Any]) -> str:
    """The cache key of one deployed variant's speed measurement."""
    payload = {"env": env, "dense": dense, "variant": variant, "formats": formats, "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class SpeedCache:
    """Speed records keyed by :func:`speed_key`; persisted as JSON (merged on save)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                if raw.get("version") == CACHE_VERSION:
                    self.data = dict(raw.get("records", {}))
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring unreadable speed cache %s: %s", path, exc)

    @classmethod
    def default(cls) -> SpeedCache:
        return cls(cache_file())

    def get(self, key: str) -> SpeedRecord | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        record = SpeedRecord.model_validate(entry["record"])
        where = f" ({self.path})" if self.path is not None else ""
        reused = (
            f"measured on {entry['measured_at']} on this machine with the same model, formats and settings, "
            f"and reused so that an unchanged audit re-gates the same figure; deploy.speed_cache: false "
            f"measures again{where}"
        )
        record.note = f"{record.note}; {reused}" if record.note else reused
        record.cached = True
        return record

    def put(self, key: str, record: SpeedRecord) -> None:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.data[key] = {"measured_at": now, "record": record.model_dump(mode="json")}
        self._save({key: self.data[key]})

    def _save(self, new: dict[str, dict[str, Any]]) -> None:
        if self.path is None:
            return
        from audit.atomic import atomic_write_text
        from audit.cache import file_lock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, file_lock(self.path.with_name(".speed.lock")):
            merged: dict[str, Any] = {}
            if self.path.is_file():
                try:
                    raw = json.loads(self.path.read_text(encoding="utf-8"))
                    if raw.get("version") == CACHE_VERSION:
                        merged.update(raw.get("records", {}))
                except (OSError, ValueError, AttributeError):
                    pass
            merged.update(new)
            text = json.dumps({"version": CACHE_VERSION, "records": merged}, indent=0, sort_keys=True)
            atomic_write_text(self.path, text + "\n")
