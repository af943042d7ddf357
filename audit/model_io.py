"""Loading the audited model: local checkpoints (safetensors) or the hub when online.

The checks of a checkpoint directory are family-independent; the loading itself is the
model adapter's (:mod:`audit.models`), chosen from the checkpoint's architecture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.config import AuditConfig, ModelConfig
from audit.errors import ModelError
from audit.results import ModelIdentity

log = logging.getLogger(__name__)

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
SAFE_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class LoadedModel:
    """A model, its tokenizer, its identity and the adapter of its family (:mod:`audit.models`)."""

    model: Any
    tokenizer: Any
    identity: ModelIdentity
    source_dir: Path | None
    adapter: Any = None
    """The :class:`~audit.models.adapter.ModelAdapter` that loaded it."""

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.model.config.id2label.items()}

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)


def check_model_dir(spec: ModelConfig, path: Path) -> None:
    """Fail fast, before any import of torch, when a local checkpoint is unusable."""
    where = f"model.path={spec.path}"
    if not path.exists():
        raise ModelError(
            f"no model directory at {path}",
            where=where,
            hint="point model.path at a saved Hugging Face checkpoint (save_pretrained output)",
        )
    if not path.is_dir():
        raise ModelError(f"{path} is a file; expected a checkpoint directory", where=where)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; not a Hugging Face checkpoint directory", where=where)
    has_safe = any((path / f).is_file() for f in SAFE_FILES)
    has_pickle = any((path / f).is_file() for f in PICKLE_FILES)
    if not has_safe and not has_pickle:
        raise ModelError(f"{path} has no weights (model.safetensors)", where=where)
    if not has_safe and has_pickle and not spec.allow_pickle:
        raise ModelError(
            f"{path} has only pickle weights (pytorch_model.bin); pickle can run arbitrary code",
            where=where,
            hint="convert to safetensors, or set model.allow_pickle: true if you trust the file",
        )
    tok_files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json")
    if not any((path / f).is_file() for f in tok_files):
        raise ModelError(f"{path} has no tokenizer files", where=where, hint="save the tokenizer with the model")


def check_gguf_file(spec: ModelConfig, path: Path) -> None:
    """Fail fast, before any import of torch, when ``model.gguf_file`` is not a file."""
    where = f"model.gguf_file={spec.gguf_file}"
    if not path.exists():
        raise ModelError(f"no GGUF file at {path}", where=where, hint="point model.gguf_file at a .gguf file")
    if not path.is_file():
        raise ModelError(f"{path} is a directory; expected a GGUF file", where=where)


def model_location(config: AuditConfig) -> Path | None:
    """The local model the config names, resolved: ``model.path`` or ``model.gguf_file`` (None for a hub id)."""
    if config.model.gguf_file is not None:
        return config.paths.resolve(config.model.gguf_file)
    return config.paths.model_dir


def load_model(config: AuditConfig) -> LoadedModel:
    """Load the tokenizer and model as the config says (:func:`load_checkpoint`)."""
    return load_checkpoint(config.model, model_location(config), offline=config.offline)


def _common(spec: ModelConfig, local: Path | None, offline: bool) -> dict[str, Any]:
    common: dict[str, Any] = {
        "trust_remote_code": spec.trust_remote_code,
        "local_files_only": offline or local is not None,
    }
    if spec.revision and local is None:
        common["revision"] = spec.revision
    return common


def read_hf_config(spec: ModelConfig, local: Path | None, *, offline: bool) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's transformers config and the ``from_pretrained`` keywords every load uses."""
    from transformers import AutoConfig

    source = str(local) if local is not None else str(spec.hub_id)
    where = f"model.path={spec.path}" if local is not None else f"model.hub_id={spec.hub_id}"
    common = _common(spec, local, offline)
    try:
        return AutoConfig.from_pretrained(source, **common), common
    except Exception as exc:  # noqa: BLE001
        hint = None
        if "custom code" in str(exc) and not spec.trust_remote_code:
            hint = "the checkpoint ships its own code; set model.trust_remote_code: true only if you trust it"
        raise ModelError(f"cannot read the model config: {first_line(exc)}", where=where, hint=hint) from None


def load_checkpoint(spec: ModelConfig, local: Path | None, *, offline: bool) -> LoadedModel:
    """Load the tokenizer and model ``spec`` names, through the adapter of its architecture.

    ``local``: ``spec.path`` resolved (None for a hub model); ``offline``: never touch the
    network. The adapter (:func:`audit.models.adapter_for`) is chosen from the
    checkpoint's ``config.architectures`` (``model_type`` when none matches) and
    ``model.kind`` when the config sets one. ``model.gguf_file``: ``local`` is the resolved
    file, loaded by the causal-LM adapter.
    """
    if getattr(spec, "gguf_file", None):
        if local is None:
            raise ModelError("model.gguf_file was not resolved to a path", where="model.gguf_file")
        check_gguf_file(spec, local)
        import torch  # noqa: F401

        from audit.models import CAUSAL_LM

        return CAUSAL_LM.load()(CAUSAL_LM).load(spec, local, offline=True)  # a GGUF file is a causal LM
    if not spec.path:
        local = None
    if local is not None:
        check_model_dir(spec, local)
    import torch  # noqa: F401 - imported here so that config validation stays torch-free

    from audit.models import adapter_for

    where = f"model.path={spec.path}" if local is not None else f"model.hub_id={spec.hub_id}"
    hf_config, common = read_hf_config(spec, local, offline=offline)
    adapter = adapter_for(hf_config, kind=model_kind(spec), where=where)
    return adapter.load(spec, local, offline=offline, hf_config=hf_config, common=common)


def model_kind(spec: ModelConfig) -> str | None:
    """``model.kind`` when the config has that setting (``auto``: None)."""
    kind = getattr(spec, "kind", None)
    return None if kind in (None, "auto") else str(kind)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_first_line = first_line
