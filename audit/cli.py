"""The ``prune-audit`` command line.

Exit codes (see :class:`audit.errors.ExitCode`): 0 pass, 1 fail, 2 interrupted,
3 internal error, 4 usage/config error, 5 nothing evaluated. Logs go to stderr;
stdout carries only the command's result (paths, verdicts, JSON).

``validate``, ``schema``, ``ls`` and ``check`` never import torch.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from audit.errors import AuditError, ExitCode, UsageError

app = typer.Typer(
    name="prune-audit",
    help="Fairness and robustness audits of pruned transformer models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
log = logging.getLogger("audit")

_state = {"verbosity": 0}


def _say(text: str, *, err: bool = False) -> None:
    """Echo a human-readable line whose values may come from data (control characters made visible)."""
    from audit.textsafe import visible

    typer.echo(visible(text), err=err)


class _VisibleFormatter(logging.Formatter):
    """Log lines never carry raw escape sequences or carriage returns from data."""

    def format(self, record: logging.LogRecord) -> str:
        from audit.textsafe import visible

        return visible(super().format(record))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream at setup.

    A handler bound to the stream of its setup outlives it: an in-process CLI run (a test's
    ``CliRunner``, a notebook) swaps ``sys.stderr`` for a buffer and closes it afterwards, and a
    later log record would then hit a closed file ("I/O operation on closed file").
    """

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(_VisibleFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("audit", "suites", "reports"):
        logging.getLogger(name).setLevel(level)


def _version(value: bool) -> None:
    if value:
        from audit.provenance import tool_version

        typer.echo(f"prune-audit {tool_version()}")
        raise typer.Exit(0)


@app.callback()
def _main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Fairness and robustness audits of pruned transformer models."""
    _state["verbosity"] = -1 if quiet else verbose
    _setup_logging(_state["verbosity"])


def _print_outcome(outcome: object) -> None:
    from audit.runner import RunOutcome

    assert isinstance(outcome, RunOutcome)
    from audit.plan import method_display

    v = outcome.verdict
    if v is not None:
        counts = ", ".join(f"{k} {n}" for k, n in v.counts.items() if n)
        _say(f"verdict: {v.status} under policy {v.policy} ({counts})")
        for method, s in sorted(v.max_compliant_sparsity.items()):
            typer.echo(f"max compliant sparsity for {method_display(method)}: {'none' if s is None else f'{s:.2f}'}")
    if outcome.units_reused:
        computed = outcome.units_total - outcome.units_reused
        _say(f"store: {outcome.units_reused} of {outcome.units_total} units reused, {computed} computed")
    for name, path in outcome.files.items():
        _say(f"{name}: {path}")


FormatOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--format", "-f", help="Reporter to write (repeatable): json, html, junit, markdown, model-card, sarif, all."
    ),
]
JunitOpt = Annotated[Optional[Path], typer.Option("--junit", help="Also write JUnit XML to this path.")]
MarkdownOpt = Annotated[
    Optional[Path], typer.Option("--markdown", help="Also write the Markdown summary to this path.")
]
CardVariantOpt = Annotated[
    Optional[str], typer.Option("--card-variant", help="Variant id the model card describes (default: recommended).")
]


def _output_paths(junit: Path | None, markdown: Path | None) -> dict[str, Path]:
    paths = {}
    if junit is not None:
        paths["junit"] = junit.resolve()
    if markdown is not None:
        paths["markdown"] = markdown.resolve()
    return paths


def _github(result: object) -> None:
    """Annotations on stdout and the step summary, when running under GitHub Actions."""
    from audit.results import RunResult
    from reports import github

    assert isinstance(result, RunResult)
    if github.is_github_actions():
        for line in github.annotations(result):
            typer.echo(line)
    summary = github.append_step_summary(result)
    if summary is not None:
        log.info("appended the summary to %s", summary)


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Audit config YAML.")],
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Override output_dir.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override the seed.")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", "-p", help="Policy name or YAML path.")] = None,
    offline: Annotated[
        Optional[bool], typer.Option("--offline/--online", help="Override the config's offline flag.")
    ] = None,
    format: FormatOpt = None,
    junit: JunitOpt = None,
    markdown: MarkdownOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Reuse finished work from an interrupted run into the same output dir.")
    ] = False,
    executor: Annotated[Optional[str], typer.Option("--executor", help="Override executor.kind: local or ray.")] = None,
) -> None:
    """Run an audit as the config describes; exit code is the policy verdict.

    Writes the config's report formats (or --format) to the output directory; --junit
    and --markdown write those two to paths of their own (for CI). Under GitHub
    Actions, failures are printed as annotations and the summary is appended to
    $GITHUB_STEP_SUMMARY.
    """
    from audit.config import load_config
    from reports.writer import expand_formats

    formats = expand_formats(format) if format else None
    overrides: dict[str, object] = {}
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir.resolve())
    if seed is not None:
        overrides["seed"] = seed
    if policy is not None:
        overrides["policy"] = str(Path(policy).resolve()) if Path(policy).exists() else policy
    if offline is not None:
        overrides["offline"] = offline
    if executor is not None:
        overrides["executor"] = {"kind": executor}
    cfg = load_config(config, overrides)
    from audit.runner import run_audit

    outcome = run_audit(
        cfg, command=_command_line(), formats=formats, paths=_output_paths(junit, markdown), resume=resume
    )
    _print_outcome(outcome)
    _github(outcome.result)
    raise typer.Exit(int(outcome.exit_code))


DEMO_TARGETS = ("classifier", "lm")


@app.command()
def demo(
    target: Annotated[
        Optional[str],
        typer.Argument(help="classifier (default): the MiniLM-L6 sentiment classifier; lm: SmolLM2-135M-Instruct."),
    ] = None,
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Where the demo report goes.")
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-build the demo's cached assets.")] = False,
) -> None:
    """Audit an embedded demo model (built and cached on first use).

    `prune-audit demo` audits the MiniLM-L6 sentiment classifier (into demo-out/);
    `prune-audit demo lm` audits the embedded SmolLM2-135M-Instruct causal LM (into demo-lm-out/).
    Exits 0 when the audit ran, whatever its verdict, so that the demo is a smoke test;
    use `run` to gate.
    """
    kind = target or "classifier"
    if kind not in DEMO_TARGETS:
        raise UsageError(f"demo target must be one of {', '.join(DEMO_TARGETS)}, found {target!r}", where="demo")
    if kind == "lm":
        from audit.demo.lm import run_lm_demo as run_demo
    else:
        from audit.demo import run_demo

    out = output_dir or Path("demo-lm-out" if kind == "lm" else "demo-out")
    outcome = run_demo(out.resolve(), rebuild=rebuild, command=_command_line())
    _print_outcome(outcome)
    report = outcome.files.get("html")
    if report is not None:
        typer.echo(f"report: {report}")
    code = outcome.exit_code
    raise typer.Exit(int(ExitCode.NO_RESULTS if code == ExitCode.NO_RESULTS else ExitCode.OK))


DEFAULT_CHECK_FORMATS = ["json", "html", "junit", "markdown"]


@app.command()
def check(
    results: Annotated[Path, typer.Argument(help="results.json written by `run`.")],
    policy: Annotated[str, typer.Option("--policy", "-p", help="Policy name or YAML path.")] = "default",
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Also write re-gated reports here.")
    ] = None,
    format: FormatOpt = None,
    junit: JunitOpt = None,
    markdown: MarkdownOpt = None,
    card_variant: CardVariantOpt = None,
) -> None:
    """Re-gate saved results under a policy, without loading any model (seconds, no torch).

    Prints the verdict, every FAIL/ERROR/WARN and the max compliant sparsity per method;
    exit code 0 pass, 1 fail, 5 nothing evaluated. With --output-dir, writes the
    re-gated reports (default: json, html, junit, markdown; --format picks).
    """
    from audit.policy import evaluate_policy, load_policy
    from audit.results import load_results
    from reports.writer import expand_formats

    if format and output_dir is None:
        raise UsageError("--format needs --output-dir", hint="add --output-dir DIR")
    formats = expand_formats(format or DEFAULT_CHECK_FORMATS) if output_dir is not None else []
    pol, label = load_policy(policy)
    res = load_results(results)
    from audit.policy_metrics import check_rule_metrics

    check_rule_metrics(pol, policy, catalog=res.metrics)  # installed suites' metrics + the results' own
    if card_variant is not None and card_variant not in {v.id for v in res.variants}:
        raise UsageError(
            f"--card-variant {card_variant!r} is not a variant of these results",
            hint="variants: " + ", ".join(v.id for v in res.variants),
        )
    verdict = evaluate_policy(pol, res, policy_label=label)
    res = res.model_copy(update={"verdict": verdict})
    counts = ", ".join(f"{k} {n}" for k, n in verdict.counts.items() if n)
    _say(f"verdict: {verdict.status} under policy {pol.name} ({counts})")
    for r in verdict.rules:
        if r.status in ("FAIL", "ERROR", "WARN"):
            _say(f"  {r.status:5} {r.rule} [{r.variant}] {r.metric}: {r.message}")
    from audit.plan import method_display

    for method, s in sorted(verdict.max_compliant_sparsity.items()):
        typer.echo(f"max compliant sparsity for {method_display(method)}: {'none' if s is None else f'{s:.2f}'}")
    paths = _output_paths(junit, markdown)
    if formats or paths:
        from reports.writer import write_reports

        options = {"model-card": {"variant": card_variant}} if card_variant else None
        for name, path in write_reports(res, output_dir, formats, paths=paths, options=options).items():
            _say(f"{name}: {path}")
    _github(res)
    raise typer.Exit(verdict.exit_code)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="results.json written by `run`.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write.")] = Path("."),
    format: FormatOpt = None,
    junit: JunitOpt = None,
    markdown: MarkdownOpt = None,
    card_variant: CardVariantOpt = None,
) -> None:
    """Re-render reports from saved results (no computation; the stored verdict is kept)."""
    from audit.results import load_results
    from reports.writer import expand_formats, write_reports

    formats = expand_formats(format or ["html"])
    res = load_results(results)
    if card_variant is not None and card_variant not in {v.id for v in res.variants}:
        raise UsageError(
            f"--card-variant {card_variant!r} is not a variant of these results",
            hint="variants: " + ", ".join(v.id for v in res.variants),
        )
    from audit.attest import load_summary

    attestation = load_summary(results)  # stated only when it attests this very results file
    options: dict[str, dict[str, object]] = {n: {"attestation": attestation} for n in ("html", "model-card")}
    if card_variant:
        options["model-card"]["variant"] = card_variant
    for name, path in write_reports(
        res, output_dir, formats, paths=_output_paths(junit, markdown), options=options
    ).items():
        _say(f"{name}: {path}")


class _Kind(str, Enum):
    auto = "auto"
    config = "config"
    policy = "policy"


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="An audit config or a policy YAML.")],
    kind: Annotated[_Kind, typer.Option("--kind", help="What the file is (default: detect).")] = _Kind.auto,
) -> None:
    """Check a config or policy file; errors give file, line and a hint (exit 4)."""
    from audit.yamlio import load_yaml

    k = kind.value
    if k == "auto":
        doc = load_yaml(file)
        k = "policy" if "rules" in doc.data and "model" not in doc.data else "config"
    if k == "policy":
        from audit.policy import load_policy
        from audit.policy_metrics import check_rule_metrics

        pol, _ = load_policy(str(file))
        check_rule_metrics(pol, str(file))
        _say(f"{file}: valid policy {pol.name!r} ({len(pol.rules)} rules, {len(pol.waivers)} waivers)")
    else:
        from audit.config import load_config
        from audit.plan import plan

        cfg = load_config(file)
        points = plan(cfg)
        typer.echo(
            f"{file}: valid config; {len(points) - 1} sweep points + dense baseline, "
            f"suites: {', '.join(s.name for s in cfg.suites)}"
        )


class _SchemaFormat(str, Enum):
    json = "json"
    markdown = "markdown"


class _SchemaKind(str, Enum):
    config = "config"
    policy = "policy"
    results = "results"


@app.command()
def schema(
    kind: Annotated[_SchemaKind, typer.Argument(help="config, policy or results.")] = _SchemaKind.config,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write the schema to this file instead of stdout.")
    ] = None,
    format_: Annotated[
        _SchemaFormat,
        typer.Option("--format", help="json: the JSON Schema; markdown: the config reference generated from it."),
    ] = _SchemaFormat.json,
) -> None:
    """Print (or write) the JSON Schema of the config, policy or results format.

    `prune-audit schema policy -o policies/policy.schema.json` regenerates the
    published policy schema, `prune-audit schema config --format markdown -o
    docs/configuration.md` the configuration reference (both: `make schemas`).
    """
    if format_ is _SchemaFormat.markdown:
        if kind is not _SchemaKind.config:
            raise UsageError(
                f"--format markdown is the configuration reference; found schema kind {kind.value!r}",
                hint="use `prune-audit schema config --format markdown`",
            )
        from audit.config_doc import config_reference

        text = config_reference()
    elif kind is _SchemaKind.config:
        from audit.config import config_schema

        text = json.dumps(config_schema(), indent=2) + "\n"
    elif kind is _SchemaKind.policy:
        from audit.policy import policy_schema_text

        text = policy_schema_text()
    else:
        from audit.results import results_schema

        text = json.dumps(results_schema(), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    from audit.atomic import atomic_write_text

    typer.echo(f"{kind.value} schema: {atomic_write_text(output, text)}")


class _What(str, Enum):
    pruners = "pruners"
    suites = "suites"
    reporters = "reporters"
    policies = "policies"
    metrics = "metrics"


@app.command("ls")
def ls_(what: Annotated[_What, typer.Argument(help="What to list.")] = _What.pruners) -> None:
    """List registered pruners, suites, reporters, metrics or shipped policies."""
    from audit.registry import PRUNERS, REPORTERS, SUITES

    if what is _What.pruners:
        for p in PRUNERS:
            kind = "structured" if p.structured else "mask"
            calib = ", calibration" if p.needs_calibration else ""
            typer.echo(f"{p.name:<14} [{kind}{calib}] {p.summary}")
    elif what is _What.suites:
        for s in SUITES:
            typer.echo(f"{s.name:<14} {s.summary}")
    elif what is _What.reporters:
        for r in REPORTERS:
            typer.echo(f"{r.name:<14} {r.filename:<16} {r.summary}")
    elif what is _What.metrics:
        from audit.registry import measured

        by_kind = sorted(measured(), key=lambda s: s.kind != "suite")  # the suites', then the stages' metrics
        for suite, m in [(s.name, m) for s in by_kind for m in s.metrics]:
            d = "↑" if m.higher_is_better else "↓" if m.higher_is_better is False else "·"
            typer.echo(f"{suite}/*/{m.name:<24} {d} {m.meaning}")
    else:
        from audit.policy import builtin_policies, load_policy

        for name, path in builtin_policies().items():
            pol, _ = load_policy(str(path))
            desc = " ".join(pol.description.split())
            typer.echo(f"{name:<14} {len(pol.rules)} rules  {desc[:90]}")


@app.command()
def resources(
    check: Annotated[bool, typer.Option("--check", help="Only report what is present (exit 4 if missing).")] = False,
    wordnet_deb: Annotated[
        Optional[list[Path]],
        typer.Option("--wordnet-deb", help="wordnet-base / wordnet-sense-index .deb files to unpack (repeatable)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rewrite resources that are present.")] = False,
) -> None:
    """Provision NLTK stopwords and WordNet offline (no NLTK downloader)."""
    from audit import resources as res

    root = res.default_dir()
    if check:
        have = res.status(root)
        for name, ok in have.items():
            typer.echo(f"{name}: {'present' if ok else 'MISSING'} ({root})")
        if not all(have.values()):
            raise UsageError("NLTK resources missing", where=str(root), hint=res.HOW_TO_PROVIDE)
        return
    for name, how in res.provision(root, wordnet_debs=wordnet_deb, force=force).items():
        typer.echo(f"{name}: {how} ({root})")


from audit.cli_attest import attest_app as _attest_app  # noqa: E402
from audit.cli_attribute import attribute as _attribute  # noqa: E402
from audit.cli_diff import diff as _diff  # noqa: E402

app.command("diff")(_diff)
app.command("attribute")(_attribute)
app.add_typer(_attest_app, name="attest")


def _command_line() -> str:
    return "prune-audit " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _interrupted(signal_name: str | None) -> int:
    typer.echo(
        f"interrupted{f' by {signal_name}' if signal_name else ''}; outputs are written atomically, "
        "so nothing is half-written; finished work is kept: run again with --resume to continue",
        err=True,
    )
    return int(ExitCode.INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and maps every outcome to an exit code."""
    from audit import interrupt

    try:
        rv = app(args=argv, standalone_mode=False, prog_name="prune-audit")
        if interrupt.received() is not None:  # typer turns a KeyboardInterrupt into exit code 130
            return _interrupted(interrupt.received())
        return int(rv) if isinstance(rv, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return _interrupted(interrupt.received())
    except typer.TyperException as exc:  # bad flags, missing arguments, no command
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            _say(f"error: {exc}", err=True)
        if type(exc).__name__ == "NoArgsIsHelpError":
            return int(ExitCode.OK)
        return int(ExitCode.USAGE_ERROR)
    except UsageError as exc:
        _say(f"error: {exc.format()}", err=True)
        return int(exc.exit_code)
    except AuditError as exc:
        _say(f"error: {exc}", err=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (audit.errors.Interrupted) outside a command
        return _interrupted(interrupt.received())
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc(file=sys.stderr)
        _say(f"internal error: {type(exc).__name__}: {exc} (please report this)", err=True)
        return int(ExitCode.INTERNAL_ERROR)


def entry() -> None:
    """The ``prune-audit`` process: SIGTERM and SIGINT stop it cleanly with exit code 2."""
    from audit import interrupt

    interrupt.install()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
