"""Read JSONL, JSON (an array of records), CSV and Parquet into raw records with their place.

A problem with the whole file (missing, empty, wrong format, undecodable) raises DataFileError;
a problem with one record is yielded as a RawRecord with `problem` set, so the caller can count
and report it instead of crashing or dropping it silently."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from edgeft.errors import EdgeftError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PARQUET_MAGIC = b"PAR1"


class DataFileError(EdgeftError):
    """A data file that cannot be read at all, or (in strict mode) holds a bad record."""


@dataclass
class RawRecord:
    place: str  # "line 3", "item 2", "row 7"
    value: Any = None  # the decoded record (usually a dict)
    problem: str | None = None


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataFileError(f"unsupported file type '{path.suffix or '(none)'}' (supported: {', '.join(sorted(FORMATS))})", file=path)
    return fmt


def _check_file(path: Path) -> bytes:
    if not path.exists():
        raise DataFileError("no such file", file=path)
    if not path.is_file():
        raise DataFileError("not a file", file=path)
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.strip():
        raise DataFileError("empty file: no records", file=path)
    return head


def _utf8_problem(exc: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


def _line_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _decode_whole(path: Path, fmt: str) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise DataFileError(f"binary data, not a {fmt.upper()} text file (wrong format?)", file=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFileError(_utf8_problem(exc), file=path, place=f"line {_line_of_offset(data, exc.start)}") from None


def read_jsonl(path: Path) -> Iterator[RawRecord]:
    head = _check_file(path)
    if b"\x00" in head:
        raise DataFileError("binary data, not a JSONL text file (wrong format?)", file=path)
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"[":
        raise DataFileError("this is a JSON array, not JSON Lines (name the file .json)", file=path, place="line 1")
    if first != b"{":
        raise DataFileError("not JSON Lines: the first record does not start with '{' (wrong format?)", file=path, place="line 1")
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if n == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            place = f"line {n}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(place, problem=_utf8_problem(exc))
                continue
            try:  # without its line end, so that a record cut short is placed where it stops
                yield RawRecord(place, json.loads(text.rstrip("\r\n")))
            except json.JSONDecodeError as exc:
                yield RawRecord(place, problem=f"malformed JSON at column {exc.colno}: {_json_reason(exc.msg)}")


def _json_reason(msg: str) -> str:
    """json's message, whole: some end in "at", as the position follows them in its own text."""
    if msg == "Invalid control character at":
        return "a raw control character (a tab or line break) inside a string; write it as \\t or \\n"
    if msg.startswith("Unterminated string"):
        return "a string that never closes (the record stops early?)"
    if msg == "Expecting value":
        return msg + " (the record stops early?)"
    return msg


def read_json(path: Path) -> Iterator[RawRecord]:
    _check_file(path)
    text = _decode_whole(path, "json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (one object per line? name the file .jsonl)" if exc.msg == "Extra data" else ""
        raise DataFileError(f"malformed JSON: {_json_reason(exc.msg)}{hint}", file=path,
                            place=f"line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, dict):
        for key in ("data", "records", "examples"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise DataFileError(f"a JSON data file must hold an array of records, found {type(data).__name__}", file=path)
    if not data:
        raise DataFileError("empty array: no records", file=path)
    for i, item in enumerate(data, 1):
        yield RawRecord(f"item {i}", item)


def _cell(value: str | None) -> str | None:
    return None if value is None or value == "" else value


def _row_to_record(row: dict[str, Any]) -> dict[str, Any]:
    """Flat columns -> nested record: `task_type`, `domain` and `metadata.X` columns go into metadata."""
    out: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for key, value in row.items():
        if key is None:
            continue
        if key.startswith("metadata."):
            if value is not None:
                meta[key.removeprefix("metadata.")] = value
        elif key in ("task_type", "domain") :
            if value is not None:
                meta[key] = value
        elif key == "metadata" and isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value  # schema validation reports the wrong type with the row number
            out["metadata"] = parsed
        else:
            out[key] = value
    if meta:
        base = out.get("metadata")
        out["metadata"] = {**(base if isinstance(base, dict) else {}), **meta}
    return out


def read_csv(path: Path) -> Iterator[RawRecord]:
    _check_file(path)
    text = _decode_whole(path, "csv")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataFileError("empty file: no header row", file=path) from None
    except csv.Error as exc:
        raise DataFileError(f"malformed CSV header: {exc}", file=path, place="line 1") from None
    header = [h.strip() for h in header]
    if len(header) < 1 or not any(header):
        raise DataFileError("the header row names no columns", file=path, place="line 1")
    if header[0].startswith(("{", "[")):
        raise DataFileError("the header row looks like JSON, not CSV (wrong format?)", file=path, place="line 1")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataFileError(f"duplicate column names: {', '.join(dupes)}", file=path, place="line 1")
    n_rows = 0
    while True:
        line_no = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield RawRecord(f"line {line_no}", problem=f"malformed CSV: {exc}")
            continue
        if not cells or all(not c.strip() for c in cells):
            continue
        n_rows += 1
        place = f"line {line_no}"
        if len(cells) != len(header):
            yield RawRecord(place, problem=f"{len(cells)} cells, the header has {len(header)} columns")
            continue
        yield RawRecord(place, _row_to_record({h: _cell(c) for h, c in zip(header, cells)}))
    if n_rows == 0:
        raise DataFileError("no data rows after the header", file=path)


def read_parquet(path: Path) -> Iterator[RawRecord]:
    head = _check_file(path)
    if not head.startswith(PARQUET_MAGIC):
        raise DataFileError("not a Parquet file (bad magic number; wrong format?)", file=path)
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError on corrupt footers
        raise DataFileError(f"corrupt Parquet file ({type(exc).__name__}: {exc})", file=path) from None
    if pf.metadata.num_rows == 0:
        raise DataFileError("empty Parquet file: no rows", file=path)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=8192):
            for item in batch.to_pylist():
                row += 1
                yield RawRecord(f"row {row}", _row_to_record(item))
    except Exception as exc:
        raise DataFileError(f"cannot read Parquet data ({type(exc).__name__}: {exc})", file=path, place=f"row {row + 1}") from None


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def read_raw(path: Path) -> Iterator[RawRecord]:
    """Every raw record of `path` in file order; whole-file problems raise DataFileError."""
    path = Path(path)
    return READERS[detect_format(path)](path)
