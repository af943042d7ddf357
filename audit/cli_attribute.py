"""`prune-audit attribute`: trace a finished run's significant regressions back to its pruning decisions.

The run's measurements come from its result store (nothing is measured again, and a config
whose units are not all stored is refused before any work); the variants whose regressions are
selected are pruned again and searched as ``attribution:`` describes (:mod:`audit.attribution`),
with the command's options over the config's section. The reports are written again with the
attribution in them; the verdict and the exit code are the run's, as ``prune-audit run`` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from audit.config_attribution import GRANULARITIES


def attribute(
    config: Annotated[Path, typer.Option("--config", "-c", help="The finished run's audit config YAML.")],
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Override output_dir.")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", "-p", help="Policy name or YAML path.")] = None,
    rule: Annotated[
        Optional[list[str]], typer.Option("--rule", help="Only regressions where this policy rule failed (repeatable).")
    ] = None,
    metric: Annotated[
        Optional[list[str]], typer.Option("--metric", help="Glob over the regression's metric id (repeatable).")
    ] = None,
    max_regressions: Annotated[Optional[int], typer.Option("--max-regressions", help="At most this many.")] = None,
    budget: Annotated[
        Optional[int],
        typer.Option("--budget", help="Forward passes per regression (attribution.budget_forward_passes)."),
    ] = None,
    granularity: Annotated[
        Optional[str], typer.Option("--granularity", help=f"Finest groups: {', '.join(GRANULARITIES)}.")
    ] = None,
    holdout: Annotated[
        Optional[float], typer.Option("--holdout", help="Fraction of the defining examples held out of the search.")
    ] = None,
    format: Annotated[
        Optional[list[str]],
        typer.Option("--format", "-f", help="Reporter to write (repeatable; default: the config's report formats)."),
    ] = None,
) -> None:
    """Attribute a finished run's significant regressions to layer groups; rewrite its reports.

    Every unit of the run must be in its result store (run `prune-audit run` first); the model,
    data and config must be the run's. Options override the config's `attribution:` section, and
    attribution is switched on. Exit code: the run's verdict, as `prune-audit run` gives it.
    """
    from audit.cli import _command_line, _github, _print_outcome, _say
    from audit.config import load_config
    from reports.writer import expand_formats

    section: dict[str, object] = {"enabled": True}
    for key, value in (
        ("rules", rule),
        ("metrics", metric),
        ("max_regressions", max_regressions),
        ("budget_forward_passes", budget),
        ("granularity", granularity),
        ("holdout", holdout),
    ):
        if value is not None:
            section[key] = value
    overrides: dict[str, object] = {"attribution": section}
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir.resolve())
    if policy is not None:
        overrides["policy"] = str(Path(policy).resolve()) if Path(policy).exists() else policy
    cfg = load_config(config, overrides)
    from audit.runner import run_audit

    outcome = run_audit(
        cfg, command=_command_line(), formats=expand_formats(format) if format else None, resume=True,
        require_stored=True,
    )  # fmt: skip
    for a in outcome.result.attribution or []:
        _say(attribution_line(a))
    _print_outcome(outcome)
    _github(outcome.result)
    raise typer.Exit(int(outcome.exit_code))


def attribution_line(a: object) -> str:
    """One line per attributed regression: its status, and the block that explains most (held out when checked)."""
    from audit.results import RegressionAttribution

    assert isinstance(a, RegressionAttribution)
    head = f"attribution: {a.variant} {a.metric} ({a.test}): {a.status.replace('_', ' ')}"
    if a.status == "not_attributable":
        return f"{head}: {a.reason}"
    blocks = [g for g in a.groups if g.level == "block" and g.share is not None]
    if not blocks:
        return f"{head}; no block evaluated, {a.forward_passes} of {a.budget_forward_passes} forward passes"
    best = max(blocks, key=lambda g: g.share)
    text = f"{head}; block {best.name} explains {best.share:.0%} of the gap"
    checks = {c.name: c for c in (a.holdout.checks if a.holdout else [])}
    if best.name in checks and checks[best.name].share is not None:
        text += f", {checks[best.name].share:.0%} on {a.holdout.n_holdout} held-out examples"
    return f"{text}; {a.forward_passes} of {a.budget_forward_passes} forward passes"
