"""The HTML reporter: one self-contained file rendered with Jinja2 (autoescape, StrictUndefined).

Inline CSS and SVG only; a Content-Security-Policy meta tag forbids every network
request, scripts included. Every string from data or models goes through Jinja's
autoescaping, so a dataset row containing ``<script>`` renders as text, and through
:func:`audit.textsafe.visible` first, so control characters, bidi overrides and
non-characters from data show as visible stand-ins (``␛``, ``⟨U+202E⟩``) instead of
acting on the page.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from audit.results import RunResult
from audit.textsafe import visible
from reports.views import build_view


def _finalize(value: Any) -> Any:
    """Every printed value: control and bidi characters made visible (autoescape runs after)."""
    if isinstance(value, Markup):
        return Markup(visible(str(value)))  # visible() adds no markup characters
    if isinstance(value, str):
        return visible(value)
    return value


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja2 environment shared by HTML templates: every value is made visible and escaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )


def render(result: RunResult, *, attestation: Any = None) -> str:
    """The report; ``attestation`` (an :class:`audit.attest.AttestationSummary`, made by ``attest``) is stated."""
    view = build_view(result)
    view["attestation"] = attestation.model_dump() if attestation is not None else None
    return environment().get_template("report.html.j2").render(v=view)
