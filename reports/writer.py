"""Render reporters and write their files atomically (torch-free: used by ``check``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.atomic import atomic_write_text
from audit.errors import PluginError
from audit.registry import REPORTERS
from audit.results import RunResult

log = logging.getLogger(__name__)

ALL = "all"


def expand_formats(formats: list[str]) -> list[str]:
    """Reporter names, with ``all`` expanded and duplicates removed; unknown names are errors."""
    out: list[str] = []
    for f in formats:
        names = REPORTERS.names() if f == ALL else [f]
        for name in names:
            REPORTERS.get(name)  # raises PluginError with a suggestion
            if name not in out:
                out.append(name)
    return out


def render_reports(
    result: RunResult, formats: list[str], options: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, str]:
    """Render every requested reporter (nothing is written)."""
    rendered = {}
    for name in expand_formats(formats):
        spec = REPORTERS.get(name)
        rendered[name] = spec.load()(result, **dict((options or {}).get(name, {})))
    return rendered


def write_reports(
    result: RunResult,
    out_dir: Path | None,
    formats: list[str],
    *,
    paths: Mapping[str, Path] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Render every requested reporter, then write each file atomically.

    Everything is rendered before anything is written, so a failing reporter writes
    nothing. ``paths`` gives an explicit file for a reporter (``--junit PATH``); the
    others go to ``out_dir / spec.filename``.
    """
    paths = dict(paths or {})
    wanted = expand_formats([*formats, *paths])
    rendered = render_reports(result, wanted, options)
    files = {}
    for name, text in rendered.items():
        target = paths.get(name)
        if target is None:
            if out_dir is None:
                raise PluginError(f"no output directory for the {name} reporter", hint="pass --output-dir")
            target = Path(out_dir) / REPORTERS.get(name).filename
        files[name] = atomic_write_text(target, text)
        log.debug("wrote %s", target)
    return files
