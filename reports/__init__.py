"""Reporters: render a finished :class:`~audit.results.RunResult`; they never compute.

Each reporter is a function ``render(result, **options) -> str`` registered with a
:class:`~audit.registry.ReporterSpec`; :func:`reports.writer.write_reports` writes the
text atomically to ``spec.filename`` in the output directory. View models come from
:mod:`reports.views`; templates live in ``reports/templates``.

| name | file | for |
|---|---|---|
| ``json`` | ``results.json`` | machines: the full run in its versioned schema |
| ``html`` | ``report.html`` | people: the self-contained transparency report |
| ``junit`` | ``junit.xml`` | CI test views: one test case per rule × variant |
| ``markdown`` | ``summary.md`` | CI step summaries and PR comments |
| ``model-card`` | ``model-card.md`` | publishing: HF ``model-index`` YAML plus Markdown |
| ``sarif`` | ``results.sarif`` | code-scanning UIs: SARIF 2.1.0, one result per failing or warning rule × variant |
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
JUNIT = REPORTERS.register(
    ReporterSpec(
        name="junit",
        impl="reports.junit:render",
        summary="junit.xml: one test case per rule x variant, for CI test views.",
        filename="junit.xml",
    )
)
MARKDOWN = REPORTERS.register(
    ReporterSpec(
        name="markdown",
        impl="reports.markdown:render",
        summary="summary.md: verdict, max compliant sparsity, regressions (CI step summary, PR comment).",
        filename="summary.md",
    )
)
MODEL_CARD = REPORTERS.register(
    ReporterSpec(
        name="model-card",
        impl="reports.model_card:render",
        summary="model-card.md: HF model-index YAML plus Markdown for publishing the pruned model.",
        filename="model-card.md",
    )
)
SARIF = REPORTERS.register(
    ReporterSpec(
        name="sarif",
        impl="reports.sarif:render",
        summary="results.sarif: SARIF 2.1.0 for code scanning, one result per FAIL/WARN/ERROR rule x variant.",
        filename="results.sarif",
    )
)
