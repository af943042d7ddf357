"""Hostile datasets through the real CLI (``python -m audit run -c ...``), end to end."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import demo_rows, write_config, write_jsonl
from test_cli import cli

from audit.results import load_results

NASTY = "nul\x00 esc\x1b[31mred\x1b[0m\x1b[2J cr\rover \ufffe bidi \u202egnp.exe\u202c"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffe\uffff]")
EVIL_GROUP = "\x1b[31mevil\x1b[0m"


def _hostile_rows(split: str, n: int) -> list[dict]:
    rows = demo_rows(split, n, seed=3)
    for i, r in enumerate(rows):
        if i < 10:
            r["text"] = f"{r['text']} {NASTY}"
        elif i < 20:
            r["text"] = "really " * 80 + r["text"]  # far more than max_length=64 tokens
        elif i < 22:
            r["text"] = ["", "  \t "][i - 20]
        if i in (23, 24):
            r["gender"] = EVIL_GROUP
    return rows


def _config(tmp_path: Path, model_dir: Path, data: Path, data_files: str) -> Path:
    shifted = (
        "  ood:\n"
        "    corruptions: [{kind: typo, rate: 0.3}]\n"
        "    shifted:\n"
        f"      - {{name: shifted, path: {data / 'ood.jsonl'}, columns: {{text: text, label: label}}}}\n"
    )
    return write_config(
        tmp_path / "audit.yaml",
        model_dir,
        data,
        data=(
            "data:\n"
            f"  files: {data_files}\n"
            "  columns: {text: text, label: label, id: id, groups: [gender]}\n"
            "  splits: {eval: test, calibration: null}\n"
        ),
        sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n",
        suites="suites:\n  performance: {}\n" + shifted,
        deploy="deploy:\n  enabled: false\n",
    )


@pytest.mark.slow
def test_run_on_a_hostile_dataset_keeps_every_output_valid(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_jsonl(data / "test.jsonl", _hostile_rows("test", 120))
    write_jsonl(data / "ood.jsonl", _hostile_rows("ood", 60))
    cfg = _config(tmp_path, tiny_model_dir, data, f"{{test: {data / 'test.jsonl'}}}")
    r = cli("run", "-c", str(cfg))
    assert (tmp_path / "out" / "results.json").is_file(), r.stderr
    assert "Traceback" not in r.stderr and not RAW_CONTROL.search(r.stderr + r.stdout)
    assert "dataset shifted: 10 of 60 texts are longer than max_length=64 tokens and were truncated" in r.stderr
    out = tmp_path / "out"

    res = load_results(out / "results.json")  # parses and validates
    assert r.returncode == res.verdict.exit_code, r.stderr
    ds = {d.id: d for d in res.datasets}
    assert ds["shifted"].max_length == 64 and ds["shifted"].truncated == 10
    assert ds["test"].max_length == 64 and ds["test"].truncated == 10  # the eval set itself
    assert ds["test"].truncation_note in res.limitations
    corrupted = ds["test-typo"]  # the typo corruption of the eval set keeps its long texts
    assert corrupted.max_length == 64 and corrupted.truncated is not None and corrupted.truncated >= 1
    lim = "\n".join(res.limitations)
    assert "2 of 120 texts in column 'text' are empty or whitespace-only (data rows 21, 22)" in lim
    assert "10 of 120 texts in column 'text' hold control characters" in lim
    raw = (out / "results.json").read_text(encoding="utf-8")
    assert "\x1b" not in raw and any(EVIL_GROUP in line for line in json.loads(raw)["limitations"])  # exact, escaped

    root = ET.parse(out / "junit.xml").getroot()  # XML 1.0 parses
    assert root.tag == "testsuites" and int(root.get("tests")) > 0
    for name in ("report.html", "summary.md", "model-card.md", "junit.xml"):
        text = (out / name).read_text(encoding="utf-8")
        assert not RAW_CONTROL.search(text), name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "10 (16.7%) at 64 tokens" in html  # the shifted set's row of the data identity section
    assert "dataset shifted: 10 of 60 texts (16.7%) are longer than max_length=64 tokens" in html
    assert "\u241b[31mevil\u241b[0m (n=2)" in html  # a hostile group value from the data, made visible


@pytest.mark.slow
def test_unusable_data_exits_4_with_one_line_before_writing(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = demo_rows("test", 40, seed=3)
    rows[4]["text"] = None
    rows[9]["text"] = None
    write_jsonl(data / "test.jsonl", rows)
    cfg = _config(tmp_path, tiny_model_dir, data, f"{{test: {data / 'test.jsonl'}}}")
    r = cli("run", "-c", str(cfg))
    assert r.returncode == 4, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert "test.jsonl" in errors[0] and "2 of 40 rows have no text (null) in column 'text'" in errors[0]
    assert "data rows 5, 10" in errors[0]
    assert not (tmp_path / "out").exists()

    (data / "latin.csv").write_bytes("text,label,id,gender\ncaf\u00e9,1,a,f\n".encode("latin-1"))
    cfg = _config(tmp_path, tiny_model_dir, data, f"{{test: {data / 'latin.csv'}}}")
    r = cli("run", "-c", str(cfg))
    assert r.returncode == 4 and "Traceback" not in r.stderr
    assert "latin.csv is not UTF-8: byte 0xe9 at offset 24 (line 2)" in r.stderr
    assert "re-encode the file as UTF-8" in r.stderr
    assert not (tmp_path / "out").exists()
