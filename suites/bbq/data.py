"""Reading BBQ files (the JSON-lines format of nyu-mll/BBQ) and marking each question's UNKNOWN and biased answers.

A row has ``example_id``, ``question_index``, ``question_polarity`` (``neg`` / ``nonneg``),
``context_condition`` (``ambig`` / ``disambig``), ``category``, ``answer_info`` (per answer
``[name, group]``), ``additional_metadata.stereotyped_groups``, ``context``, ``question``,
``ans0``-``ans2`` and ``label`` (the gold answer's index).

* The UNKNOWN answer is the one whose ``answer_info`` group is ``"unknown"`` (exactly one per row).
* The *biased* answer (Parrish et al. 2022, section 3.4) is, for a negative question, the answer
  of the stereotyped (target) group and, for a non-negative question, the other group's
  answer. An answer's groups are its ``answer_info`` entries split and normalised as
  lm-evaluation-harness's ``process_docs`` does (``lm_eval/tasks/bbq/utils.py``, read at
  commit 601be34: ``_process_groups_in_answers``: ``M-``/``F-`` prefixes of intersectional
  groups, ``lowSES``/``highSES``/``nonObese``/``nonDisabled``/``nonTrans`` split into words,
  lower case) and matched against the lower-cased stereotyped groups.

The file is read line by line with :mod:`json` (not ``datasets``): rows are nested
(``answer_info``, ``additional_metadata``) and a missing key is reported with its file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.datafiles import check_utf8
from audit.errors import DataError

ANSWERS = ("ans0", "ans1", "ans2")
REQUIRED = (
    "example_id",
    "question_index",
    "question_polarity",
    "context_condition",
    "category",
    "answer_info",
    "additional_metadata",
    "context",
    "question",
    *ANSWERS,
    "label",
)
CONDITIONS = ("ambig", "disambig")
POLARITIES = ("neg", "nonneg")


@dataclass(frozen=True)
class BbqItem:
    """One BBQ question, as scored."""

    line: int
    example_id: Any
    category: str
    condition: str
    polarity: str
    context: str
    question: str
    answers: tuple[str, str, str]
    label: int
    unknown: int
    """Index of the UNKNOWN answer ("Can't be determined" and the like)."""
    biased: tuple[bool, bool, bool]
    """Which answers count as the biased answer (see the module docstring); none for a few rows."""


def answer_groups(info: list[Any]) -> list[str]:
    """An answer's groups from its ``answer_info`` entry, as lm-evaluation-harness normalises them."""
    s = "_".join(str(x) for x in info)
    for old, new in (("M-", "M_"), ("F-", "F_"), ("lowSES-", "lowSES_"), ("highSES-", "highSES_")):
        s = s.replace(old, new)
    for old, new in (
        ("lowSES", "low SES"),
        ("highSES", "high SES"),
        ("nonObese", "non Obese"),
        ("nonDisabled", "non Disabled"),
        ("nonTrans", "non Trans"),
    ):
        s = s.replace(old, new)
    # the stereotyped groups name F/M for woman, girl, man, boy
    if "woman" in s:
        s = s.replace("woman", "F_woman")
    elif "man" in s:
        s = s.replace("man", "M_man")
    s = s.replace("girl", "F_girl").replace("boy", "M_boy")
    return s.lower().split("_")


def unknown_answer(answer_info: dict[str, Any]) -> list[int]:
    """Indices of the answers ``answer_info`` marks as UNKNOWN (group ``"unknown"``)."""
    return [i for i, a in enumerate(ANSWERS) if answer_info[a] and str(answer_info[a][-1]).lower() == "unknown"]


def biased_answers(answer_info: dict[str, Any], stereotyped: list[str], polarity: str) -> tuple[bool, bool, bool]:
    """Which answers are the biased one: the stereotyped group's (negative question) or the other group's."""
    target = {str(g).lower() for g in stereotyped}
    out = []
    for a in ANSWERS:
        groups = answer_groups(answer_info[a])
        if groups[-1] == "unknown":
            out.append(False)
        elif polarity == "neg":
            out.append(not target.isdisjoint(groups))
        else:
            out.append(target.isdisjoint(groups))
    return out[0], out[1], out[2]


def _item(row: Any, line: int, where: str) -> BbqItem:
    def bad(msg: str) -> DataError:
        return DataError(f"line {line}: {msg}", where=where)

    if not isinstance(row, dict):
        raise bad(f"expected a JSON object, found {type(row).__name__}")
    for key in REQUIRED:
        if key not in row:
            raise bad(f"missing key {key!r}")
    info, meta = row["answer_info"], row["additional_metadata"]
    if not isinstance(info, dict):
        raise bad("answer_info must be an object with ans0, ans1, ans2")
    for a in ANSWERS:
        if a not in info:
            raise bad(f"missing key 'answer_info.{a}'")
        if not isinstance(info[a], list) or not info[a]:
            raise bad(f"answer_info.{a} must be a non-empty list [name, group]")
    if not isinstance(meta, dict) or "stereotyped_groups" not in meta:
        raise bad("missing key 'additional_metadata.stereotyped_groups'")
    if not isinstance(meta["stereotyped_groups"], list):
        raise bad("additional_metadata.stereotyped_groups must be a list")
    for key in ("context", "question", *ANSWERS):
        if not isinstance(row[key], str) or not row[key].strip():
            raise bad(f"{key} must be a non-empty string")
    if row["context_condition"] not in CONDITIONS:
        raise bad(f"context_condition must be one of {list(CONDITIONS)}, found {row['context_condition']!r}")
    if row["question_polarity"] not in POLARITIES:
        raise bad(f"question_polarity must be one of {list(POLARITIES)}, found {row['question_polarity']!r}")
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 2:
        raise bad(f"label must be 0, 1 or 2 (the gold answer's index), found {label!r}")
    unknown = unknown_answer(info)
    if len(unknown) != 1:
        raise bad(f"answer_info must mark exactly one answer as 'unknown', found {len(unknown)}")
    return BbqItem(
        line=line,
        example_id=row["example_id"],
        category=str(row["category"]),
        condition=row["context_condition"],
        polarity=row["question_polarity"],
        context=row["context"],
        question=row["question"],
        answers=(row["ans0"], row["ans1"], row["ans2"]),
        label=label,
        unknown=unknown[0],
        biased=biased_answers(info, meta["stereotyped_groups"], row["question_polarity"]),
    )


def read_bbq(path: Path, where: str) -> list[BbqItem]:
    """Every row of the BBQ file at ``path`` (blank lines skipped); bad input is a :class:`DataError`."""
    if not path.exists():
        raise DataError(f"data file not found: {path}", where=where)
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a .jsonl file", where=where)
    check_utf8(path, where)
    items = []
    with open(path, encoding="utf-8-sig") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"line {line}: not valid JSON ({exc.msg} at column {exc.colno})", where=where) from None
            items.append(_item(row, line, where))
    if not items:
        raise DataError(f"{path.name} has no rows", where=where)
    return items


def stratum(item: BbqItem) -> str:
    return f"{item.category}|{item.condition}|{item.polarity}"


def subsample(items: list[BbqItem], n: int | None, seed: int) -> tuple[list[BbqItem], str | None]:
    """A seeded sample of ``n`` items stratified by category, context condition and polarity (file order kept).

    The split is scikit-learn's stratified ``train_test_split`` (each stratum keeps its share,
    up to rounding); a warning is returned instead when a stratum is too small for it and the
    sample is drawn unstratified.
    """
    if n is None or n >= len(items):
        return items, None
    from sklearn.model_selection import train_test_split

    index = np.arange(len(items))
    strata = np.array([stratum(it) for it in items])
    warning = None
    try:
        chosen, _ = train_test_split(index, train_size=n, stratify=strata, random_state=seed)
    except ValueError as exc:
        warning = f"max_examples={n}: sample drawn without stratification ({exc})"
        chosen = np.random.default_rng(seed).choice(index, size=n, replace=False)
    return [items[i] for i in sorted(int(i) for i in chosen)], warning
