"""docs/configuration.md is generated from the config's JSON Schema and must not drift from the models."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from audit.cli import main
from audit.config import AuditConfig, config_from_text
from audit.config_doc import DOC_PATH, config_reference

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<type>.*?) \| (?P<default>.*?) \| (?P<desc>.*) \|$")


def _rows(text: str) -> dict[str, dict[str, str]]:
    return {m["key"]: m.groupdict() for m in map(ROW.match, text.splitlines()) if m}


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the config model inside a field's annotation, whether it is a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in typing.get_args(annotation):
        sub, inner = _nested(arg)
        if sub is not None:
            return sub, inner or typing.get_origin(annotation) is list
    return None, False


def _config_keys(model: type[BaseModel], prefix: str = "") -> dict[str, bool]:
    """Every key of the config's own sections (not plugin params) -> whether it holds a section."""
    out = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        sub, is_list = _nested(field.annotation)
        out[key] = sub is not None
        if sub is not None:
            out |= _config_keys(sub, key + ("[]" if is_list else ""))
    return out


def test_the_committed_configuration_reference_matches_the_models() -> None:
    committed = (ROOT / DOC_PATH).read_text(encoding="utf-8")
    assert committed == config_reference(), (
        f"{DOC_PATH} is out of date: run `make schemas` "
        "(or `prune-audit schema config --format markdown -o docs/configuration.md`)"
    )


def test_every_config_key_is_in_the_reference_with_a_type_default_and_description() -> None:
    rows = _rows(config_reference())
    keys = _config_keys(AuditConfig)
    assert {"model.max_length", "sweep.methods[].params", "deploy.speed_rounds", "seed"} <= set(keys)
    for key, is_section in keys.items():
        if is_section and "." not in key:  # a top-level section is a heading of its own, not a row
            continue
        assert key in rows, f"config key {key} is missing from the reference"
        assert rows[key]["type"] and rows[key]["default"], key
        assert rows[key]["desc"].strip(), f"config key {key} has no description: add one to its Field(...)"


def test_sampling_and_truncation_options_say_what_they_do() -> None:
    rows = _rows(config_reference())
    for key in ("data.max_eval_examples", "ood.shifted[].max_examples"):
        assert "seeded random sample" in rows[key]["desc"] and "sorted by label" in rows[key]["desc"], key
    assert rows["model.max_length"]["default"] == "`128`"
    assert "truncation" in rows["model.max_length"]["desc"].lower()
    assert rows["deploy.formats"]["default"].startswith("`[")  # a default built by a factory is shown too


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize(("source", "max_length"), [("reference", 256), ("readme", 128)])
def test_the_example_configs_validate_and_set_max_length_and_a_sample(source: str, max_length: int) -> None:
    text = config_reference() if source == "reference" else (ROOT / "README.md").read_text(encoding="utf-8")
    example = next(b for b in _yaml_blocks(text) if b.lstrip().startswith(("model:", "# audit.yaml")))
    cfg = config_from_text(example)
    assert (cfg.data.max_eval_examples, cfg.model.max_length) == (2000, max_length)


def test_the_cli_writes_the_reference_and_refuses_markdown_for_other_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "configuration.md"
    assert main(["schema", "config", "--format", "markdown", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == config_reference()
    capsys.readouterr()
    assert main(["schema", "policy", "--format", "markdown"]) == 4
    assert "--format markdown is the configuration reference" in capsys.readouterr().err
