"""Output paths that stay inside the output directory.

Every file the tool names itself (reports, ``variants/<variant id>``) is written
through :func:`safe_join`: the path is built from validated components, must resolve
inside the output directory, and no directory between the output directory and the
file may be a symbolic link (a link ``out/variants -> /etc`` is refused, not
followed). Names that come from config or data and become one path component
(variant ids, dataset names) go through :func:`check_name` first, which rejects
``..``, separators, control characters and over-long names with a
:class:`~audit.errors.UsageError` naming the value.

The output directory itself, and paths given explicitly on the command line
(``--junit PATH``), are the user's choice and are not restricted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from audit.errors import UsageError

MAX_NAME_BYTES = 255
"""Longest file name (in UTF-8 bytes) that common file systems accept."""

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")


class UnsafePathError(UsageError):
    """A config- or data-derived name or path would leave the output directory."""


def check_name(value: str, *, what: str, where: str | None = None) -> str:
    """``value`` if it can be one file or directory name inside the output directory.

    Args:
        value: The name (a variant id, a dataset name, ...).
        what: What the name is, for the error message (``"variant id"``).
        where: Where the value comes from (a config key), for the error message.

    Raises:
        UnsafePathError: The value is empty, ``.`` or ``..``, holds a path separator
            (``/`` or a backslash) or a control character, or is longer than 255 bytes.
    """
    problem = None
    if not isinstance(value, str) or not value:
        problem = "is empty"
    elif value in (".", ".."):
        problem = "is a relative directory reference"
    elif (m := _BAD_CHARS.search(value)) is not None:
        ch = m.group()
        problem = "holds a path separator" if ch in "/\\" else f"holds the control character U+{ord(ch):04X}"
    elif len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem is not None:
        raise UnsafePathError(
            f"{what} {value!r} {problem}; it cannot name a file inside the output directory",
            where=where,
            hint="use letters, digits, '-', '_', '.' and '=' in names and parameter values",
        )
    return value


def _components(part: str | os.PathLike[str], what: str) -> list[str]:
    text = os.fspath(part)
    if not text or os.path.isabs(text) or text.startswith("\\"):
        raise UnsafePathError(
            f"{what} {text!r} is not a relative path inside the output directory",
            hint="name files relative to the output directory",
        )
    comps = [c for c in text.split("/") if c not in ("", ".")]
    if not comps:
        raise UnsafePathError(f"{what} {text!r} names no file", hint="name files relative to the output directory")
    for c in comps:
        check_name(c, what=f"{what} {text!r}: component")
    return comps


def safe_join(root: str | os.PathLike[str], *parts: str | os.PathLike[str], what: str = "output path") -> Path:
    """``root / parts``, refused unless it stays inside ``root`` without following links.

    Each part is a relative path (``"variants"``, ``"report.html"``, ``"a/b.json"``);
    ``..``, absolute paths, backslashes and control characters are refused. ``root``
    is resolved (it may itself be a symbolic link: that is the user's choice); every
    existing directory below it on the way to the file, and the file itself, must not
    be a symbolic link.

    Args:
        root: The output directory.
        parts: Relative path parts under ``root``.
        what: What is being written, for error messages.

    Returns:
        The absolute path (under the resolved ``root``).

    Raises:
        UnsafePathError: A part is unsafe, or a symbolic link inside ``root`` is on the way.
    """
    base = Path(root).expanduser().resolve()
    comps = [c for p in parts for c in _components(p, what)]
    target = base.joinpath(*comps)
    current = base
    for c in comps:
        current = current / c
        if current.is_symlink():
            raise UnsafePathError(
                f"{current} is a symbolic link inside the output directory; refusing to write through it",
                where=str(base),
                hint="remove the link, or choose another output directory",
            )
    resolved = target.resolve()
    if resolved != target or not resolved.is_relative_to(base):  # belt and braces
        raise UnsafePathError(f"{what} {target} resolves to {resolved}, outside {base}", where=str(base))
    return target
