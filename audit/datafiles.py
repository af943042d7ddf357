"""Torch- and datasets-free checks of data files: their format (from the extension) and their encoding.

Used by the pre-flight (:func:`check_data_paths`) before any work, and by :mod:`audit.data`
before a file is parsed.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from audit.errors import DataError

if TYPE_CHECKING:
    from audit.config import DataConfig

TEXT_FORMATS = ("csv", "tsv", "json")
_CHUNK = 1 << 20
_BOMS = (  # longest first: the UTF-32-LE mark starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "UTF-32-LE"),
    (codecs.BOM_UTF32_BE, "UTF-32-BE"),
    (codecs.BOM_UTF16_LE, "UTF-16-LE"),
    (codecs.BOM_UTF16_BE, "UTF-16-BE"),
)
_REENCODE = "re-encode the file as UTF-8, e.g. `iconv -f {enc} -t UTF-8 {name} > {stem}.utf8{suffix}`"
_utf8_checked: set[tuple[str, int, int]] = set()
_EXT_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def infer_format(path: Path, declared: str | None) -> str:
    if declared:
        return "json" if declared == "jsonl" else declared
    fmt = _EXT_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path.name} from its extension",
            where=str(path),
            hint="set format: csv | tsv | json | parquet",
        )
    return fmt


def reencode_hint(path: Path, enc: str) -> str:
    return _REENCODE.format(enc=enc, name=path.name, stem=path.stem, suffix=path.suffix)


def check_utf8(path: Path, where: str) -> None:
    """Refuse a text data file that is not UTF-8, naming the first undecodable byte.

    A UTF-8 byte-order mark is accepted (the parsers skip it). A UTF-16 or UTF-32
    byte-order mark, a file that is mostly NUL bytes (UTF-16/32 without a mark, or
    binary data) and the first byte sequence that is not UTF-8 (with its offset and
    line) are :class:`DataError` exceptions. The file is read in 1 MiB chunks; a file already
    checked (same path, size and modification time) is not read again.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _utf8_checked:
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    lines = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if offset == 0:
                for bom, enc in _BOMS:
                    if chunk.startswith(bom):
                        raise DataError(
                            f"{path.name} is {enc} (byte-order mark at offset 0), not UTF-8",
                            where=where,
                            hint=reencode_hint(path, enc),
                        )
                head = chunk[:65536]
                if head and head.count(0) * 10 > len(head):
                    raise DataError(
                        f"{path.name} is not UTF-8 text: {100 * head.count(0) / len(head):.0f}% of its first "
                        f"{len(head)} bytes are NUL (UTF-16/UTF-32 without a byte-order mark, or a binary file)",
                        where=where,
                        hint=reencode_hint(path, "UTF-16"),
                    )
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                line = lines + chunk[: max(0, at - offset)].count(b"\n") + 1
                bad = exc.object[exc.start]
                raise DataError(
                    f"{path.name} is not UTF-8: byte 0x{bad:02x} at offset {at} (line {line}) is not valid UTF-8",
                    where=where,
                    hint=reencode_hint(path, "<its encoding, e.g. LATIN1 or CP1252>"),
                ) from None
            if not chunk:
                break
            offset += len(chunk)
            lines += chunk.count(b"\n")
    _utf8_checked.add(key)


def check_data_paths(data: DataConfig, files: Mapping[str, Path]) -> None:
    """Cheap pre-flight (no imports of datasets): the eval and calibration files exist, are non-empty, text ones UTF-8.

    ``files``: ``data.files`` resolved (see :class:`audit.runpaths.RunPaths`).
    """
    if data.files is None:
        return
    needed = {data.splits.eval}
    if data.splits.calibration:
        needed.add(data.splits.calibration)
    for split in sorted(needed):
        path = files.get(split)
        where = f"data.files.{split}={data.files[split]}"
        if path is None or not path.exists():
            raise DataError(f"data file not found: {path}", where=where)
        if path.is_dir():
            raise DataError(f"{path} is a directory; expected a data file", where=where)
        if path.stat().st_size == 0:
            raise DataError(f"data file is empty: {path}", where=where)
        if infer_format(path, data.format) in TEXT_FORMATS:
            check_utf8(path, where)
