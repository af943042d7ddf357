"""Content fingerprints for models, data files and configs (sha256, hex): every hash of the project.

``canonical_json`` is the input of every hash of a value (config, params, keys);
``file_sha256`` of every hash of a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_cache: dict[tuple[str, int, int], str] = {}


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every content hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    """sha256 (hex) of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path, *, cached: bool = True) -> str:
    """sha256 of a file, memoised on (path, size, mtime); ``cached=False`` always reads the bytes.

    Attestations read uncached: a same-size rewrite within the clock's granularity keeps the mtime.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if cached and key in _cache:
        return _cache[key]
    h = hashlib.sha256()
    with p.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _cache[key] = digest
    return digest


def dir_sha256(path: str | Path, *, skip: Iterable[str] = (".git", "__pycache__"), cached: bool = True) -> str:
    """sha256 over the relative names and contents of every file under ``path``."""
    root = Path(path)
    skip_set = set(skip)
    h = hashlib.sha256()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_set)
        for name in filenames:
            files.append(Path(dirpath) / name)
    for f in sorted(files, key=lambda q: q.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(file_sha256(f, cached=cached).encode())
        h.update(b"\n")
    return h.hexdigest()


def texts_sha256(texts: Iterable[str], labels: Iterable[object] = ()) -> str:
    """sha256 of a sequence of texts (and labels): the identity of an evaluated set."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    h.update(b"\x01labels")
    for label in labels:
        h.update(repr(label).encode())
        h.update(b"\0")
    return h.hexdigest()


def short(digest: str, n: int = 12) -> str:
    return digest[:n]
