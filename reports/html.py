"""The HTML reporter: one self-contained file rendered with Jinja2 (autoescape, StrictUndefined).

Inline CSS and SVG only; a Content-Security-Policy meta tag forbids every network
request, scripts included. Every string from data or models goes through Jinja's
autoescaping, so a dataset row containing ``<script>`` renders as text.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2

from audit.results import RunResult
from audit.views import build_view


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja2 environment shared by HTML templates: every value is escaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(result: RunResult) -> str:
    return environment().get_template("report.html.j2").render(v=build_view(result))
