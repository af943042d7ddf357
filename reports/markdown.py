"""The Markdown reporter: a compact summary for CI step summaries and PR comments.

Rendered with Jinja2 (StrictUndefined) in an environment whose ``finalize`` escapes
every value for Markdown, the way autoescape does for HTML: a value cannot open a
link, an HTML tag or a new table cell, and its control characters, bidi overrides and
non-characters are shown as visible stand-ins (:func:`audit.textsafe.visible`), so a
summary printed in a terminal or a PR comment cannot carry escape sequences or
reordered text. Identifiers go through the ``code`` filter (code spans, where HTML
is inert).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import jinja2

from audit.results import RunResult
from audit.textsafe import visible
from reports.views import build_summary

_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")


class Raw(str):
    """Text already safe for Markdown (not escaped again)."""


def md_escape(value: Any) -> str:
    """Escape text for Markdown (inline or in a table cell): one line, no markup, no HTML."""
    s = " ".join(visible(value).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", s)


def md_code(value: Any) -> Raw:
    """A code span for identifiers; pipes are escaped for GFM tables.

    CommonMark shows HTML inside a code span as text, but not every renderer follows
    CommonMark, and entities cannot be escaped inside a code span: text with ``<``,
    ``>`` or ``&`` is rendered escaped instead, outside a code span.
    """
    s = " ".join(visible(value).split())
    if not s:
        return Raw("")
    if any(ch in s for ch in "<>&"):
        return Raw(md_escape(s))
    s = s.replace("|", "\\|")
    fence = "`"
    while fence in s:
        fence += "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return Raw(f"{fence}{pad}{s}{pad}{fence}")


def _finalize(value: Any) -> Any:
    if isinstance(value, Raw):
        return value
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return md_escape(value)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Jinja2 environment for Markdown templates: every value is Markdown-escaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["code"] = md_code
    return env


def render(result: RunResult, *, max_rows: int = 30) -> str:
    return environment().get_template("summary.md.j2").render(v=build_summary(result, max_rows=max_rows))
