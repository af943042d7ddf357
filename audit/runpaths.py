""":class:`RunPaths`: every local path a run reads or writes, resolved once against the config file's directory.

A config's relative paths mean "relative to the config file". They are resolved here, once,
when the config is loaded (:attr:`audit.config.AuditConfig.paths`); the loaders
(:mod:`audit.data`, :mod:`audit.model_io`), the pre-flight and the store keys take these
paths and never resolve anything themselves. Torch-free and import-light (no
:mod:`audit.config` import: the config imports this module).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def resolve_path(path: str, base_dir: str | None) -> Path:
    """``path`` with ``~`` expanded, relative to ``base_dir`` when it is relative and a base is known."""
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir:
        p = Path(base_dir) / p
    return p


def param_paths(params: Any) -> Iterator[str]:
    """Every string under a ``path`` key in a suite's params (nested mappings and lists), in order."""
    if isinstance(params, dict):
        for k, v in params.items():
            if k == "path" and isinstance(v, str):
                yield v
            else:
                yield from param_paths(v)
    elif isinstance(params, list):
        for v in params:
            yield from param_paths(v)


@dataclass(frozen=True)
class RunPaths:
    """The resolved paths of one run (immutable; made by :meth:`of`)."""

    base_dir: str | None
    """Directory relative paths were resolved against (the config file's); None: the working directory."""
    output_dir: Path
    model_dir: Path | None = None
    """``model.path``; None for a hub model."""
    data_files: dict[str, Path] = field(default_factory=dict)
    """``data.files``: split name → file (empty for hub data)."""
    dataset_files: dict[str, Path] = field(default_factory=dict)
    """Every ``path`` named in the suites' params (their extra datasets), as written → resolved."""
    policy: str | None = None
    """``policy`` as written: a built-in name or a YAML path (:func:`audit.policy.load_policy` resolves
    it against :attr:`base_dir`, since a name is not a path)."""

    @classmethod
    def of(cls, config: Any) -> RunPaths:
        """The paths of an :class:`~audit.config.AuditConfig` (``config.base_dir`` as the base)."""
        base = config.base_dir
        files = config.data.files or {}
        return cls(
            base_dir=base,
            output_dir=resolve_path(config.output_dir, base),
            model_dir=resolve_path(config.model.path, base) if config.model.path is not None else None,
            data_files={split: resolve_path(f, base) for split, f in files.items()},
            dataset_files={p: resolve_path(p, base) for s in config.suites for p in param_paths(s.params)},
            policy=config.policy,
        )

    def resolve(self, path: str | None) -> Path | None:
        """A path named in the config, resolved as every path of this run is."""
        if path is None:
            return None
        return resolve_path(path, self.base_dir)

    def dataset(self, path: str | None) -> Path | None:
        """A suite dataset's ``path`` resolved (those the suites' params name were resolved at load time)."""
        if path is None:
            return None
        return self.dataset_files.get(path) or self.resolve(path)
