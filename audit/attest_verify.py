"""Verify an attestation: the DSSE signature with a public key, then every subject's sha256 (no torch).

Exit codes through the CLI: a signature that does not verify or a subject that is missing or
changed is :class:`~audit.attest.VerificationFailed` (1, naming the file); an envelope that is
not DSSE, an unparsable or non-Ed25519 key is a :class:`~audit.errors.UsageError` (4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from audit.attest import (
    MODEL_PREFIX,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    VerificationFailed,
    _b64decode,
    _sha256,
    _tree_files,
    keyid,
    load_public_key,
    pae,
)
from audit.errors import UsageError

HEX = frozenset("0123456789abcdef")


class Verified(BaseModel):
    """A verified attestation: the key that signed it, the statement and the subjects checked."""

    keyid: str
    statement: dict[str, Any]
    checked: list[str]
    artifacts: Path
    model_root: Path | None


def read_envelope(path: str | Path) -> tuple[bytes, str, list[bytes]]:
    """(payload, payloadType, signatures) of a DSSE JSON envelope; anything else is a UsageError."""
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise UsageError("envelope file not found", where=where)
    try:
        env = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError("not a DSSE envelope: expected a JSON object, found no valid JSON", where=where) from None
    if not isinstance(env, dict) or not {"payload", "payloadType", "signatures"} <= set(env):
        found = sorted(env) if isinstance(env, dict) else type(env).__name__
        raise UsageError(
            f"not a DSSE envelope: expected payload, payloadType and signatures, found {found}", where=where
        )
    payload = _b64decode(env["payload"], "payload", where)
    ptype = env["payloadType"]
    sigs = env["signatures"]
    if not isinstance(ptype, str):
        raise UsageError("not a DSSE envelope: payloadType is not a string", where=where)
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, dict) and "sig" in s for s in sigs):
        raise UsageError("not a DSSE envelope: signatures must be a non-empty list of {sig: ...}", where=where)
    return payload, ptype, [_b64decode(s["sig"], "a signature", where) for s in sigs]


def verify_signature(payload: bytes, payload_type: str, signatures: list[bytes], public_key: Any) -> bool:
    """True when one of ``signatures`` is ``public_key``'s Ed25519 signature of the PAE (threshold 1)."""
    from cryptography.exceptions import InvalidSignature

    message = pae(payload_type, payload)
    for sig in signatures:
        try:
            public_key.verify(sig, message)
            return True
        except InvalidSignature:
            continue
    return False


def _statement(payload: bytes, where: str) -> dict[str, Any]:
    try:
        st = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError("the signed payload is not JSON", where=where) from None
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE:
        raise UsageError(f"the signed payload is not an in-toto Statement ({STATEMENT_TYPE})", where=where)
    if st.get("predicateType") != PREDICATE_TYPE:
        raise UsageError(f"expected predicateType {PREDICATE_TYPE}, found {st.get('predicateType')!r}", where=where)
    subjects = st.get("subject")
    if not isinstance(subjects, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and is_sha256(s.get("digest", {}).get("sha256"))
        for s in subjects
    ):
        raise UsageError("the statement's subjects are not {name, digest: {sha256}} records", where=where)
    return st


def is_sha256(value: Any) -> bool:
    """A lowercase hex sha256 digest (64 characters)."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= HEX


def _resolve(name: str, artifacts: Path, model_root: Path | None) -> Path | None:
    """Where subject ``name`` is read: ``model/...`` under the model's path, the rest under ``artifacts``."""
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts:
        return None  # a signed statement of ours never names one; refuse to read outside the roots
    if name.startswith(MODEL_PREFIX):
        if model_root is None:
            return None
        rest = name[len(MODEL_PREFIX) :]
        return model_root if model_root.is_file() and rest == model_root.name else model_root / rest
    return artifacts / name


def verify_envelope(
    envelope: str | Path,
    key: str | Path,
    *,
    artifacts: str | Path | None = None,
    model: str | Path | None = None,
) -> Verified:
    """Check the signature, then recompute every subject's sha256.

    ``artifacts`` (default: the envelope's directory) is the root of ``results.json`` and
    ``variants/...``; ``model`` (default: the model source the statement records) the dense
    checkpoint's directory or GGUF file that ``model/...`` subjects are read from.

    The model directory and each saved variant's directory were signed whole, and
    ``from_pretrained`` loads whatever lies in them (an added adapter, shard index or weights
    file changes the model), so a file there that the statement does not list fails too.

    Raises:
        UsageError: The key or the envelope is not what is expected.
        VerificationFailed: The signature does not verify with ``key``, a subject is missing
            or its sha256 differs, or a signed directory holds a file the statement does not
            list (every such file is named).
    """
    public_key = load_public_key(key)
    payload, ptype, sigs = read_envelope(envelope)
    kid = keyid(public_key)
    if not verify_signature(payload, ptype, sigs, public_key):
        raise VerificationFailed(f"signature does not verify with key {key} (keyid {kid[:16]})", where=str(envelope))
    if ptype != PAYLOAD_TYPE:
        raise UsageError(f"expected payloadType {PAYLOAD_TYPE}, found {ptype!r}", where=str(envelope))
    st = _statement(payload, str(envelope))
    root = Path(artifacts) if artifacts is not None else Path(envelope).resolve().parent
    model_root = Path(model) if model is not None else _recorded_model(st)
    problems, checked = [], []
    for s in st["subject"]:
        name, want = s["name"], s["digest"]["sha256"]
        path = _resolve(name, root, model_root)
        if path is None or not path.is_file():
            problems.append(f"{name} is missing" + (f" ({path})" if path is not None else ""))
        elif (got := _sha256(path)) != want:
            problems.append(f"{name} changed (sha256 {got[:12]}, signed {want[:12]})")
        else:
            checked.append(name)
    problems += [f"{name} is not in the statement (added after signing)" for name in _unlisted(st, root, model_root)]
    if problems:
        raise VerificationFailed(
            f"{len(problems)} of {len(st['subject'])} subjects do not verify: " + "; ".join(problems),
            where=str(envelope),
        )
    return Verified(keyid=kid, statement=st, checked=checked, artifacts=root, model_root=model_root)


def _signed_dirs(st: dict[str, Any], names: set[str], root: Path, model_root: Path | None) -> list[tuple[str, Path]]:
    """(subject-name prefix, directory) of each directory the statement signed file by file."""
    out = []
    if model_root is not None and model_root.is_dir() and any(n.startswith(MODEL_PREFIX) for n in names):
        out.append((MODEL_PREFIX, model_root))
    for v in (st.get("predicate") or {}).get("variants") or []:
        saved = v.get("saved_to") if isinstance(v, dict) else None
        if isinstance(saved, str) and saved and (d := _resolve(saved, root, None)) is not None and d.is_dir():
            out.append((saved.rstrip("/") + "/", d))
    return out


def _unlisted(st: dict[str, Any], root: Path, model_root: Path | None) -> list[str]:
    """Files in the signed directories that are not subjects, as subject names."""
    names = {s["name"] for s in st["subject"]}
    return [
        name
        for prefix, d in _signed_dirs(st, names, root, model_root)
        for f in _tree_files(d)
        if (name := prefix + f.relative_to(d).as_posix()) not in names
    ]


def _recorded_model(st: dict[str, Any]) -> Path | None:
    source = (st.get("predicate") or {}).get("model", {}).get("source")
    return Path(source) if isinstance(source, str) and source else None
