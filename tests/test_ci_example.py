"""The GitHub Actions recipe in ``examples/github-actions/``: every ``prune-audit`` command it runs
exists in this CLI and its arguments parse, its config is valid and writes SARIF, and the uploads run
whatever the verdict."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from audit.cli import app
from audit.config import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "github-actions"
WORKFLOW = yaml.safe_load((EXAMPLE / "prune-audit.yml").read_text(encoding="utf-8"))
STEPS = WORKFLOW["jobs"]["audit"]["steps"]
_CALL = re.compile(r"(?:^|\s)(?:\S*/)?prune-audit\s+(.+)$")


def _invocations() -> list[list[str]]:
    calls = []
    for step in STEPS:
        for line in step.get("run", "").splitlines():
            match = _CALL.search(line.strip())
            if match:
                calls.append(shlex.split(match.group(1)))
    return calls


def _parse(args: list[str]) -> Any:
    """Parse ``prune-audit ARGS`` as the CLI would (subcommands, options, arguments), without running it.

    An unknown command fails the assertion; unknown options and missing arguments raise click's usage errors.
    """
    cmd: Any = typer.main.get_command(app)  # typer's own click: duck-typed, no isinstance(click.Group)
    name = "prune-audit"
    while getattr(cmd, "commands", None) is not None and args and args[0] in cmd.commands:
        name, cmd, args = args[0], cmd.commands[args[0]], args[1:]
    assert name != "prune-audit", f"no command {args[:1]} in this CLI"
    return cmd.make_context(name, list(args))


INVOCATIONS = _invocations()


def test_the_workflow_runs_the_audit_signs_and_verifies_and_diffs() -> None:
    assert [a[:2] if a[0] == "attest" else a[:1] for a in INVOCATIONS] == [
        ["run"],
        ["attest", "sign"],
        ["attest", "verify"],
        ["diff"],
    ]


def _command(args: list[str]) -> str:
    return args[1] if args[0] == "attest" else args[0]


@pytest.mark.parametrize("args", INVOCATIONS, ids=[" ".join(a[:2]) if a[0] == "attest" else a[0] for a in INVOCATIONS])
def test_every_prune_audit_command_of_the_workflow_exists_and_parses(args: list[str]) -> None:
    assert _parse(args).info_name == _command(args)


def test_the_example_config_is_valid_and_writes_sarif_junit_and_markdown() -> None:
    cfg = load_config(EXAMPLE / "audit.yaml")
    assert {"sarif", "junit", "markdown", "json"} <= set(cfg.report.formats)


def test_the_example_config_saves_the_variants_the_attestation_signs() -> None:
    assert load_config(EXAMPLE / "audit.yaml").deploy.save_variants is True


def test_reports_are_uploaded_whatever_the_verdict_and_the_last_step_gates() -> None:
    by_name = {s.get("name"): s for s in STEPS}
    audit = by_name["Audit"]
    assert "set +e" in audit["run"] and "exit_code=$code" in audit["run"]
    uploads = [
        s for s in STEPS if s.get("uses", "").startswith(("github/codeql-action/upload-sarif", "actions/upload"))
    ]
    assert len(uploads) == 2 and all(s["if"].startswith("always()") for s in uploads)
    sarif = next(s for s in uploads if "upload-sarif" in s["uses"])
    assert sarif["with"]["sarif_file"] == "out/results.sarif"
    assert STEPS[-1]["if"] == "always()" and "steps.audit.outputs.exit_code" in STEPS[-1]["env"]["CODE"]
    assert WORKFLOW["permissions"]["security-events"] == "write"
