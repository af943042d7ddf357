"""Loading evaluation data through ``datasets``: local csv/tsv/jsonl/parquet or the hub.

Every problem a user can cause (missing file, missing column, unknown label, empty
split, undecodable bytes) is a :class:`DataError` naming the dataset, the file and
what was expected.

Hostile input (see the README's "Hostile input" section):

* text files (csv, tsv, json/jsonl) must be UTF-8 (a UTF-8 byte-order mark is fine);
  anything else is refused before parsing, naming the byte offset and line of the first
  undecodable byte, or the UTF-16/UTF-32 byte-order mark found;
* a null (missing) text is an error naming the column and the first rows; empty and
  whitespace-only texts are evaluated as given and counted in a warning;
* texts with control characters, bidi controls or non-characters are evaluated as
  given (the audit measures the model on the input it gets) and counted in a warning;
  reports show those characters as visible stand-ins (:mod:`audit.textsafe`);
* csv and tsv fields are read with CSV quoting by default (``"`` encloses a field, ``""`` is
  one quote; ``quoting: none`` turns it off and warns about texts that look quoted);
* how many texts the tokenizer truncated to ``model.max_length`` is recorded on the
  dataset's identity by :func:`record_truncation`.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import AuditConfig, ColumnMap, DataConfig, DatasetRef, HubDataset, TableSource
from audit.datafiles import TEXT_FORMATS, check_data_paths, check_utf8, infer_format, reencode_hint
from audit.errors import DataError
from audit.fingerprint import texts_sha256
from audit.results import DatasetIdentity
from audit.textsafe import has_unsafe

log = logging.getLogger(__name__)

MISSING_GROUP = "(missing)"
MAX_ROWS_SHOWN = 10
"""How many row numbers an error or warning lists."""
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class EvalSet:
    """Texts, integer labels and group columns of one evaluated split."""

    name: str
    texts: list[str]
    labels: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    text_pairs: list[str] | None = None
    ids: list[str] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)
    identity: DatasetIdentity | None = None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray | list[int], name: str | None = None) -> EvalSet:
        """A new set with rows ``index`` (same columns)."""
        idx = np.asarray(index, dtype=int)
        sub = EvalSet(
            name=name or self.name,
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            groups={k: v[idx] for k, v in self.groups.items()},
            text_pairs=[self.text_pairs[i] for i in idx] if self.text_pairs is not None else None,
            ids=[self.ids[i] for i in idx] if self.ids else [],
            columns={k: [v[i] for i in idx] for k, v in self.columns.items()},
            warnings=list(self.warnings),
        )
        sub.identity = _identity(sub, self.identity.source if self.identity else "subset", None, {})
        return sub

    def with_texts(self, texts: list[str], name: str) -> EvalSet:
        """Same rows and labels, other texts (for corruptions and counterfactuals)."""
        if len(texts) != len(self.texts):
            raise ValueError("with_texts needs one text per row")
        new = EvalSet(
            name=name,
            texts=list(texts),
            labels=self.labels.copy(),
            groups={k: v.copy() for k, v in self.groups.items()},
            text_pairs=self.text_pairs,
            ids=list(self.ids),
            columns=dict(self.columns),
        )
        new.identity = _identity(new, f"{self.identity.source if self.identity else self.name}+{name}", None, {})
        return new


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    # parser failures become DataErrors with the parser's message; datasets' own log lines would repeat them
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)


def _load_local(path: Path, source: TableSource, split: str, where: str) -> Any:
    from datasets import load_dataset

    _quiet_datasets()

    if not path.exists():
        raise DataError(f"data file not found: {path}", where=where)
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a data file", where=where)
    if path.stat().st_size == 0:
        raise DataError(f"data file is empty: {path}", where=where)
    fmt = infer_format(path, source.format)
    if fmt in TEXT_FORMATS:
        check_utf8(path, where)
    kwargs: dict[str, Any] = {}
    builder = fmt
    if fmt in ("csv", "tsv"):
        builder = "csv"
        if fmt == "tsv":
            kwargs["delimiter"] = "\t"
        # csv: pandas' defaults, as any CSV reader: quotechar '"', "" inside a quoted field
        kwargs["quoting"] = csv.QUOTE_NONE if source.quoting == "none" else csv.QUOTE_MINIMAL
        if source.column_names:
            kwargs["column_names"] = list(source.column_names)
            kwargs["header"] = None
        kwargs["keep_default_na"] = False
    elif source.column_names:
        raise DataError("column_names is only for csv/tsv files without a header", where=where)
    elif source.quoting != "csv":
        raise DataError(f"quoting: {source.quoting} is only for csv/tsv files, not {fmt}", where=where)
    try:
        return load_dataset(builder, data_files={split: str(path)}, split=split, **kwargs)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path.name} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
            where=where,
            hint="re-encode the file as UTF-8",
        ) from None
    except Exception as exc:  # noqa: BLE001 - datasets wraps parser errors in many types
        chain: list[BaseException] = [exc]
        while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
            chain.append(nxt)
        if any(isinstance(c, UnicodeDecodeError) for c in chain):
            raise DataError(
                f"{path.name} is not UTF-8", where=where, hint=reencode_hint(path, "<its encoding>")
            ) from None
        if "corresponds to no data" in str(exc):
            raise DataError("the split has no rows", where=where, hint="point at a non-empty file or split") from None
        # the parser's own error (e.g. pyarrow's "JSON parse error: ... in row 3") says what and where
        parser = next((c for c in chain if type(c).__name__ != "DatasetGenerationError"), exc)
        hint = None
        if fmt in ("csv", "tsv"):
            hint = (
                'quoting is off (quoting: none), so a "-quoted field that spans lines or holds the delimiter '
                "splits the row: set quoting: csv if the file quotes fields"
                if source.quoting == "none"
                else 'fields are read with CSV quoting (a field starting with " runs to the closing "): '
                "check for an unbalanced quote near that line, or set quoting: none if quotes are plain text"
            )
        raise DataError(f"cannot parse {path.name} as {fmt}: {_first_line(parser)}", where=where, hint=hint) from None


def _load_hub(hub: HubDataset, split: str, offline: bool, where: str) -> Any:
    if offline:
        raise DataError("hub datasets need offline: false", where=where)
    from datasets import load_dataset

    try:
        return load_dataset(hub.name, hub.subset, split=split, revision=hub.revision)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot load hub dataset {hub.name}: {_first_line(exc)}", where=where) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _check_columns(ds: Any, columns: ColumnMap, where: str, need_label: bool = True) -> None:
    have = list(ds.column_names)
    wanted = [("text", columns.text)]
    if need_label and columns.label is None:
        raise DataError(
            "columns.label is null, but this model is a classifier and needs gold labels",
            where=where,
            hint="name the label column in data.columns.label (only a causal LM runs without one)",
        )
    if need_label:
        wanted.append(("label", columns.label))
    if columns.text_pair:
        wanted.append(("text_pair", columns.text_pair))
    if columns.id:
        wanted.append(("id", columns.id))
    wanted += [("groups", g) for g in columns.groups]
    for role, name in wanted:
        if name not in have:
            raise DataError(
                f"column {name!r} (columns.{role}) not found; the data has columns {have}",
                where=where,
                hint="fix data.columns to name existing columns",
            )


def encode_labels(raw: list[Any], id2label: dict[int, str], label_map: dict[str, int] | None, where: str) -> np.ndarray:
    """Map raw label values to class indices the model knows; unknown values are errors."""
    num_labels = len(id2label)
    missing = sum(1 for v in raw if v is None or (isinstance(v, str) and v.strip() == ""))
    if missing:
        raise DataError(f"{missing} rows have no label", where=where, hint="drop or label them")
    if label_map is not None:
        out = []
        unknown: set[str] = set()
        for v in raw:
            key = str(v).lower() if isinstance(v, bool) else str(v).strip()
            if key in label_map:
                out.append(label_map[key])
            else:
                unknown.add(key)
        if unknown:
            raise DataError(f"label values {sorted(unknown)[:10]} are not in label_map {label_map}", where=where)
        arr = np.asarray(out, dtype=np.int64)
    else:
        by_name = {name.strip().lower(): idx for idx, name in id2label.items()}
        by_name.update({f"label_{idx}": idx for idx in id2label})
        out = []
        unknown = set()
        for v in raw:
            if isinstance(v, bool):
                v = int(v)
            if isinstance(v, (int, np.integer)):
                out.append(int(v))
                continue
            if isinstance(v, float) and v.is_integer():
                out.append(int(v))
                continue
            text = str(v).strip()
            if text.lstrip("-").isdigit():
                out.append(int(text))
            elif text.lower() in by_name:
                out.append(by_name[text.lower()])
            else:
                out.append(-1)
                unknown.add(text)
        if unknown:
            raise DataError(
                f"label values {sorted(unknown)[:10]} are not labels of the model "
                f"(model labels: {dict(sorted(id2label.items()))})",
                where=where,
                hint="add data.label_map to map them to class indices",
            )
        arr = np.asarray(out, dtype=np.int64)
    bad = sorted({int(x) for x in arr if x < 0 or x >= num_labels})
    if bad:
        raise DataError(
            f"labels {bad[:10]} are outside the model's {num_labels} classes {dict(sorted(id2label.items()))}",
            where=where,
            hint="the model does not know these labels; use data.label_map or another model",
        )
    return arr


def _identity(es: EvalSet, source: str, split: str | None, columns: dict[str, Any]) -> DatasetIdentity:
    return DatasetIdentity(
        id=es.name,
        source=source,
        split=split,
        n=len(es.texts),
        fingerprint=texts_sha256(
            es.texts
            if es.text_pairs is None
            else [a + "\x1f" + b for a, b in zip(es.texts, es.text_pairs, strict=True)],
            es.labels.tolist(),
        ),
        columns=columns,
    )


def _rows(index: list[int]) -> str:
    """``3, 7, 12`` (1-based data rows, at most :data:`MAX_ROWS_SHOWN`, then ``...``)."""
    shown = ", ".join(str(i + 1) for i in index[:MAX_ROWS_SHOWN])
    return shown + (", ..." if len(index) > MAX_ROWS_SHOWN else "")


def _column(ds: Any, column: str, where: str) -> list[Any]:
    """Column ``column`` as a Python list; strings that are not UTF-8 (parquet can hold them) are errors."""
    try:
        return list(ds[column])
    except UnicodeDecodeError as exc:
        raise DataError(
            f"column {column!r} holds strings that are not UTF-8 (byte 0x{exc.object[exc.start]:02x}: {exc.reason})",
            where=where,
            hint="write the file's strings as UTF-8",
        ) from None


def _text_column(ds: Any, column: str, role: str, where: str) -> list[str]:
    """Column ``column`` as a list of strings; nulls, non-text values and undecodable bytes are errors."""
    raw = _column(ds, column, where)
    texts: list[str] = []
    nulls: list[int] = []
    wrong: list[int] = []
    wrong_type = ""
    for i, t in enumerate(raw):
        if isinstance(t, str):
            texts.append(t)
        elif t is None:
            nulls.append(i)
            texts.append("")
        elif isinstance(t, (bool, int, float, np.integer, np.floating)):
            texts.append(str(t))
        else:
            wrong.append(i)
            wrong_type = wrong_type or type(t).__name__
            texts.append("")
    if nulls:
        raise DataError(
            f"{len(nulls)} of {len(texts)} rows have no text (null) in column {column!r} ({role}): "
            f"data rows {_rows(nulls)} (1-based, header not counted)",
            where=where,
            hint="drop those rows or fill them in; an empty string is evaluated as given",
        )
    if wrong:
        raise DataError(
            f"column {column!r} ({role}) must hold text, found {wrong_type} values in data rows {_rows(wrong)}",
            where=where,
            hint="point the column map at a text column",
        )
    bad = [i for i, t in enumerate(texts) if _SURROGATE.search(t)]
    if bad:
        raise DataError(
            f"column {column!r} ({role}) holds unpaired UTF-16 surrogates (not text) in data rows {_rows(bad)}",
            where=where,
            hint="fix the producer of the file; surrogates cannot be tokenized or written as UTF-8",
        )
    return texts


def _text_warnings(texts: list[str], column: str, *, with_rows: bool) -> list[str]:
    """Counts of empty and of control-character texts (evaluated as given)."""
    out = []
    for index, what, consequence in (
        (
            [i for i, t in enumerate(texts) if not t.strip()],
            "are empty or whitespace-only",
            "evaluated as given",
        ),
        (
            [i for i, t in enumerate(texts) if has_unsafe(t)],
            "hold control characters, bidi controls or non-characters",
            "the model sees them as given; reports show them as visible stand-ins",
        ),
    ):
        if index:
            where_rows = f" (data rows {_rows(index)})" if with_rows else ""
            out.append(f"{len(index)} of {len(texts)} texts in column {column!r} {what}{where_rows}; {consequence}")
    return out


def _looks_quoted(text: str) -> bool:
    return (len(text) >= 2 and text[0] == '"' and text[-1] == '"') or '""' in text


def _quote_warnings(texts: list[str], column: str, *, with_rows: bool) -> list[str]:
    """With quoting off: a count of texts that look CSV-quoted (their quote characters stay in the text)."""
    index = [i for i, t in enumerate(texts) if _looks_quoted(t)]
    if not index:
        return []
    where_rows = f" (data rows {_rows(index)})" if with_rows else ""
    return [
        f'{len(index)} of {len(texts)} texts in column {column!r} look CSV-quoted (enclosed in " or holding "")'
        f"{where_rows}, but quoting is off (quoting: none): the quote characters are part of the text the model "
        "sees; set quoting: csv if the file quotes fields"
    ]


def table_to_evalset(
    ds: Any,
    *,
    name: str,
    source: TableSource,
    id2label: dict[int, str],
    where: str,
    source_label: str,
    split: str | None,
    max_examples: int | None = None,
    seed: int = 0,
    need_label: bool = True,
) -> EvalSet:
    """Validate a ``datasets.Dataset`` against the column map and turn it into an :class:`EvalSet`."""
    cols = source.columns
    _check_columns(ds, cols, where, need_label)
    if len(ds) == 0:
        raise DataError("the split has no rows", where=where, hint="point at a non-empty file or split")
    # checked on every row, before any sampling: a file with missing texts is refused as a whole
    texts = _text_column(ds, cols.text, "columns.text", where)
    pairs = _text_column(ds, cols.text_pair, "columns.text_pair", where) if cols.text_pair else None
    sampled = max_examples is not None and len(ds) > max_examples
    if sampled:
        ds = ds.shuffle(seed=seed).select(range(max_examples))
        texts = _text_column(ds, cols.text, "columns.text", where)
        pairs = _text_column(ds, cols.text_pair, "columns.text_pair", where) if cols.text_pair else None
    warnings = _text_warnings(texts, cols.text, with_rows=not sampled)
    if source.quoting == "none":
        warnings += _quote_warnings(texts, cols.text, with_rows=not sampled)
    if need_label:
        labels = encode_labels(_column(ds, cols.label, where), id2label, source.label_map, where)
    else:
        labels = np.full(len(texts), -1, dtype=np.int64)
    groups = {}
    for g in cols.groups:
        values = [MISSING_GROUP if v is None or v == "" else str(v) for v in _column(ds, g, where)]
        groups[g] = np.asarray(values, dtype=object)
    ids = [str(v) for v in _column(ds, cols.id, where)] if cols.id else [str(i) for i in range(len(texts))]
    used = {cols.text, cols.label, cols.text_pair, cols.id, *cols.groups}
    extra = {c: _column(ds, c, where) for c in ds.column_names if c not in used}
    es = EvalSet(
        name=name,
        texts=texts,
        labels=labels,
        groups=groups,
        text_pairs=pairs,
        ids=ids,
        columns=extra,
        warnings=warnings,
    )
    es.identity = _identity(es, source_label, split, cols.model_dump(mode="json"))
    for w in warnings:
        log.warning("%s: %s", where, w)
    return es


def load_split(config: AuditConfig, split: str, id2label: dict[int, str], *, need_label: bool = True) -> EvalSet:
    """Load split ``split`` of the configured in-distribution data (:func:`read_split` on ``config.paths``)."""
    return read_split(
        config.data,
        config.paths.data_files,
        split,
        id2label,
        seed=config.seed,
        offline=config.offline,
        need_label=need_label,
    )


def read_split(
    data: DataConfig,
    files: Mapping[str, Path],
    split: str,
    id2label: dict[int, str],
    *,
    seed: int,
    offline: bool,
    need_label: bool = True,
) -> EvalSet:
    """Load split ``split`` of the in-distribution data ``data``; ``files``: its resolved ``data.files``."""
    name = data.name or split
    if data.files is not None:
        if split not in data.files:
            raise DataError(f"split {split!r} is not in data.files ({sorted(data.files)})", where="data.files")
        path = files[split]
        where = f"data.files.{split}={data.files[split]}"
        ds = _load_local(path, data, split, where)
        source_label = str(path)
    else:
        assert data.hub is not None
        where = f"data.hub={data.hub.name}[{split}]"
        ds = _load_hub(data.hub, split, offline, where)
        source_label = f"hub:{data.hub.name}"
    max_n = data.max_eval_examples if split == data.splits.eval else None
    es = table_to_evalset(
        ds,
        name=name if split == data.splits.eval else f"{name}-{split}",
        source=data,
        id2label=id2label,
        where=where,
        source_label=source_label,
        split=split,
        max_examples=max_n,
        seed=seed,
        need_label=need_label,
    )
    return es


def load_ref(ref: DatasetRef, config: AuditConfig, id2label: dict[int, str], *, need_label: bool = True) -> EvalSet:
    """Load an extra dataset named in a suite's params (:func:`read_ref` on ``config.paths``)."""
    path = config.paths.dataset(ref.path)
    return read_ref(ref, path, id2label, seed=config.seed, offline=config.offline, need_label=need_label)


def read_ref(
    ref: DatasetRef, path: Path | None, id2label: dict[int, str], *, seed: int, offline: bool, need_label: bool = True
) -> EvalSet:
    """Load an extra dataset ``ref``; ``path``: its resolved ``path`` (None for a hub dataset)."""
    if ref.path is not None:
        assert path is not None
        where = f"dataset {ref.name} ({ref.path})"
        ds = _load_local(path, ref, ref.split, where)
        source_label = str(path)
    else:
        assert ref.hub is not None
        where = f"dataset {ref.name} (hub {ref.hub.name})"
        ds = _load_hub(ref.hub, ref.split, offline, where)
        source_label = f"hub:{ref.hub.name}"
    return table_to_evalset(
        ds,
        name=ref.name,
        source=ref,
        id2label=id2label,
        where=where,
        source_label=source_label,
        split=ref.split,
        max_examples=ref.max_examples,
        seed=seed,
        need_label=need_label,
    )


def check_data_files(config: AuditConfig) -> None:
    """Cheap pre-flight (no imports of datasets) of the configured data files: see :func:`check_data_paths`."""
    check_data_paths(config.data, config.paths.data_files)


def record_truncation(es: EvalSet, predictor: Any) -> int:
    """Tokenize ``es`` through ``predictor`` and record on its identity how many texts were truncated.

    The encoding is the predictor's own (cached by content), so the suites reuse it:
    nothing is tokenized twice. Sets ``es.identity.truncated`` (counted in tokens:
    texts, with their pairs, longer than ``predictor.max_length``) and
    ``es.identity.max_length``; logs a warning naming the first rows when any text was cut.

    Args:
        es: An evaluated set (the eval split, a suite's extra dataset, a corrupted copy).
        predictor: The run's :class:`~audit.inference.Predictor`.

    Returns:
        The number of truncated texts.
    """
    enc = predictor.encode(es.texts, es.text_pairs)
    conflicts = truncation_conflicts(es, enc) if enc.truncated else []
    if es.identity is not None:
        es.identity.truncated = int(enc.truncated)
        es.identity.max_length = int(predictor.max_length)
        es.identity.truncation_conflicts = [len(conflicts), sum(len(g) for g in conflicts)]
    if enc.truncated:
        log.warning(
            "dataset %s: %d of %d texts are longer than max_length=%d tokens and were truncated (rows %s of the set)",
            es.name,
            enc.truncated,
            len(es),
            predictor.max_length,
            _rows(sorted(int(i) for i in enc.truncated_index)),
        )
    if conflicts:
        log.warning(
            "dataset %s: %d group(s) of different texts become identical at max_length=%d tokens but carry "
            "different labels (first rows of the set: %s)",
            es.name,
            len(conflicts),
            predictor.max_length,
            "; ".join(_rows(g) for g in conflicts[:3]),
        )
    return int(enc.truncated)


def truncation_conflicts(es: EvalSet, enc: Any) -> list[list[int]]:
    """Groups (row indices, sorted) of different inputs whose encodings, as truncated in ``enc``, are
    identical, that hold a truncated input and more than one label (ignoring unlabelled rows, label -1).
    """
    keys: dict[bytes, list[int]] = {}
    start = 0
    for batch in enc.batches:
        ids = batch["input_ids"].numpy()
        mask = batch["attention_mask"].numpy()
        tt = batch["token_type_ids"].numpy() if "token_type_ids" in batch else None
        for row in range(ids.shape[0]):
            i = int(enc.order[start + row])
            width = int(mask[row].sum())
            key = ids[row, :width].tobytes() + (tt[row, :width].tobytes() if tt is not None else b"")
            keys.setdefault(key, []).append(i)
        start += ids.shape[0]
    truncated = {int(i) for i in enc.truncated_index}
    pairs = es.text_pairs
    out = []
    for rows in keys.values():
        if len(rows) < 2 or not truncated.intersection(rows):
            continue
        labelled = [i for i in rows if int(es.labels[i]) >= 0]
        inputs = {(es.texts[i], pairs[i] if pairs is not None else None) for i in labelled}
        if len({int(es.labels[i]) for i in labelled}) > 1 and len(inputs) > 1:
            out.append(sorted(rows))
    return sorted(out)
