"""The HTML reporter: one self-contained file rendered with Jinja2 (autoescape, StrictUndefined)."""

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
