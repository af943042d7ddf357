"""Making text from data safe to show: control, bidi and non-characters made visible.

Dataset texts, group values, column names and file names reach reports, terminals
and logs. Some characters in them act instead of showing: ``ESC`` starts terminal
escape sequences, ``CR`` rewinds a terminal line, ``NUL`` and most C0 controls are
not allowed in XML 1.0, bidi overrides (U+202E, ...) reorder what a reader sees
(``gnp.exe`` shown as ``exe.png``), and U+FFFE/U+FFFF and lone surrogates are not
characters at all. :func:`visible` replaces each of them with a visible stand-in:
C0 controls and DEL with their Unicode control pictures (``␀``, ``␛``, ``␍``), the
others with ``⟨U+202E⟩``. Every other character, non-ASCII letters and emoji
included, is kept as it is.

Only what is *shown* is changed: the model sees texts as given, and ``results.json``
keeps them exactly (JSON escapes controls itself).
"""

from __future__ import annotations

import re
from typing import Any

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# C0 controls but TAB and LF, DEL, C1 controls, bidi controls, U+FFFE/U+FFFF, lone surrogates
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}\ufffe\uffff\ud800-\udfff]")
_UNSAFE_WITH_NEWLINES = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}\ufffe\uffff\ud800-\udfff]")


def _stand_in(match: re.Match[str]) -> str:
    cp = ord(match.group())
    if cp < 0x20:
        return chr(0x2400 + cp)  # control pictures: U+2400 NUL ... U+241F US
    if cp == 0x7F:
        return "\u2421"  # ␡
    return f"\u27e8U+{cp:04X}\u27e9"


def visible(text: Any, *, newlines: bool = True) -> str:
    """``text`` with every control, bidi-control and non-character replaced by a visible stand-in.

    Args:
        text: Any value; non-strings are converted with ``str``.
        newlines: Keep line feeds (and turn CR-LF into a line feed); when false they are shown as ``␊``
            (and a CR as ``␍``) too.
    """
    s = text if isinstance(text, str) else str(text)
    if newlines and "\r\n" in s:
        s = s.replace("\r\n", "\n")
    pattern = _UNSAFE if newlines else _UNSAFE_WITH_NEWLINES
    return pattern.sub(_stand_in, s) if pattern.search(s) else s


def has_unsafe(text: str) -> bool:
    """Whether ``text`` holds a character that :func:`visible` would replace (LF and CR-LF aside)."""
    return _UNSAFE.search(text.replace("\r\n", "\n")) is not None
