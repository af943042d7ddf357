"""`prune-audit attest`: sign an audit's artifacts (in-toto Statement v1 in a DSSE envelope, Ed25519), verify one.

``prune-audit attest RESULTS --key KEY.pem`` is ``attest sign``; ``attest verify`` and
``attest keygen`` are the other two commands. Logic in :mod:`audit.attest` and
:mod:`audit.attest_verify`; no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperGroup


class _SignByDefault(TyperGroup):
    """``attest RESULTS ...`` (the issue's form) runs ``attest sign RESULTS ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["sign", *args]
        return super().parse_args(ctx, args)


attest_app = typer.Typer(
    name="attest",
    cls=_SignByDefault,
    help="Sign the audited artifacts (`attest RESULTS --key KEY.pem`), verify a signature, make a key pair.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[
    Optional[Path],
    typer.Option("--model", help="The dense checkpoint's directory or GGUF file (default: the recorded path)."),
]


def _say(text: str) -> None:
    from audit.textsafe import visible

    typer.echo(visible(text))


def _rerender(signed: Any) -> dict[str, tuple[Path, str]]:
    """The HTML report and model card beside the results, rendered again with the attestation (not written)."""
    from audit.registry import REPORTERS
    from reports.writer import render_reports

    root = signed.root
    names = [n for n in ("html", "model-card") if (root / REPORTERS.get(n).filename).is_file()]
    options = {n: {"attestation": signed.summary} for n in names}
    rendered = render_reports(signed.result, names, options)
    return {n: (root / REPORTERS.get(n).filename, text) for n, text in rendered.items()}


@attest_app.command()
def sign(
    results: Annotated[Path, typer.Argument(help="results.json written by `run`.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Ed25519 private key (PEM, PKCS#8).")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="The envelope file (default: attestation.dsse.json).")
    ] = None,
    model: ModelOpt = None,
) -> None:
    """Sign results.json, the dense checkpoint and every saved variant; re-render the report and model card."""
    from audit.atomic import atomic_write_text
    from audit.attest import sign_results, write_signed

    signed = sign_results(results, key, output=output, model=model)  # UsageError (exit 4) before any write
    rendered = _rerender(signed)
    write_signed(signed)
    for path, text in rendered.values():
        atomic_write_text(path, text)
    s = signed.summary
    _say(f"attestation: {signed.envelope_path}")
    typer.echo(f"sha256: {s.sha256}")
    typer.echo(f"keyid: {s.keyid}")
    typer.echo(f"subjects: {s.subjects}")
    for name, (path, _) in rendered.items():
        _say(f"{name}: {path}")


@attest_app.command()
def verify(
    envelope: Annotated[Path, typer.Argument(help="The DSSE envelope `attest` wrote.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Ed25519 public key (PEM, SubjectPublicKeyInfo).")],
    artifacts: Annotated[
        Optional[Path],
        typer.Option("--artifacts", help="Root of results.json and variants/ (default: the envelope's directory)."),
    ] = None,
    model: ModelOpt = None,
) -> None:
    """Check the signature and every subject's sha256: exit 0 when all match, 1 naming what does not."""
    from audit.attest_verify import verify_envelope

    v = verify_envelope(envelope, key, artifacts=artifacts, model=model)
    _say(f"signature: verifies with keyid {v.keyid}")
    for name in v.checked:
        _say(f"  ok {name}")
    _say(f"verified: {len(v.checked)} subjects match (artifacts {v.artifacts}, model {v.model_root})")


@attest_app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Directory for attest-key.pem (0600) and attest-key.pub.pem.")],
) -> None:
    """Make an Ed25519 key pair; never overwrites a key."""
    from audit.attest import generate_keys

    priv, pub = generate_keys(out)
    _say(f"private key: {priv}")
    _say(f"public key: {pub}")
