"""Hostile config and policy files: never a traceback, always a located UsageError (exit 4)."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.config import config_from_text
from audit.errors import ConfigError, ExitCode, UsageError
from audit.policy import policy_from_text
from audit.yamlio import parse_yaml

VALID_CONFIG = {
    "model": {"path": "m", "max_length": 64},
    "data": {
        "files": {"train": "a.csv", "test": "b.csv"},
        "columns": {"text": "t", "label": "l", "groups": ["g"]},
        "splits": {"eval": "test", "calibration": "train"},
    },
    "sweep": {"methods": ["magnitude"], "sparsities": [0.5], "seeds": [0]},
    "suites": {"performance": {}},
    "policy": "default",
}
VALID_POLICY = {
    "name": "p",
    "rules": [{"id": "r", "metric": "performance/*/accuracy", "min": 0.5, "severity": "fail"}],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(string.ascii_letters + "_", max_size=10), inner, max_size=4),
    ),
    max_leaves=20,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(base: dict, path: list[str], value: object, drop: bool) -> dict:
    import copy

    out = copy.deepcopy(base)
    node = out
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
            break
        node = node[key]
    if isinstance(node, dict):
        if drop:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return out


def _keys(d: dict, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    out = []
    for k, v in d.items():
        out.append([*prefix, k])
        if isinstance(v, dict):
            out.extend(_keys(v, (*prefix, k)))
    return out


def _check_error(exc: UsageError) -> None:
    assert exc.exit_code == ExitCode.USAGE_ERROR
    text = str(exc)
    assert text and "Traceback" not in text
    if isinstance(exc, ConfigError):
        assert exc.file is not None


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    for load in (config_from_text, policy_from_text):
        try:
            parse_yaml(raw, "fuzz.yaml")
            load(raw.decode("utf-8", "replace"), "fuzz.yaml")
        except UsageError as exc:
            _check_error(exc)


@FUZZ
@given(doc=values)
def test_arbitrary_yaml_documents(doc: object) -> None:
    text = yaml.safe_dump(doc)
    for load in (config_from_text, policy_from_text):
        try:
            load(text, "fuzz.yaml")
        except UsageError as exc:
            _check_error(exc)


@FUZZ
@given(data=st.data(), value=values, drop=st.booleans())
def test_mutated_valid_config(data: st.DataObject, value: object, drop: bool) -> None:
    path = data.draw(st.sampled_from(_keys(VALID_CONFIG)))
    doc = _mutate(VALID_CONFIG, path, value, drop)
    try:
        cfg = config_from_text(yaml.safe_dump(doc), "fuzz.yaml")
    except ConfigError as exc:
        _check_error(exc)
        assert exc.line is not None  # a mutated valid file always has a line to point at
    else:
        assert cfg.model is not None


@FUZZ
@given(data=st.data(), value=values, drop=st.booleans())
def test_mutated_valid_policy(data: st.DataObject, value: object, drop: bool) -> None:
    base = dict(VALID_POLICY)
    base["rules"] = [dict(VALID_POLICY["rules"][0])]
    rule_keys = [["rules", k] for k in base["rules"][0]] + [["rules", "x"]]
    path = data.draw(st.sampled_from([*_keys(base), *rule_keys]))
    if path[0] == "rules" and len(path) == 2:
        rule = _mutate(base["rules"][0], [path[1]], value, drop)
        doc = {**base, "rules": [rule]}
    else:
        doc = _mutate(base, path, value, drop)
    try:
        pol = policy_from_text(yaml.safe_dump(doc), "fuzz.yaml")
    except ConfigError as exc:
        _check_error(exc)
    else:
        assert pol.rules


def test_yaml_bombs_and_deep_nesting_are_refused_cleanly() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    deep = "model: " + "[" * 5000 + "]" * 5000 + "\n"
    into_fields = bomb + "model: {path: m}\ndata: {files: {test: a}}\nsweep: {sparsities: *i}\n"
    # line 7 holds g, the first anchor whose expansion (8**7 values) is over the limit
    for text in (bomb, bomb + "model: *i\ndata: *i\n", into_fields):
        with pytest.raises(ConfigError, match="an alias bomb") as caught:
            config_from_text(text, "hostile.yaml")
        _check_error(caught.value)
        assert (caught.value.file, caught.value.line) == ("hostile.yaml", 7)
    with pytest.raises(ConfigError, match="invalid YAML: RecursionError") as caught:
        config_from_text(deep, "hostile.yaml")
    _check_error(caught.value)
    with pytest.raises(ConfigError, match="recursive structure") as caught:
        config_from_text("model: &m {path: x, sub: [*m]}\n", "hostile.yaml")
    assert caught.value.line == 1
    # anchors used as intended stay fine
    assert parse_yaml("s: &s [0.5, 0.9]\nt: *s\n", "ok.yaml").data == {"s": [0.5, 0.9], "t": [0.5, 0.9]}


def test_cli_validate_on_hostile_files_exits_4_without_traceback(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = {
        "binary.yaml": bytes(range(256)) * 4,
        "control.yaml": b"model: {path: \x07\x1b[31m}\ndata: {files: {test: t.csv}}\n",
        "latin1.yaml": "model: {path: caf\xe9}\n".encode("latin-1"),
        "bomb.yaml": (
            "a: &a [x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            )
            + "model: *i\n"
        ).encode(),
    }
    for name, raw in files.items():
        path = tmp_path / name
        path.write_bytes(raw)
        r = subprocess.run(
            [sys.executable, "-m", "audit", "validate", str(path)], capture_output=True, text=True, cwd=root, timeout=60
        )
        assert r.returncode == 4, (name, r.stderr)
        assert "Traceback" not in r.stderr and str(path) in r.stderr, (name, r.stderr)
