"""Signed attestations of an audit: an in-toto Statement v1 in a DSSE envelope, signed with Ed25519.

The statement's subjects are the sha256 digests of what the audit vouches for: the
results file, the dense checkpoint's files (``model/<file>``) and every file of each saved
deployed variant (``variants/<id>/<file>``). Subject names are relative to a root, so a
copied tree verifies as well as the original: results and variants against the artifacts
directory (default: the directory the envelope lies in), ``model/...`` against the
recorded model path (or ``--model``). Its predicate carries the verdict, the policy's
identity, the results' digest, the tool version and the run id. Offline; no torch.

Specs: in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md)
and DSSE v1 (https://github.com/secure-systems-lab/dsse/blob/master/protocol.md).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from audit.errors import AuditError, ExitCode, UsageError
from audit.fingerprint import file_sha256

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://prune-audit.dev/attestation/audit/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
ENVELOPE_NAME = "attestation.dsse.json"
"""The envelope's default file, beside results.json."""
SUMMARY_NAME = "attestation.json"
"""The summary the reports read (:class:`AttestationSummary`); not a subject."""
MODEL_PREFIX = "model/"
PRIVATE_KEY_NAME = "attest-key.pem"
PUBLIC_KEY_NAME = "attest-key.pub.pem"
SKIP_DIRS = (".git", "__pycache__")  # as :func:`audit.fingerprint.dir_sha256` skips them


class VerificationFailed(AuditError):
    """The envelope's signature or a subject's digest does not verify (exit code 1)."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class Subject(BaseModel):
    """One attested file: its name in the statement, where it was read, its digest."""

    name: str
    path: Path
    sha256: str


class AttestationSummary(BaseModel):
    """What the reports state about the attestation (written to ``attestation.json`` by ``attest``)."""

    envelope: str
    sha256: str
    keyid: str
    subjects: int
    results_sha256: str
    created: str


# -- DSSE ---------------------------------------------------------------------------------


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 LEN(type) type LEN(body) body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def _b64decode(text: Any, what: str, where: str) -> bytes:
    """Standard or URL-safe base64 (DSSE verifiers must accept both)."""
    if not isinstance(text, str):
        raise UsageError(f"not a DSSE envelope: {what} is not a base64 string", where=where)
    s = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"not a DSSE envelope: {what} is not valid base64", where=where) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- keys ---------------------------------------------------------------------------------


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise UsageError(f"{what} key file not found", where=str(path))
    return path.read_bytes()


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from a PEM (PKCS#8) file; anything else is a :class:`UsageError`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    data = _read_key_file(p, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"expected an unencrypted PEM (PKCS#8) Ed25519 private key, found a file that does not parse as one "
            f"({_reason(exc)})",
            where=str(p),
            hint="make one with `prune-audit attest keygen --out DIR`",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(
            f"expected an Ed25519 private key, found {_key_kind(key)}",
            where=str(p),
            hint="make one with `prune-audit attest keygen --out DIR`",
        )
    return key


def load_public_key(path: str | Path) -> Any:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file; anything else is a :class:`UsageError`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    p = Path(path)
    data = _read_key_file(p, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"expected a PEM (SubjectPublicKeyInfo) Ed25519 public key, found a file that does not parse as one "
            f"({_reason(exc)})",
            where=str(p),
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"expected an Ed25519 public key, found {_key_kind(key)}", where=str(p))
    return key


def _reason(exc: Exception) -> str:
    """The reason cryptography gives, less its FAQ link: the last word (``MalformedFraming``) or first sentence."""
    text = " ".join(str(exc).split())
    if "cryptography.io" in text:
        return text.rsplit(" ", 1)[-1]
    return text.split(". ")[0] or type(exc).__name__


def _key_kind(key: Any) -> str:
    names = {"rsa": "an RSA key", "elliptic": "an elliptic-curve key", "dsa": "a DSA key", "ed448": "an Ed448 key"}
    name = type(key).__name__.lower()
    kind = next((text for k, text in names.items() if k in name), f"a {type(key).__name__} key")
    size = getattr(key, "key_size", None)
    return kind + (f" ({size} bits)" if size else "")


def keyid(public_key: Any) -> str:
    """sha256 (hex) of the raw 32-byte Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``; never replaces a file that exists."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails when the target exists: no overwrite, even under a race
    finally:
        os.unlink(tmp)


def generate_keys(out_dir: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair in ``out_dir``: the private key (0600) and the public key; refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError("expected a directory for the keys, found a file", where=str(out))
    priv_path, pub_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise UsageError("key file exists; refusing to overwrite it", where=str(p), hint="pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _write_new(priv_path, priv, 0o600)
        _write_new(pub_path, pub, 0o644)
    except FileExistsError as exc:
        raise UsageError("key file exists; refusing to overwrite it", where=str(exc.filename or out)) from None
    return priv_path, pub_path


# -- subjects -----------------------------------------------------------------------------


def _tree_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files += [Path(dirpath) / name for name in filenames]
    return sorted(files, key=lambda q: q.relative_to(root).as_posix())


def model_location(result: Any, override: str | Path | None = None) -> tuple[Path | None, str]:
    """Where the dense checkpoint's files are, and why none when there are none to attest.

    A local directory (a ``save_pretrained`` checkpoint, or the demo's cached model) is
    attested file by file; a GGUF file as one subject; a hub model has no local files the
    results record (its fingerprint is ``hub:<id>@<revision>``), so it has none.
    """
    model = result.model
    if override is not None:
        return Path(override), ""
    if model.gguf is None and str(model.fingerprint).startswith("hub:"):
        return None, f"hub model {model.fingerprint}: no local checkpoint files are recorded"
    return Path(model.source), ""


def model_subjects(result: Any, override: str | Path | None = None) -> tuple[list[Subject], str]:
    """The dense checkpoint's subjects, checked against the fingerprint the audit recorded."""
    root, why = model_location(result, override)
    if root is None:
        return [], why
    model = result.model
    where = f"--model {root}" if override is not None else f"model.source {root}"
    if model.gguf is not None:
        if not root.is_file():
            raise UsageError("the audited GGUF file is not there", where=where, hint="pass --model PATH")
        subjects = [Subject(name=MODEL_PREFIX + root.name, path=root, sha256=_sha256(root))]
        if subjects[0].sha256 != model.fingerprint:
            raise UsageError(
                f"the GGUF file's sha256 {subjects[0].sha256[:12]} is not the audited one {model.fingerprint[:12]}",
                where=where,
            )
        return subjects, ""
    if not root.is_dir():
        raise UsageError("the audited model directory is not there", where=where, hint="pass --model DIR")
    from audit.fingerprint import dir_sha256

    if dir_sha256(root, skip=SKIP_DIRS, cached=False) != model.fingerprint:
        raise UsageError(
            f"the model directory's files are not the audited ones (fingerprint {model.fingerprint[:12]})",
            where=where,
            hint="attest the checkpoint the run audited",
        )
    subjects = [
        Subject(name=MODEL_PREFIX + f.relative_to(root).as_posix(), path=f, sha256=_sha256(f))
        for f in _tree_files(root)
    ]
    return subjects, ""


def variant_subjects(result: Any, root: Path) -> list[Subject]:
    """Every file of every saved deployed variant (``variants/<id>/...``, relative to ``root``)."""
    from audit.paths import safe_join

    out: list[Subject] = []
    for v in result.variants:
        saved = v.deployment.saved_to if v.deployment is not None else None
        if not saved:
            continue
        d = safe_join(root, saved, what="saved variant")
        if not d.is_dir():
            raise UsageError(
                f"saved variant {v.id} is not there (results record {saved})",
                where=str(d),
                hint="attest the results.json in the run's own output directory",
            )
        out += [Subject(name=f.relative_to(root).as_posix(), path=f, sha256=_sha256(f)) for f in _tree_files(d)]
    return out


def _sha256(path: Path) -> str:
    return file_sha256(path, cached=False)


# -- statement ----------------------------------------------------------------------------


def policy_record(result: Any) -> dict[str, Any] | None:
    """The judging policy's identity: name, content fingerprint, file and the file's sha256.

    The file's sha256 is given only when the file recorded in ``verdict.policy_source`` is
    still there and still loads to the fingerprint the verdict records; else null.
    """
    verdict = result.verdict
    if verdict is None:
        return None
    src = verdict.policy_source
    rec: dict[str, Any] = {
        "name": verdict.policy_name or verdict.policy,
        "label": verdict.policy,
        "fingerprint": verdict.policy_fingerprint,
        "file": src.file if src is not None else None,
        "builtin": src.builtin if src is not None else None,
        "file_sha256": None,
    }
    path = _policy_path(src)
    if path is not None and path.is_file():
        from audit.policy import load_policy

        try:
            pol, _ = load_policy(str(path))
        except UsageError:
            return rec
        if pol.fingerprint() == verdict.policy_fingerprint:
            rec["file_sha256"] = _sha256(path)
    return rec


def _policy_path(src: Any) -> Path | None:
    if src is None or src.file is None:
        return None
    if src.builtin is not None:
        from audit.policy import builtin_policies

        return builtin_policies().get(src.builtin)
    return Path(src.file)


def build_statement(
    result: Any, subjects: list[Subject], results_subject: Subject, *, model_note: str, now: str
) -> dict[str, Any]:
    """The in-toto Statement v1 (a plain dict, serialised once for signing)."""
    from audit import __version__

    v = result.verdict
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": s.name, "digest": {"sha256": s.sha256}} for s in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "run_id": result.run_id,
            "verdict": None
            if v is None
            else {
                "status": v.status,
                "exit_code": v.exit_code,
                "counts": v.counts,
                "max_compliant_sparsity": v.max_compliant_sparsity,
            },
            "policy": policy_record(result),
            "results": {"name": results_subject.name, "sha256": results_subject.sha256},
            "schema_version": result.schema_version,
            "tool": {"name": "prune-audit", "version": __version__},
            "audited_with": result.provenance.tool_version,
            "created": now,
            "model": {
                "source": result.model.source,
                "fingerprint": result.model.fingerprint,
                "revision": result.model.revision,
                "subject_prefix": MODEL_PREFIX,
                "note": model_note or None,
            },
            "variants": [
                {
                    "id": x.id,
                    "method": x.point.method,
                    "sparsity": x.point.sparsity,
                    "seed": x.point.seed,
                    "saved_to": x.deployment.saved_to if x.deployment is not None else None,
                }
                for x in result.variants
            ],
        },
    }


def sign_statement(statement: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """The DSSE envelope of ``statement`` with one Ed25519 signature over its PAE."""
    body = (json.dumps(statement, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    sig = private_key.sign(pae(PAYLOAD_TYPE, body))
    return {
        "payload": _b64(body),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": keyid(private_key.public_key()), "sig": _b64(sig)}],
    }


# -- signing ------------------------------------------------------------------------------


class Signed(BaseModel):
    """What :func:`sign_results` made: the envelope's path and bytes, the summary, the subjects."""

    root: Path
    """The results' directory: ``attestation.json`` and the re-rendered reports go here."""
    envelope_path: Path
    envelope_bytes: bytes
    summary: AttestationSummary
    subjects: list[Subject]
    result: Any = None


def sign_results(
    results_path: str | Path,
    key_path: str | Path,
    *,
    output: str | Path | None = None,
    model: str | Path | None = None,
    now: dt.datetime | None = None,
) -> Signed:
    """Check every input, then build and sign the statement (nothing is written here).

    Raises:
        UsageError: The key does not parse or is not Ed25519, the results file is not one of
            this schema version, the audited checkpoint or a saved variant is missing or changed.
    """
    from audit.results import load_results

    key = load_private_key(key_path)
    rpath = Path(results_path)
    result = load_results(rpath)
    root = rpath.resolve().parent
    target = Path(output) if output is not None else root / ENVELOPE_NAME
    if target.is_dir():
        raise UsageError("expected a file for the envelope, found a directory", where=str(target))
    results_subject = Subject(name=rpath.name, path=rpath, sha256=_sha256(rpath))
    model_subs, note = model_subjects(result, model)
    subjects = [results_subject, *model_subs, *variant_subjects(result, root)]
    stamp = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    statement = build_statement(result, subjects, results_subject, model_note=note, now=stamp)
    envelope = sign_statement(statement, key)
    data = (json.dumps(envelope, indent=2) + "\n").encode("utf-8")
    try:
        shown = target.resolve().relative_to(root).as_posix()
    except ValueError:
        shown = str(target.resolve())
    summary = AttestationSummary(
        envelope=shown,
        sha256=hashlib.sha256(data).hexdigest(),
        keyid=envelope["signatures"][0]["keyid"],
        subjects=len(subjects),
        results_sha256=results_subject.sha256,
        created=stamp,
    )
    return Signed(
        root=root, envelope_path=target, envelope_bytes=data, summary=summary, subjects=subjects, result=result
    )


def write_signed(signed: Signed) -> Path:
    """Write the envelope, then ``attestation.json`` beside the results (each atomically); the summary's path."""
    from audit.atomic import atomic_write_bytes, atomic_write_text

    atomic_write_bytes(signed.envelope_path, signed.envelope_bytes)
    summary_path = signed.root / SUMMARY_NAME
    atomic_write_text(summary_path, signed.summary.model_dump_json(indent=2) + "\n")
    return summary_path


def load_summary(results_path: str | Path) -> AttestationSummary | None:
    """The attestation summary beside ``results_path`` when it attests this very file, else None.

    ``prune-audit report`` states the attestation only when the results it renders are the
    ones that were signed (their sha256 is the summary's ``results_sha256``).
    """
    rpath = Path(results_path)
    p = rpath.resolve().parent / SUMMARY_NAME
    if not p.is_file():
        return None
    try:
        summary = AttestationSummary.model_validate_json(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return summary if summary.results_sha256 == _sha256(rpath) else None
