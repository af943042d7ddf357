from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.config import config_from_text, config_schema, load_config
from audit.errors import ConfigError, ExitCode

VALID = """\
model:
  path: ./model
data:
  files: {train: train.csv, test: test.csv}
  columns: {text: sentence, label: label, groups: [gender]}
sweep:
  methods: [magnitude, {name: magnitude, params: {scope: global}}]
  sparsities: [0.3, 0.5]
  seeds: [0, 1]
suites: {performance: {}}
"""


def write(tmp_path: Path, text: str, name: str = "audit.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_valid_config_loads_and_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    assert cfg.model.path == "./model"
    assert cfg.resolve(cfg.model.path) == tmp_path / "model"
    assert cfg.output_path() == tmp_path / "audit-out"
    assert cfg.data.columns.groups == ["gender"]
    assert [m.params for m in cfg.sweep.methods] == [{"scope": "layer"}, {"scope": "global"}]
    assert cfg.offline is True and cfg.model.trust_remote_code is False


def test_unknown_key_reports_file_line_and_suggestion(tmp_path: Path) -> None:
    text = VALID.replace("sweep:\n", "sweep:\n  sparsity: [0.1]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    err = exc.value
    assert err.exit_code == ExitCode.USAGE_ERROR
    assert err.file.endswith("audit.yaml") and err.line == 7 and err.column == 3
    assert "unknown key 'sparsity'" in err.message
    assert err.hint == "did you mean 'sparsities'?"
    assert f"{err.file}:7:3" in str(err)


def test_wrong_type_points_at_the_value(tmp_path: Path) -> None:
    text = VALID.replace("seeds: [0, 1]", "seeds: [0, many]")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert exc.value.line == 9
    assert "sweep.seeds[1]" in exc.value.message and "'many'" in exc.value.message


def test_sparsity_out_of_range_is_rejected_with_location(tmp_path: Path) -> None:
    text = VALID.replace("[0.3, 0.5]", "[0.3, 1.0]")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert exc.value.line == 8
    assert "sparsity must be in [0, 1)" in exc.value.message


def test_unknown_method_suggests_the_closest(tmp_path: Path) -> None:
    text = VALID.replace("methods: [magnitude,", "methods: [magnitdue,")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert "unknown pruner 'magnitdue'" in exc.value.message
    assert exc.value.hint == "did you mean 'magnitude'?"
    assert exc.value.line == 7


def test_bad_method_params_name_the_method(tmp_path: Path) -> None:
    text = VALID.replace("{scope: global}", "{scope: everywhere}")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert "invalid params for method 'magnitude'" in exc.value.message
    assert exc.value.line == 7


def test_unknown_suite(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, VALID.replace("performance: {}", "perfomance: {}")))
    assert "unknown suite" in exc.value.message and exc.value.hint == "did you mean 'performance'?"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("model: {path: a}\nmodel: {path: b}\n", 2, "duplicate key 'model'"),
        ("model: [unclosed\n", 2, "invalid YAML"),
        ("- just\n- a list\n", 1, "expected a mapping"),
        ("", 1, "is empty"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, line: int, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert needle in exc.value.message
    assert exc.value.line == line


def test_non_utf8_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"model:\n  path: caf\xe9\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "not valid UTF-8" in exc.value.message and exc.value.line == 2
    with pytest.raises(ConfigError, match="config not found"):
        load_config(tmp_path / "nope.yaml")


def test_missing_required_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "model: {path: m}\n"))
    assert "data: required setting is missing" in exc.value.message


def test_eval_split_must_be_listed(tmp_path: Path) -> None:
    text = VALID.replace("columns:", "splits: {eval: dev}\n  columns:")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert "data.splits.eval is 'dev'" in exc.value.message


def test_hub_needs_online() -> None:
    data = "data: {files: {test: t.csv}, splits: {eval: test}}\n"
    with pytest.raises(ConfigError, match="needs network access but offline is true"):
        config_from_text("model: {hub_id: bert-base-uncased}\n" + data)
    cfg = config_from_text("offline: false\nmodel: {hub_id: bert-base-uncased}\n" + data)
    assert cfg.model.hub_id == "bert-base-uncased"


def test_policy_file_passed_as_config_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="looks like a policy"):
        load_config(write(tmp_path, "name: p\nrules: []\n"))


def test_schema_is_json_schema_without_private_fields() -> None:
    schema = config_schema()
    json.dumps(schema)
    assert schema["title"] == "prune-audit AuditConfig"
    assert {"model", "data", "sweep", "suites", "policy", "output_dir", "seed", "offline"} <= set(schema["properties"])
    assert "base_dir" not in schema["properties"]
    assert schema["additionalProperties"] is False
