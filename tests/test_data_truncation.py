"""Texts that differ only after max_length tokens but carry different labels: counted on the dataset identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.data import EvalSet, record_truncation, truncation_conflicts
from audit.fingerprint import texts_sha256
from audit.results import DatasetIdentity

WORDS = ["good", "bad", "plot", "so", "i", "loved", "hated", "it", "fine"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from transformers import BertTokenizerFast

    from audit.inference import Predictor

    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return Predictor(BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True), max_length=12)


def evalset(texts: list[str], labels: list[int], pairs: list[str] | None = None) -> EvalSet:
    es = EvalSet(name="contrast", texts=texts, labels=np.asarray(labels), text_pairs=pairs)
    es.identity = DatasetIdentity(id="contrast", source="x", n=len(texts), fingerprint=texts_sha256(texts, labels))
    return es


LONG = "good plot " * 10  # 20 tokens: past max_length=12 (10 after [CLS] and [SEP])


def test_differently_labelled_texts_identical_once_truncated_are_counted(predictor) -> None:  # noqa: ANN001
    es = evalset(
        [
            LONG + "so i loved it",  # 0 \ identical in their first 12 tokens, labels differ: a conflict
            LONG + "so i hated it",  # 1 /
            LONG + "fine",  # 2: the same prefix too, label 1: joins the group of 0 and 1
            "bad " * 20 + "loved",  # 3 \ identical once truncated, but the same label: no conflict
            "bad " * 20 + "hated",  # 4 /
            "so i loved it",  # 5 \ the same short text with two labels: a label problem, not truncation
            "so i loved it",  # 6 /
            "fine plot",  # 7
        ],
        [1, 0, 1, 0, 0, 1, 0, 1],
    )
    assert record_truncation(es, predictor) == 5
    enc = predictor.encode(es.texts)
    assert truncation_conflicts(es, enc) == [[0, 1, 2]]
    assert es.identity.truncation_conflicts == [1, 3]
    note = es.identity.truncation_note
    assert note is not None and note.endswith(
        "; 1 group(s) of different texts (3 texts) become identical once truncated but carry different labels, "
        "so no model can classify all of them correctly"
    )


def test_no_conflict_without_truncation_or_with_one_label(predictor) -> None:  # noqa: ANN001
    es = evalset([LONG + "loved", LONG + "hated", "fine"], [1, 1, 0])
    assert record_truncation(es, predictor) == 2
    assert es.identity.truncation_conflicts == [0, 0]
    assert "become identical" not in es.identity.truncation_note
    short = evalset(["so i loved it", "so i hated it"], [1, 0])
    assert record_truncation(short, predictor) == 0
    assert short.identity.truncation_conflicts == [0, 0] and short.identity.truncation_note is None


def test_pairs_count_in_the_identity_of_an_input(predictor) -> None:  # noqa: ANN001
    # the same first text, pairs that differ only past the cut: identical inputs, different labels
    es = evalset(["good plot", "good plot"], [1, 0], pairs=[LONG + "loved", LONG + "hated"])
    record_truncation(es, predictor)
    assert es.identity.truncation_conflicts == [1, 2]
    # pairs that differ before the cut are different inputs
    es2 = evalset(["good plot", "good plot"], [1, 0], pairs=["loved " + LONG, "hated " + LONG])
    record_truncation(es2, predictor)
    assert es2.identity.truncation_conflicts == [0, 0]


def test_a_run_lists_the_conflicts_in_its_limitations(tmp_path: Path) -> None:
    from results_factory import m, run

    from reports.writer import render_reports

    res = run([m("accuracy", 0.9)], [])
    res.datasets = [
        DatasetIdentity(
            id="contrast",
            source="x",
            n=488,
            fingerprint="a" * 64,
            max_length=64,
            truncated=200,
            truncation_conflicts=[53, 106],
        )
    ]
    md = render_reports(res, ["markdown"])["markdown"]
    assert "53 group(s) of different texts (106 texts) become identical once truncated" in md
