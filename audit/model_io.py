"""Loading the audited classifier: local checkpoints (safetensors) or the hub when online."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.config import AuditConfig, ModelConfig
from audit.errors import ModelError
from audit.fingerprint import dir_sha256, short
from audit.results import ModelIdentity

log = logging.getLogger(__name__)

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
SAFE_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class LoadedModel:
    """A classifier, its tokenizer and its identity."""

    model: Any
    tokenizer: Any
    identity: ModelIdentity
    source_dir: Path | None

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


def load_model(config: AuditConfig) -> LoadedModel:
    """Load tokenizer and sequence-classification model as the config says (:func:`load_checkpoint`)."""
    return load_checkpoint(config.model, config.paths.model_dir, offline=config.offline)


def load_checkpoint(spec: ModelConfig, local: Path | None, *, offline: bool) -> LoadedModel:
    """Load the tokenizer and sequence-classification model ``spec`` names.

    ``local``: ``spec.path`` resolved (None for a hub model); ``offline``: never touch the network.
    """
    if not spec.path:
        local = None
    if local is not None:
        check_model_dir(spec, local)
    import torch  # noqa: F401 - imported here so that config validation stays torch-free
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = str(local) if local is not None else str(spec.hub_id)
    where = f"model.path={spec.path}" if local is not None else f"model.hub_id={spec.hub_id}"
    common: dict[str, Any] = {
        "trust_remote_code": spec.trust_remote_code,
        "local_files_only": offline or local is not None,
    }
    if spec.revision and local is None:
        common["revision"] = spec.revision
    try:
        hf_config = AutoConfig.from_pretrained(source, **common)
    except Exception as exc:  # noqa: BLE001
        hint = None
        if "custom code" in str(exc) and not spec.trust_remote_code:
            hint = "the checkpoint ships its own code; set model.trust_remote_code: true only if you trust it"
        raise ModelError(f"cannot read the model config: {_first_line(exc)}", where=where, hint=hint) from None
    use_safetensors = not spec.allow_pickle or (local is not None and any((local / f).is_file() for f in SAFE_FILES))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=hf_config,
            use_safetensors=use_safetensors,
            output_loading_info=True,
            **common,
        )
    except ValueError as exc:
        raise ModelError(f"not a sequence-classification checkpoint: {_first_line(exc)}", where=where) from None
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the model: {_first_line(exc)}", where=where) from None
    missing = [k for k in info.get("missing_keys", []) if "classifier" in k or "score" in k]
    if missing:
        raise ModelError(
            f"the checkpoint has no trained classification head (missing {', '.join(missing[:3])})",
            where=where,
            hint="audit a fine-tuned classifier; a bare encoder would get a random head",
        )
    model.eval()
    if local is not None:
        fingerprint = dir_sha256(local)
    else:
        fingerprint = f"hub:{spec.hub_id}@{getattr(hf_config, '_commit_hash', None) or spec.revision}"
    n_params = sum(p.numel() for p in model.parameters())
    identity = ModelIdentity(
        source=source,
        revision=spec.revision or getattr(hf_config, "_commit_hash", None),
        fingerprint=fingerprint,
        architecture=(hf_config.architectures or [type(model).__name__])[0],
        num_labels=int(hf_config.num_labels),
        labels={str(k): str(v) for k, v in hf_config.id2label.items()},
        params_total=int(n_params),
    )
    log.info(
        "loaded %s (%s, %.1fM params, fingerprint %s)",
        source,
        identity.architecture,
        n_params / 1e6,
        short(fingerprint),
    )
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, source_dir=local)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
