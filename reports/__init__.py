"""Reporters: render a finished :class:`~audit.results.RunResult`; they never compute.

Each reporter is a function ``render(result, **options) -> str`` registered with a
:class:`~audit.registry.ReporterSpec`; the caller writes the text atomically to
``spec.filename`` in the output directory. Templates live in ``reports/templates``.
"""

from __future__ import annotations

from audit.registry import REPORTERS, ReporterSpec

JSON = REPORTERS.register(
    ReporterSpec(
        name="json",
        impl="reports.json_report:render",
        summary="results.json: the full run, versioned schema (machine-readable).",
        filename="results.json",
    )
)
HTML = REPORTERS.register(
    ReporterSpec(
        name="html",
        impl="reports.html:render",
        summary="report.html: self-contained transparency report (Jinja2, inline CSS/SVG).",
        filename="report.html",
    )
)
