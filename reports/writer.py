"""Render reporters and write their files atomically (torch-free: used by ``check``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.atomic import atomic_write_text
from audit.errors import PluginError
from audit.paths import safe_join
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


def report_targets(
    out_dir: Path | None, formats: list[str], paths: Mapping[str, Path] | None = None
) -> dict[str, Path]:
    """Where each requested reporter's file goes; checked, nothing is written.

    ``paths`` (from the command line) are used as given; every other file goes to
    ``out_dir / spec.filename`` through :func:`audit.paths.safe_join`, so a reporter's
    file name cannot leave the output directory or write through a symbolic link there.
    Call it before any work starts to fail early.

    Raises:
        PluginError: A reporter has no explicit path and there is no output directory.
        audit.paths.UnsafePathError: A report file would leave the output directory.
    """
    paths = dict(paths or {})
    targets = {}
    for name in expand_formats([*formats, *paths]):
        target = paths.get(name)
        if target is None:
            if out_dir is None:
                raise PluginError(f"no output directory for the {name} reporter", hint="pass --output-dir")
            target = safe_join(out_dir, REPORTERS.get(name).filename, what=f"{name} report file")
        targets[name] = Path(target)
    return targets


def write_reports(
    result: RunResult,
    out_dir: Path | None,
    formats: list[str],
    *,
    paths: Mapping[str, Path] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Render every requested reporter, then write each file atomically.

    Targets are checked first (:func:`report_targets`) and everything is rendered
    before anything is written, so a failing reporter or an unsafe path writes
    nothing. ``paths`` gives an explicit file for a reporter (``--junit PATH``); the
    others go to ``out_dir / spec.filename``.
    """
    targets = report_targets(out_dir, formats, paths)
    rendered = render_reports(result, list(targets), options)
    files = {}
    for name, text in rendered.items():
        files[name] = atomic_write_text(targets[name], text)
        log.debug("wrote %s", targets[name])
    return files
