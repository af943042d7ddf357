"""Deployment: every pruned variant is audited in the form that ships.

Unstructured and N:M variants become sparse Linear layers that store only their
non-zeros and run a fast path chosen per layer by measurement (the compiled kernel,
torch CSR/BSR, 2:4 on CUDA, or dense where sparse cannot win); structured variants are
already physically smaller dense layers. Each deployed variant is checked against its
masked-dense reference on a probe batch, timed against the dense model, and can be
saved and loaded back (safetensors + config).

Public API (imported lazily: importing :mod:`audit.deploy` does not import torch)::

    from audit.deploy import Converter, deploy_variant, save_deployed, load_deployed

A converter is configured by the audit config's ``deploy:`` section itself
(:class:`audit.config.DeployConfig`). Formats are registered classes
(:mod:`audit.deploy.formats`, :mod:`audit.deploy.format_classes`).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "FORMATS": "audit.deploy.formats",
    "FormatSpec": "audit.deploy.formats",
    "register_format": "audit.deploy.formats",
    "DeployFormat": "audit.deploy.format_classes",
    "Converter": "audit.deploy.convert",
    "Conversion": "audit.deploy.convert",
    "DeployContext": "audit.deploy.pipeline",
    "deploy_variant": "audit.deploy.pipeline",
    "save_deployed": "audit.deploy.io",
    "load_deployed": "audit.deploy.io",
    "measure_speed": "audit.deploy.speed",
    "model_bytes": "audit.deploy.speed",
    "kernel_status": "audit.deploy.kernel",
    "decide": "audit.deploy.choose",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'audit.deploy' has no attribute {name!r}")
