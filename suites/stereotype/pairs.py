"""Loading sentence-pair sets: CrowS-Pairs-format tables (through :func:`audit.data.read_ref`) and WinoBias files.

Every pair is (``more``, ``less``, ``direction``, ``bias_type``): ``more`` is the more
stereotyping sentence (CrowS-Pairs' ``sent_more``; WinoBias's pro-stereotyped line),
``direction`` is ``stereo`` or ``antistereo`` (WinoBias: ``stereo``). A bad file is a
:class:`~audit.errors.DataError` (exit 4) naming the file and the column, before any model work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import ColumnMap, DatasetRef
from audit.data import MISSING_GROUP, EvalSet, read_ref
from audit.errors import DataError
from audit.fingerprint import texts_sha256
from audit.results import DatasetIdentity
from suites.stereotype import PairColumns, StereotypeSet

DIRECTIONS = ("stereo", "antistereo")
ONE_TYPE = "all"
"""The bias type of every pair when the set has no bias-type column."""
WINOBIAS_TYPE = "gender"
MAX_ROWS_SHOWN = 10
_WINO_LINE = re.compile(r"^\s*\d+\s+")


@dataclass
class PairSet:
    """One loaded set of sentence pairs (in file order, or the seeded sample's order)."""

    ref: StereotypeSet
    more: list[str]
    less: list[str]
    direction: np.ndarray
    """``stereo`` / ``antistereo`` per pair (object array)."""
    bias_type: np.ndarray
    """The bias type per pair (object array)."""
    ids: list[str]
    identity: DatasetIdentity
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.ref.name

    def __len__(self) -> int:
        return len(self.more)

    @property
    def stereo(self) -> np.ndarray:
        """True where the row is a ``stereo`` pair (the reference code's sent1 is then ``sent_more``)."""
        return self.direction == "stereo"


def where(ref: StereotypeSet) -> str:
    files = ref.path if ref.format == "crows-pairs" else f"{ref.pro}, {ref.anti}"
    return f"stereotype set {ref.name} ({files})"


def _rows(index: list[int] | np.ndarray) -> str:
    shown = ", ".join(str(int(i) + 1) for i in list(index)[:MAX_ROWS_SHOWN])
    return shown + (", ..." if len(index) > MAX_ROWS_SHOWN else "")


def load_pairs(ref: StereotypeSet, resolve: Any, *, seed: int, offline: bool = True) -> PairSet:
    """Load ``ref``; ``resolve`` maps a configured path to a file (``ctx.config.paths.dataset``)."""
    if ref.format == "crows-pairs":
        more, less, direction, bias, ids, source = _crows(ref, resolve, offline=offline)
    else:
        more, less, direction, bias, ids, source = _winobias(ref, resolve)
    ps = _finish(ref, more, less, direction, bias, ids, source)
    if ref.max_examples is not None and len(ps) > ref.max_examples:
        keep = np.sort(np.random.default_rng(seed).choice(len(ps), size=ref.max_examples, replace=False))
        ps = _finish(
            ref,
            [more[i] for i in keep],
            [less[i] for i in keep],
            direction[keep],
            bias[keep],
            [ids[i] for i in keep],
            f"{source} (seeded sample of {ref.max_examples} of {len(ps)} pairs)",
        )
    return ps


def _finish(
    ref: StereotypeSet,
    more: list[str],
    less: list[str],
    direction: np.ndarray,
    bias: np.ndarray,
    ids: list[str],
    source: str,
) -> PairSet:
    empty = [i for i, (a, b) in enumerate(zip(more, less, strict=True)) if not a.strip() or not b.strip()]
    if empty:
        raise DataError(
            f"{len(empty)} of {len(more)} pairs have an empty sentence (pairs {_rows(empty)}, 1-based)",
            where=where(ref),
            hint="drop those rows: an empty sentence has no tokens to score",
        )
    joined = [f"{a}\x1f{b}\x1f{d}\x1f{t}" for a, b, d, t in zip(more, less, direction, bias, strict=True)]
    identity = DatasetIdentity(
        id=ref.name,
        source=source,
        split=None,
        n=len(more),
        fingerprint=texts_sha256(joined),
        columns={"format": ref.format, **ref.columns.model_dump(mode="json")},
    )
    same = [i for i, (a, b) in enumerate(zip(more, less, strict=True)) if a == b]
    warnings = []
    if same:
        warnings.append(
            f"{len(same)} of {len(more)} pairs have two identical sentences (rows {_rows(same)} of the set): "
            "neither can be preferred, they count as ties"
        )
    return PairSet(ref, more, less, direction, bias, ids, identity, warnings)


# -- CrowS-Pairs format ----------------------------------------------------------------------------


def _crows(ref: StereotypeSet, resolve: Any, *, offline: bool) -> tuple[Any, ...]:
    cols = ref.columns
    groups = [c for c in (cols.direction, cols.bias_type) if c is not None]
    table = DatasetRef(
        name=ref.name,
        path=ref.path,
        format=ref.file_format,
        columns=ColumnMap(text=cols.sent_more, text_pair=cols.sent_less, label=None, groups=groups, id=cols.id),
    )
    path = resolve(ref.path)
    try:
        es = read_ref(table, path, {}, seed=0, offline=offline, need_label=False)
    except DataError as exc:
        raise _renamed(exc, cols) from None
    n = len(es)
    direction = _directions(es, ref) if cols.direction is not None else np.full(n, "stereo", dtype=object)
    if cols.bias_type is not None:
        bias = np.asarray(es.groups[cols.bias_type], dtype=object)
        missing = np.flatnonzero(bias == MISSING_GROUP)
        if missing.size:
            raise DataError(
                f"{missing.size} of {n} pairs have no bias type in column {cols.bias_type!r} (columns.bias_type): "
                f"data rows {_rows(missing)} (1-based, header not counted)",
                where=where(ref),
                hint="fill them in, or set columns.bias_type: null for one type",
            )
    else:
        bias = np.full(n, ONE_TYPE, dtype=object)
    assert es.text_pairs is not None
    return list(es.texts), list(es.text_pairs), direction, bias, list(es.ids), str(path)


def _directions(es: EvalSet, ref: StereotypeSet) -> np.ndarray:
    col = ref.columns.direction
    assert col is not None
    values = np.asarray([str(v).strip().lower() for v in es.groups[col]], dtype=object)
    bad = np.flatnonzero(~np.isin(values, DIRECTIONS))
    if bad.size:
        found = sorted({str(es.groups[col][i]) for i in bad[:MAX_ROWS_SHOWN]})
        raise DataError(
            f"column {col!r} (columns.direction) must hold stereo or antistereo, found {found} in data rows "
            f"{_rows(bad)} (1-based, header not counted)",
            where=where(ref),
            hint="fix those rows, or set columns.direction: null when every pair is stereo",
        )
    return values


def _renamed(exc: DataError, cols: PairColumns) -> DataError:
    """``exc`` with the loader's column roles (columns.text, ...) named as this set's (columns.sent_more, ...)."""
    msg = exc.message
    for key in ("sent_more", "sent_less", "direction", "bias_type", "id"):
        name = getattr(cols, key)
        if name is None:
            continue
        for role in ("text_pair", "text", "groups", "id"):
            msg = msg.replace(f"{name!r} (columns.{role})", f"{name!r} (columns.{key})")
    hint = exc.hint
    if "not found" in msg:
        hint = "name existing columns in the set's columns map (sent_more, sent_less, direction, bias_type)"
    return DataError(msg, where=exc.where, hint=hint)


# -- WinoBias --------------------------------------------------------------------------------------


def _lines(ref: StereotypeSet, resolve: Any, key: str) -> tuple[Path, list[str]]:
    configured = getattr(ref, key)
    path = Path(resolve(configured))
    where_ = f"stereotype set {ref.name} ({configured})"
    if not path.is_file():
        raise DataError(f"{key} file not found: {path}", where=where_)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{key} file is not UTF-8 text (byte {exc.start})", where=where_) from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{key} file is empty: {path}", where=where_)
    # "12 [The developer] argued with the designer because [he] ..." -> the plain sentence
    return path, [_WINO_LINE.sub("", ln).replace("[", "").replace("]", "").strip() for ln in lines]


def _winobias(ref: StereotypeSet, resolve: Any) -> tuple[Any, ...]:
    pro_path, pro = _lines(ref, resolve, "pro")
    anti_path, anti = _lines(ref, resolve, "anti")
    if len(pro) != len(anti):
        raise DataError(
            f"pro has {len(pro)} sentences but anti has {len(anti)}: WinoBias files must be line-aligned",
            where=where(ref),
        )
    n = len(pro)
    direction = np.full(n, "stereo", dtype=object)
    bias = np.full(n, WINOBIAS_TYPE, dtype=object)
    return pro, anti, direction, bias, [str(i + 1) for i in range(n)], f"{pro_path} | {anti_path}"
