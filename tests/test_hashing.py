"""Hashing lives in one module (audit.fingerprint); the old import places name the same functions."""

from __future__ import annotations

import hashlib
from pathlib import Path

from audit import fingerprint, plan, store


def test_old_import_places_are_the_one_implementation() -> None:
    assert plan.canonical_json is fingerprint.canonical_json
    assert plan.sha256_text is fingerprint.sha256_text
    assert store.file_fingerprint is fingerprint.file_sha256


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert fingerprint.canonical_json({"b": [1, 2], "a": {"y": 1, "x": "é"}}) == '{"a":{"x":"\\u00e9","y":1},"b":[1,2]}'


def test_file_hash_is_sha256_of_the_bytes_across_read_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 2 read blocks of 1 MiB
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    assert fingerprint.file_sha256(f) == hashlib.sha256(data).hexdigest()
    assert fingerprint.sha256_text("é") == hashlib.sha256("é".encode()).hexdigest()
