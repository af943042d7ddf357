"""csv/tsv quoting: quoted TSV is read as a CSV reader reads it; `quoting: none` is the opt-out, with a warning."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from audit.config import config_from_text
from audit.data import load_split
from audit.errors import DataError

ID2LABEL = {0: "negative", 1: "positive"}

# a multi-line quoted field (line 3 of the file is inside row 2), a field with a tab, and "" escapes
TSV = (
    "text\tlabel\n"
    "plain review\t1\n"
    '"first line\nsecond line"\t0\n'
    '"she said ""never"" twice"\t1\n'
    '"a\ttab inside"\t0\n'
    'quote "in the middle" stays\t1\n'
)
EXPECTED = [
    "plain review",
    "first line\nsecond line",
    'she said "never" twice',
    "a\ttab inside",
    'quote "in the middle" stays',
]


def cfg_for(tmp_path: Path, name: str, extra: str = "") -> object:
    return config_from_text(
        f"model: {{path: m}}\ndata:\n  files: {{test: {name}}}\n  splits: {{eval: test, calibration: null}}\n{extra}",
        base_dir=str(tmp_path),
    )


def test_quoted_tsv_is_read_as_a_csv_reader_reads_it(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text(TSV, encoding="utf-8")
    es = load_split(cfg_for(tmp_path, "t.tsv"), "test", ID2LABEL)
    assert es.texts == EXPECTED
    assert es.labels.tolist() == [1, 0, 1, 0, 1]
    assert not [w for w in es.warnings if "quot" in w]
    # what Python's csv module reads from the same bytes
    with open(tmp_path / "t.tsv", newline="", encoding="utf-8") as fh:
        assert [r[0] for r in list(csv.reader(fh, delimiter="\t"))[1:]] == EXPECTED


def test_quoting_none_keeps_the_quotes_and_warns(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text(
        'text\tlabel\n"she said ""never"" twice"\t1\n"all quoted"\t0\nplain\t1\n', encoding="utf-8"
    )
    es = load_split(cfg_for(tmp_path, "t.tsv", "  quoting: none\n"), "test", ID2LABEL)
    assert es.texts == ['"she said ""never"" twice"', '"all quoted"', "plain"]
    quoted = [w for w in es.warnings if "look CSV-quoted" in w]
    assert len(quoted) == 1 and quoted[0].startswith("2 of 3 texts in column 'text'") and "data rows 1, 2" in quoted[0]


def test_quoting_none_on_a_multiline_field_fails_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text(TSV, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_split(cfg_for(tmp_path, "t.tsv", "  quoting: none\n"), "test", ID2LABEL)
    text = exc.value.format()
    assert "cannot parse t.tsv as tsv" in text and "set quoting: csv" in text


def test_quoting_is_only_for_csv_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match="quoting: none is only for csv/tsv files, not json"):
        load_split(cfg_for(tmp_path, "t.jsonl", "  quoting: none\n"), "test", ID2LABEL)
    with pytest.raises(Exception, match="quoting"):
        cfg_for(tmp_path, "t.tsv", "  quoting: single\n")


def test_a_real_tsv_with_doubled_quotes_loads_without_quote_characters(tmp_path: Path, shared_data: Path) -> None:
    CAD = shared_data / "cad_imdb" / "revised_test.tsv"
    cfg = config_from_text(
        f"model: {{path: m}}\ndata:\n  files: {{test: {CAD}}}\n  splits: {{eval: test, calibration: null}}\n"
        "  columns: {text: Text, label: Sentiment}\n  label_map: {Negative: 0, Positive: 1}\n",
        base_dir=str(tmp_path),
    )
    es = load_split(cfg, "test", ID2LABEL)
    with open(CAD, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(es) == len(rows) == 488
    assert es.texts == [r["Text"] for r in rows]
    assert not [w for w in es.warnings if "quot" in w]
    # read with quoting off, the quoted reviews keep their quote characters, and the warning counts them
    raw = load_split(cfg.model_copy(update={"data": cfg.data.model_copy(update={"quoting": "none"})}), "test", ID2LABEL)
    changed = [i for i, (a, b) in enumerate(zip(es.texts, raw.texts, strict=True)) if a != b]
    assert len(changed) > 100
    assert all(raw.texts[i].startswith('"') and raw.texts[i].endswith('"') for i in changed)
    assert [w for w in raw.warnings if "look CSV-quoted" in w][0].startswith(f"{len(changed)} of 488 texts")
