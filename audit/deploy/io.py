"""Save and load a deployed variant: what was audited is what ships.

A saved variant is a directory with

* ``config.json``: the Hugging Face model config (structured pruning's records included),
* ``model.safetensors``: every tensor; deployed layers store their own arrays
  (e.g. ``<layer>.rowptr``, ``<layer>.cols``, ``<layer>.values``),
* ``deploy.json``: the manifest: format version, architecture, each Linear layer's
  format, shape and format parameters, scalar module attributes (for structured
  variants whose head counts changed), the activation functions a CATS variant gates
  (``activation_gates``; the thresholds are tensors), and the :class:`~audit.results.DeploymentRecord`,
* the tokenizer files, when a tokenizer is given.

:func:`load_deployed` rebuilds the architecture from the config, swaps in the recorded
layer formats and shapes, and loads the tensors strictly (a missing or unexpected
tensor is an error).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.deploy.activation import gated_activations, restore_gated_activations
from audit.deploy.format_classes import format_for
from audit.deploy.formats import DENSE
from audit.deploy.modules import DeployedLinear, top_level_linears
from audit.errors import ModelError, PluginError
from audit.results import DeploymentRecord

log = logging.getLogger(__name__)

MANIFEST = "deploy.json"
VARIANTS_DIR = "variants"
"""Saved variants go to ``<output_dir>/variants/<variant id>/``."""
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1
_SCALARS = (bool, int, float)


def _scalar_attrs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Plain scalar attributes of every non-Linear module (head counts, sizes, ...)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, DeployedLinear)):
            continue
        attrs = {
            k: v
            for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and isinstance(v, _SCALARS)
        }
        if attrs:
            out[name] = attrs
    return out


def variant_dir(out_dir: str | Path, variant_id: str) -> Path:
    """``<out_dir>/variants/<variant_id>``, checked to stay inside ``out_dir`` (see :mod:`audit.paths`).

    Raises:
        audit.paths.UnsafePathError: The id cannot be a directory name, or a symbolic
            link inside ``out_dir`` is on the way.
    """
    from audit.paths import check_name, safe_join

    return safe_join(out_dir, VARIANTS_DIR, check_name(variant_id, what="variant id"), what="saved variant")


def save_deployed(
    model: nn.Module,
    path: str | Path,
    *,
    tokenizer: Any = None,
    record: DeploymentRecord | None = None,
    root: str | Path | None = None,
) -> Path:
    """Write a deployed model to directory ``path`` (replaced atomically if it exists).

    Args:
        model: The deployed model.
        path: Target directory; relative to ``root`` when ``root`` is given.
        tokenizer: Saved alongside when given.
        record: The deployment record, stored in the manifest.
        root: The output directory: ``path`` must stay inside it, through no symbolic
            link (:func:`audit.paths.safe_join`); without it ``path`` is used as given.
    """
    from safetensors.torch import save_file

    if root is not None:
        from audit.paths import safe_join

        target = safe_join(root, path, what="saved variant")
    else:
        target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        layers: dict[str, dict[str, Any]] = {}
        tensors: dict[str, torch.Tensor] = {}
        prefixes: list[str] = []
        for name, module in top_level_linears(model):  # a per-regime layer's own modules are saved by it
            if isinstance(module, DeployedLinear):
                layers[name] = {
                    "format": module.format,
                    "in_features": module.in_features,
                    "out_features": module.out_features,
                    "meta": module.meta(),
                }
                prefixes.append(name + ".")
                for key, t in module.state_tensors().items():
                    tensors[f"{name}.{key}"] = t.detach().cpu().contiguous()
            elif isinstance(module, nn.Linear):
                layers[name] = {
                    "format": DENSE,
                    "in_features": module.in_features,
                    "out_features": module.out_features,
                    "bias": module.bias is not None,
                }
        seen: set[int] = set()
        for key, t in model.state_dict().items():
            if any(key.startswith(p) for p in prefixes):
                continue
            t = t.detach().cpu()
            ptr = t.data_ptr()
            if ptr in seen:  # safetensors refuses shared storage (tied weights): store a copy
                t = t.clone()
            seen.add(ptr)
            tensors[key] = t.contiguous()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "prune_audit": str(FORMAT_VERSION)})
        cfg = getattr(model, "config", None)
        if cfg is None:
            raise ModelError("only Hugging Face models (with a .config) can be saved as deployed variants")
        cfg.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "library": "prune-audit",
            "architecture": type(model).__name__,
            "torch": torch.__version__,
            "layers": layers,
            "attrs": _scalar_attrs(model),
            "activation_gates": gated_activations(model),
            "deployment": record.model_dump(mode="json") if record is not None else None,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise ModelError(f"{path} is not a saved deployed variant (no {MANIFEST})", where=str(path))
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable {MANIFEST}: {exc}", where=str(p)) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{MANIFEST} has format_version {manifest.get('format_version')!r}; this version reads {FORMAT_VERSION}",
            where=str(p),
        )
    return manifest


def load_deployed(path: str | Path, *, device: str = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_deployed`, in eval mode, on ``device``.

    ``kernel`` layers run on CPU only; ``semi24`` layers need ``device="cuda"``.
    """
    import transformers
    from safetensors.torch import load_file

    root = Path(path)
    manifest = read_manifest(root)
    config = transformers.AutoConfig.from_pretrained(str(root), local_files_only=True)
    arch = manifest["architecture"]
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise ModelError(f"unknown architecture {arch!r} in {MANIFEST}", where=str(root))
    model = cls._from_config(config)
    tensors = load_file(str(root / WEIGHTS))
    for name, spec in manifest["layers"].items():
        in_f, out_f = int(spec["in_features"]), int(spec["out_features"])
        if spec["format"] == DENSE:
            current = model.get_submodule(name)
            if not isinstance(current, nn.Linear) or (current.in_features, current.out_features) != (in_f, out_f):
                _set(model, name, nn.Linear(in_f, out_f, bias=bool(spec.get("bias", True))))
            continue
        prefix = name + "."
        own = {k[len(prefix) :]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        try:
            module = format_for(spec["format"]).load(in_f, out_f, own, spec.get("meta", {}), device=device)
        except (KeyError, RuntimeError, PluginError) as exc:
            raise ModelError(f"cannot rebuild layer {name} ({spec['format']}): {exc}", where=str(root)) from None
        _set(model, name, module)
    for name, attrs in manifest.get("attrs", {}).items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelError(
                f"{MANIFEST} names module {name!r}, which this architecture lacks", where=str(root)
            ) from None
        for key, value in attrs.items():
            if getattr(module, key, None) != value:
                setattr(module, key, value)
    restore_gated_activations(model, manifest.get("activation_gates") or {})
    deployed = {n + "." for n, m in model.named_modules() if isinstance(m, DeployedLinear)}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not any(k.startswith(p) for p in deployed)]
    if missing or unexpected:
        raise ModelError(
            f"saved tensors do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}",
            where=str(root / WEIGHTS),
        )
    model.eval()
    return model.to(device) if device != "cpu" else model


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
