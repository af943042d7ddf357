"""`prune-audit diff OLD NEW`: compare two audits of successive releases (exit 1 when a rule newly fails)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def diff(
    old: Annotated[Path, typer.Argument(help="results.json of the older release.")],
    new: Annotated[Path, typer.Argument(help="results.json of the newer release.")],
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the Markdown here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the diff record as JSON here.")] = None,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", help="Write a standalone HTML page of the diff here (every list in full)."),
    ] = None,
) -> None:
    """Compare two results files: exit 1 when a rule newly fails or errors, else 0 (old failures do not count)."""
    from audit.atomic import atomic_write_text
    from audit.diff import diff_results
    from audit.results import load_results
    from reports.diff import render_html, render_markdown

    d = diff_results(load_results(old), load_results(new))  # UsageError (exit 4) before anything is written
    text = render_markdown(d)
    page = render_html(d) if html is not None else ""  # everything is rendered before the first file is written
    for path, content in ((markdown, text), (json_out, d.model_dump_json(indent=2) + "\n"), (html, page)):
        if path is not None:
            atomic_write_text(path, content)
    if markdown is None and json_out is None and html is None:
        typer.echo(text)
    raise typer.Exit(d.exit_code)
