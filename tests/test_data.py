from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit.config import config_from_text
from audit.data import encode_labels, load_split
from audit.errors import DataError

ID2LABEL = {0: "negative", 1: "positive"}


def cfg_for(tmp_path: Path, files: str, extra: str = "") -> object:
    return config_from_text(
        f"model: {{path: m}}\ndata:\n  files: {files}\n  splits: {{eval: test, calibration: null}}\n{extra}",
        base_dir=str(tmp_path),
    )


def rows(n: int = 6) -> list[dict]:
    return [
        {"text": f"text number {i}", "label": i % 2, "gender": ["f", "m", None][i % 3], "sid": f"x{i}"}
        for i in range(n)
    ]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_local_formats_load_through_datasets(tmp_path: Path, fmt: str) -> None:
    import pandas as pd

    df = pd.DataFrame(rows())
    path = tmp_path / f"test.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    cfg = cfg_for(
        tmp_path, f"{{test: test.{fmt}}}", "  columns: {text: text, label: label, id: sid, groups: [gender]}\n"
    )
    es = load_split(cfg, "test", ID2LABEL)
    assert es.texts == [r["text"] for r in rows()]
    assert es.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert es.ids == [f"x{i}" for i in range(6)]
    assert es.groups["gender"].tolist() == ["f", "m", "(missing)", "f", "m", "(missing)"]
    assert es.identity is not None and es.identity.n == 6 and len(es.identity.fingerprint) == 64


def test_headerless_tsv_with_column_names(tmp_path: Path) -> None:
    (tmp_path / "test.txt").write_text('a "quoted" review\t1\nbad one\t0\n', encoding="utf-8")
    cfg = cfg_for(
        tmp_path, "{test: test.txt}", "  column_names: [sentence, y]\n  columns: {text: sentence, label: y}\n"
    )
    es = load_split(cfg, "test", ID2LABEL)
    assert es.texts == ['a "quoted" review', "bad one"] and es.labels.tolist() == [1, 0]


def test_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
    cfg = cfg_for(tmp_path, "{test: test.jsonl}", "  columns: {text: review, label: label}\n")
    with pytest.raises(DataError) as exc:
        load_split(cfg, "test", ID2LABEL)
    msg = str(exc.value)
    assert "column 'review' (columns.text) not found" in msg and "data.files.test=test.jsonl" in msg
    assert "'text'" in msg  # lists what the data has


def test_labels_the_model_does_not_know(tmp_path: Path) -> None:
    data = [{"text": "a", "label": 0}, {"text": "b", "label": 7}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    with pytest.raises(DataError, match=r"labels \[7\] are outside the model's 2 classes"):
        load_split(cfg_for(tmp_path, "{test: test.jsonl}"), "test", ID2LABEL)


def test_string_labels_map_through_the_model_config_or_label_map() -> None:
    assert encode_labels(["positive", "Negative", "LABEL_1"], ID2LABEL, None, "w").tolist() == [1, 0, 1]
    assert encode_labels(["pos", "neg"], ID2LABEL, {"pos": 1, "neg": 0}, "w").tolist() == [1, 0]
    with pytest.raises(DataError, match=r"\['neutral'\] are not labels of the model"):
        encode_labels(["positive", "neutral"], ID2LABEL, None, "w")
    with pytest.raises(DataError, match="2 rows have no label"):
        encode_labels(["positive", None, ""], ID2LABEL, None, "w")


def test_empty_and_non_utf8_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "test.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="the split has no rows"):
        load_split(cfg_for(tmp_path, "{test: test.csv}"), "test", ID2LABEL)
    (tmp_path / "test.csv").write_bytes(b"text,label\ncaf\xe9 \xff,1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_split(cfg_for(tmp_path, "{test: test.csv}"), "test", ID2LABEL)
    with pytest.raises(DataError, match="data file not found"):
        load_split(cfg_for(tmp_path, "{test: nope.csv}"), "test", ID2LABEL)


def test_max_eval_examples_is_a_seeded_sample(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(50)))
    cfg = cfg_for(tmp_path, "{test: test.jsonl}", "  max_eval_examples: 10\n")
    a = load_split(cfg, "test", ID2LABEL)
    b = load_split(cfg, "test", ID2LABEL)
    assert len(a) == 10 and a.texts == b.texts
    assert np.all(np.isin(a.labels, [0, 1]))
