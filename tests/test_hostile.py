"""Hostile input: control characters, very long texts, empty and missing texts, files that
are not UTF-8, and output paths that would leave the output directory."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from results_factory import m, run, variant

from audit.config import config_from_text
from audit.data import check_data_files, load_split, record_truncation
from audit.errors import DataError, UsageError
from audit.paths import UnsafePathError, check_name, safe_join
from audit.results import DatasetIdentity, SuiteError
from audit.textsafe import has_unsafe, visible
from reports.writer import render_reports, report_targets, write_reports

ID2LABEL = {0: "negative", 1: "positive"}
# NUL, an ANSI colour + clear-screen sequence, a lone CR, a non-character, a bidi override, a C1 CSI
NASTY = "nul\x00 esc\x1b[31mred\x1b[0m\x1b[2J cr\rover \ufffe bidi \u202egnp.exe\u202c c1\x9b"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffe\uffff]")


def cfg_for(tmp_path: Path, files: str, extra: str = "") -> object:
    return config_from_text(
        f"model: {{path: m}}\ndata:\n  files: {files}\n  splits: {{eval: test, calibration: null}}\n{extra}",
        base_dir=str(tmp_path),
    )


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- making text visible -------------------------------------------------------------------


def test_visible_replaces_controls_bidi_and_non_characters_only() -> None:
    shown = visible(NASTY)
    assert not RAW_CONTROL.search(shown)
    assert "nul\u2400" in shown and "esc\u241b[31m" in shown and "cr\u240dover" in shown
    assert "\u27e8U+FFFE\u27e9" in shown and "\u27e8U+202E\u27e9gnp.exe" in shown and "c1\u27e8U+009B\u27e9" in shown
    assert visible("lone \ud800 surrogate") == "lone \u27e8U+D800\u27e9 surrogate"
    # ordinary text is untouched: accents, CJK, emoji, tabs, newlines; CR-LF is a newline
    assert visible("café 日本 😀\tx\ny") == "café 日本 😀\tx\ny"
    assert visible("a\r\nb") == "a\nb" and visible("a\nb", newlines=False) == "a\u240ab"
    assert has_unsafe(NASTY) and not has_unsafe("plain\r\ntext\twith tabs") and visible(3.5) == "3.5"


# -- reports stay valid and inert -------------------------------------------------------------


def _nasty_run():
    groups = {"gender": {NASTY: (0.8, 40), "m": (0.9, 50)}}
    base = [m("accuracy", 0.9, groups=groups), m("accuracy_delta", 0.0), m("agreement", 1.0)]
    bad = variant(
        "magnitude-s0.50-seed0",
        "magnitude",
        0.5,
        [m("accuracy", 0.7, groups=groups), m("accuracy_delta", -0.2), m("agreement", 0.8)],
        errors=[SuiteError(suite="ood", error_type="ValueError", message=f"crashed on {NASTY}")],
    )
    bad.examples = {"performance": [{"id": "r0", "text": NASTY, "label": "positive"}]}
    bad.warnings = [f"warning about {NASTY}"]
    result = run(
        base,
        [bad],
        datasets=[
            DatasetIdentity(id="test", source=f"data/{NASTY}.jsonl", n=10, fingerprint="a" * 64),
            DatasetIdentity(id="long", source="x", n=200, fingerprint="b" * 64, max_length=64, truncated=30),
        ],
        limitations=[f"eval data: {NASTY}"],
    )
    from audit.policy import Policy, evaluate_policy

    policy = Policy.model_validate(
        {
            "name": "p",
            "rules": [
                {"id": "floor", "metric": "performance/*/accuracy_delta", "min": -0.05},
                # an ERROR whose finding carries the crashed suite's message, NASTY included
                {"id": "ood-floor", "metric": "ood/*/accuracy_delta", "min": -0.1},
            ],
        }
    )
    result.verdict = evaluate_policy(policy, result)
    return result


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_every_report_stays_valid_and_inert_with_control_characters(tmp_path: Path) -> None:
    result = _nasty_run()
    rendered = render_reports(result, ["all"])
    # results.json keeps the data exactly (JSON escapes controls) and parses back
    doc = json.loads(rendered["json"])
    assert doc["variants"][0]["examples"]["performance"][0]["text"] == NASTY
    assert "\x1b" not in rendered["json"] and "\x00" not in rendered["json"]
    # JUnit parses as XML 1.0; the values are there, made visible
    root = ET.fromstring(rendered["junit"].encode("utf-8"))
    assert root.get("failures") == "1" and root.get("errors") == "1"
    error = root.find(".//testcase/error")
    assert error is not None and f"crashed on {visible(NASTY)}" in error.text
    # no raw control, bidi or non-character anywhere in what people read
    for name in ("html", "markdown", "model-card", "junit"):
        assert not RAW_CONTROL.search(rendered[name]), name
    html = rendered["html"]
    parser = _Text()
    parser.feed(html)
    assert "script" not in parser.tags
    text = "".join(parser.text)
    assert "esc\u241b[31mred" in text and "\u27e8U+202E\u27e9gnp.exe" in text  # visible, not acting
    assert "30 (15.0%) at 64 tokens" in text  # truncation in the data identity section
    assert "dataset long: 30 of 200 texts (15.0%) are longer than max_length=64 tokens" in text
    md = rendered["markdown"]
    assert "dataset long: 30 of 200 texts" in md and "\u241b" in md
    files = write_reports(result, tmp_path / "out", ["all"])
    assert json.loads(files["json"].read_text(encoding="utf-8"))["datasets"][1]["truncated"] == 30


def test_github_annotations_and_log_lines_carry_no_escape_sequences(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from audit.cli import _VisibleFormatter
    from reports import github

    result = _nasty_run()
    lines = github.annotations(result)
    assert lines and not any(RAW_CONTROL.search(line) or "\n" in line for line in lines)
    record = logging.LogRecord("audit", logging.WARNING, __file__, 1, "group %s is small", (NASTY,), None)
    line = _VisibleFormatter("%(message)s").format(record)
    assert line.startswith("group nul\u2400") and not RAW_CONTROL.search(line)


# -- data: control characters, empty and missing texts --------------------------------------


def test_control_characters_are_evaluated_as_given_and_counted(tmp_path: Path) -> None:
    texts = [NASTY, "plain", "", "   \t ", "crlf\r\nline", "ok"]
    write_rows(tmp_path / "test.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(texts)])
    es = load_split(cfg_for(tmp_path, "{test: test.jsonl}"), "test", ID2LABEL)
    assert es.texts == texts  # exactly as given: the model sees what the data holds
    assert any("2 of 6 texts in column 'text' are empty or whitespace-only (data rows 3, 4)" in w for w in es.warnings)
    assert any(
        "1 of 6 texts in column 'text' hold control characters" in w and "(data rows 1)" in w for w in es.warnings
    )


def test_null_text_is_an_error_naming_file_column_and_rows(tmp_path: Path) -> None:
    rows = [{"text": None if i in (2, 5) else f"t{i}", "label": 0} for i in range(8)]
    write_rows(tmp_path / "test.jsonl", rows)
    with pytest.raises(DataError) as exc:
        load_split(cfg_for(tmp_path, "{test: test.jsonl}", "  max_eval_examples: 3\n"), "test", ID2LABEL)
    msg = str(exc.value)
    assert "data.files.test=test.jsonl" in msg and "2 of 8 rows have no text (null) in column 'text'" in msg
    assert "data rows 3, 6" in msg and "\n" not in msg
    # parquet nulls too, and a text_pair column is held to the same rule
    import pandas as pd

    pd.DataFrame({"text": ["a", "b"], "pair": ["x", None], "label": [0, 1]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"1 of 2 rows have no text \(null\) in column 'pair' \(columns.text_pair\)"):
        load_split(
            cfg_for(tmp_path, "{test: p.parquet}", "  columns: {text: text, text_pair: pair, label: label}\n"),
            "test",
            ID2LABEL,
        )


def test_non_text_values_and_escaped_surrogates_are_errors(tmp_path: Path) -> None:
    write_rows(tmp_path / "test.jsonl", [{"text": ["a", "list"], "label": 0}, {"text": ["b"], "label": 1}])
    with pytest.raises(DataError, match=r"column 'text' \(columns.text\) must hold text, found list values"):
        load_split(cfg_for(tmp_path, "{test: test.jsonl}"), "test", ID2LABEL)
    # a JSON escape of a lone surrogate is not text; the parser's own message says where
    (tmp_path / "test.jsonl").write_text('{"text": "ok", "label": 0}\n{"text": "a\\ud800b", "label": 1}\n')
    with pytest.raises(DataError, match="cannot parse test.jsonl as json: .*surrogate"):
        load_split(cfg_for(tmp_path, "{test: test.jsonl}"), "test", ID2LABEL)


# -- data: files that are not UTF-8 ------------------------------------------------------------

CSV = "text,label\ncafé crème,1\nnaïve bad,0\n"
TSV = "text\tlabel\ncafé crème\t1\nnaïve bad\t0\n"
JSONL = '{"text": "café crème", "label": 1}\n{"text": "naïve bad", "label": 0}\n'


@pytest.mark.parametrize("ext,text", [("csv", CSV), ("tsv", TSV), ("jsonl", JSONL)])
def test_text_files_must_be_utf8_and_errors_name_offset_and_fix(tmp_path: Path, ext: str, text: str) -> None:
    cfg = cfg_for(tmp_path, f"{{test: data.{ext}}}")
    path = tmp_path / f"data.{ext}"
    path.write_bytes(text.encode("utf-8-sig"))  # a UTF-8 byte-order mark just works
    es = load_split(cfg, "test", ID2LABEL)
    assert es.texts == ["café crème", "naïve bad"] and es.labels.tolist() == [1, 0]

    latin = text.encode("latin-1")
    path.write_bytes(latin)
    with pytest.raises(DataError) as exc:
        check_data_files(cfg)  # the torch-free pre-flight already refuses it
    msg = str(exc.value)
    offset = latin.index(b"\xe9")
    line = latin[:offset].count(b"\n") + 1
    assert f"data.{ext} is not UTF-8: byte 0xe9 at offset {offset} (line {line})" in msg
    assert "re-encode the file as UTF-8" in msg and "iconv" in msg and "\n" not in msg
    with pytest.raises(DataError, match=f"byte 0xe9 at offset {offset}"):
        load_split(cfg, "test", ID2LABEL)

    path.write_bytes(text.encode("utf-16"))  # with its byte-order mark
    with pytest.raises(DataError, match=r"is UTF-16-LE \(byte-order mark at offset 0\), not UTF-8"):
        load_split(cfg, "test", ID2LABEL)
    path.write_bytes(text.encode("utf-16-le"))  # without one
    with pytest.raises(DataError, match="are NUL .UTF-16/UTF-32 without a byte-order mark, or a binary file"):
        load_split(cfg, "test", ID2LABEL)


def test_utf8_errors_past_the_first_chunk_report_the_absolute_offset(tmp_path: Path) -> None:
    body = b"text,label\n" + b"".join(b"row number %07d,1\n" % i for i in range(70_000))  # > 1 MiB
    bad_at = len(body) + 4
    path = tmp_path / "big.csv"
    path.write_bytes(body + b"cafe\xff,1\n")
    with pytest.raises(DataError, match=f"byte 0xff at offset {bad_at} \\(line 70002\\)"):
        check_data_files(cfg_for(tmp_path, "{test: big.csv}"))


def test_binary_garbage_is_refused_in_every_format(tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 8
    for ext in ("csv", "jsonl", "parquet"):
        (tmp_path / f"g.{ext}").write_bytes(garbage)
        with pytest.raises(DataError) as exc:
            load_split(cfg_for(tmp_path, f"{{test: g.{ext}}}"), "test", ID2LABEL)
        assert f"g.{ext}" in str(exc.value)
    assert "Parquet magic bytes not found" in str(exc.value)


def test_parquet_strings_that_are_not_utf8_are_an_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = pa.py_buffer(np.array([0, 4, 6], dtype=np.int32).tobytes())
    text = pa.StringArray.from_buffers(2, offsets, pa.py_buffer(b"caf\xe9ok"))  # latin-1 bytes in a string column
    pq.write_table(pa.table({"text": text, "label": pa.array([0, 1])}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="column 'text' holds strings that are not UTF-8 .byte 0xe9"):
        load_split(cfg_for(tmp_path, "{test: bad.parquet}"), "test", ID2LABEL)


# -- very long texts: truncation counted in tokens, recorded ----------------------------------------


def test_truncation_is_counted_in_tokens_fast_and_slow(tiny_model_dir: Path) -> None:
    from transformers import BertTokenizer, BertTokenizerFast

    from audit.inference import Predictor

    # [CLS] + words + [SEP]: 14 words fit in 16 tokens exactly, 15 do not
    texts = ["good " * 40, "bad", "good movie " * 3, "good " * 14, "good " * 15, ""]
    pairs = ["fine"] * len(texts)
    for cls in (BertTokenizerFast, BertTokenizer):
        tok = cls.from_pretrained(tiny_model_dir)
        truth = [len(tok(t)["input_ids"]) > 16 for t in texts]
        enc = Predictor(tok, max_length=16).encode(texts)
        assert enc.truncated == sum(truth) == 2 and enc.truncated_index.tolist() == [0, 4], cls.__name__
        assert int(enc.lengths.max()) == 16
        truth_pairs = [len(tok(t, p)["input_ids"]) > 16 for t, p in zip(texts, pairs, strict=True)]
        enc = Predictor(tok, max_length=16).encode(texts, pairs)
        assert enc.truncated == sum(truth_pairs) == 3, cls.__name__


def test_truncation_counts_texts_with_more_tokens_than_characters() -> None:
    """Byte-level BPE splits an emoji into several tokens: a character count would miss these."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from audit.inference import Predictor

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["good movie bad film"] * 20, vocab_size=300, min_frequency=1, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    texts = ["\U0001f600" * 3, "good", "good movie"]
    assert len(texts[0]) < 8 < len(tok(texts[0])["input_ids"])
    enc = Predictor(tok, max_length=8).encode(texts)
    assert enc.truncated == 1 and enc.truncated_index.tolist() == [0]


def test_record_truncation_sets_identity_and_reuses_the_encoding(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from audit.inference import Predictor

    rows = [{"text": "good " * (5 if i % 4 else 100), "label": i % 2} for i in range(20)]
    write_rows(tmp_path / "test.jsonl", rows)
    es = load_split(cfg_for(tmp_path, "{test: test.jsonl}"), "test", ID2LABEL)
    assert es.identity is not None and es.identity.truncated is None  # not known before tokenizing
    predictor = Predictor(AutoTokenizer.from_pretrained(tiny_model_dir), max_length=32)
    assert record_truncation(es, predictor) == 5
    assert es.identity.truncated == 5 and es.identity.max_length == 32
    assert es.identity.truncation_note is not None and "5 of 20 texts (25.0%)" in es.identity.truncation_note
    cached = predictor.encode(es.texts, es.text_pairs)
    assert predictor.encode(es.texts, es.text_pairs) is cached  # the suites reuse this encoding


# -- output paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../up", "a\\b", "x\x00y", "tab\tname", "esc\x1b[2J", "n" * 256])
def test_check_name_rejects_names_that_are_not_one_safe_component(bad: str) -> None:
    with pytest.raises(UnsafePathError) as exc:
        check_name(bad, what="variant id", where="sweep.methods[0]")
    assert exc.value.exit_code == 4 and "sweep.methods[0]: variant id" in str(exc.value)
    assert check_name("magnitude[scope=global]-s0.50-seed0", what="variant id").endswith("seed0")


def test_safe_join_stays_inside_and_never_writes_through_links(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    assert safe_join(out, "variants", "a") == out.resolve() / "variants" / "a"
    assert safe_join(out, "reports/x.html") == out.resolve() / "reports" / "x.html"
    for bad in ("../outside/x", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(UnsafePathError):
            safe_join(out, bad)
    (out / "variants").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="is a symbolic link inside the output directory"):
        safe_join(out, "variants", "magnitude-s0.50-seed0")
    (out / "report.html").symlink_to(outside / "report.html")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        report_targets(out, ["html"])
    # the output directory itself may be a link: that is the user's choice
    link = tmp_path / "link-out"
    link.symlink_to(out, target_is_directory=True)
    assert safe_join(link, "summary.md") == out.resolve() / "summary.md"


def test_reports_never_leave_the_output_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.registry import REPORTERS, ReporterSpec

    result = _nasty_run()
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.html").write_text("keep me")
    out.mkdir()
    (out / "report.html").symlink_to(outside / "report.html")
    with pytest.raises(UnsafePathError):
        write_reports(result, out, ["json", "html"])
    assert (outside / "report.html").read_text() == "keep me" and not (out / "results.json").exists()
    # a plugin reporter whose file name climbs out is refused before anything is rendered or written
    REPORTERS.names()  # load the built-ins first
    evil = ReporterSpec(name="evil", impl="reports.json_report:render", summary="x", filename="../evil.json")
    monkeypatch.setitem(REPORTERS._specs, "evil", evil)
    (out / "report.html").unlink()
    with pytest.raises(UnsafePathError, match=r"evil report file '../evil.json'"):
        write_reports(result, out, ["json", "evil"])
    assert not (tmp_path / "evil.json").exists() and not (out / "results.json").exists()
    # paths given explicitly on the command line are the user's choice
    files = write_reports(result, out, ["json"], paths={"junit": outside / "junit.xml"})
    assert files["junit"] == outside / "junit.xml" and ET.parse(files["junit"]).getroot().tag == "testsuites"


def test_variant_ids_that_could_escape_are_rejected_by_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.plan import plan
    from audit.registry import PRUNERS, PluginParams, PrunerSpec

    class Params(PluginParams):
        tag: str = "x"

    PRUNERS.names()
    spec = PrunerSpec(name="tagged", impl="audit.pruning.magnitude:MagnitudePruner", summary="t", params=Params)
    monkeypatch.setitem(PRUNERS._specs, "tagged", spec)
    text = "model: {path: m}\ndata: {files: {test: t.csv}}\nsweep: {methods: [{name: tagged, params: {tag: %s}}]}\n"
    assert [p.id for p in plan(config_from_text(text % "ok"))][1] == "tagged[tag=ok]-s0.50-seed0"
    with pytest.raises(UsageError, match=r"sweep.methods\[0\] \(tagged\): variant id 'tagged\[tag=../../x\]"):
        plan(config_from_text(text % "'../../x'"))


def test_saved_variants_stay_inside_the_output_directory(tmp_path: Path) -> None:
    import torch

    from audit.deploy.io import save_deployed, variant_dir

    out = tmp_path / "out"
    (out).mkdir()
    assert variant_dir(out, "magnitude-s0.50-seed0") == out.resolve() / "variants" / "magnitude-s0.50-seed0"
    with pytest.raises(UnsafePathError, match="variant id '../x'"):
        variant_dir(out, "../x")
    with pytest.raises(UnsafePathError):
        save_deployed(torch.nn.Linear(2, 2), "../x", root=out)
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "variants").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        save_deployed(torch.nn.Linear(2, 2), "variants/magnitude-s0.50-seed0", root=out)
    assert os.listdir(outside) == []


# -- checkpoints: remote code is off by default ---------------------------------------------------


def test_custom_code_in_a_checkpoint_never_runs_by_default(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``model.trust_remote_code`` is false by default: code shipped with a checkpoint is not imported.

    (Pickle weights being refused unless allowed is tested in test_model_io.py.)
    """
    import shutil

    from audit.errors import ModelError
    from audit.model_io import load_model

    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertConfig as EvilConfig\n"

    def checkpoint(name: str, model_type: str) -> Path:
        d = tmp_path / name
        shutil.copytree(tiny_model_dir, d)
        (d / "evil_code.py").write_text(code)
        cfg = json.loads((d / "config.json").read_text())
        cfg["model_type"] = model_type
        cfg["auto_map"] = {
            "AutoConfig": "evil_code.EvilConfig",
            "AutoModelForSequenceClassification": "evil_code.EvilModel",
        }
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    def load(path: Path, extra: str = "") -> object:
        return load_model(
            config_from_text(
                f"model: {{path: {path}{extra}}}\ndata: {{files: {{test: t.csv}}, splits: {{eval: test}}}}\n"
            )
        )

    # a known architecture with custom code attached: the library's own class is used, the code is not run
    loaded = load(checkpoint("known", "bert"))
    assert type(loaded.model).__module__.startswith("transformers.") and not marker.exists()
    # an architecture only the custom code defines: refused with a clear error, the code is not run
    with pytest.raises(ModelError, match="custom code.*set model.trust_remote_code: true only if you trust it"):
        load(checkpoint("custom", "evil-net"))
    assert not marker.exists()
