"""Reading texts: ``.jsonl``, ``.json``, ``.csv``, ``.txt`` (one text per line), ``.parquet``.

Each text gets a stable id, the first 16 hex digits of the SHA-256 of its UTF-8 bytes,
so the same text has the same id in every file and every run. The other fields of a
record are kept; a ``label`` field (0 = non-member, 1 = member) is kept as ground truth.

Bad input fails before anything is computed, with the file and the line: a missing
file, invalid UTF-8, a malformed record, a missing text field, an empty or
whitespace-only text, a label that is not 0/1, and the same text twice with different
labels (a text cannot be both a member and a non-member; the error names both lines).
Exact duplicates (same text, same label) are dropped, keeping the first, with a warning
that counts them.

The ``id`` column is always the text's hash id. A record's own ``id`` field is kept as
``user_id`` (and a ``text`` field that is not the text field as ``user_text``); a record
that already has a ``user_id`` (``user_text``) field as well is refused: rename one.

Blank lines (empty or whitespace only) of the line-based formats, ``.jsonl`` and ``.txt``,
are skipped alike: they are no record. A warning counts those between records (in a
``.txt`` file they often mean texts that span several lines, which need ``.jsonl``).
An empty text inside a record (any format) is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from llm_features.errors import InputDataError
from llm_features.io import sha256_text

logger = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".parquet")
ID_LENGTH = 16
_BOM = b"\xef\xbb\xbf"


def text_id(text: str) -> str:
    """Stable id of a text: the first 16 hex digits of SHA-256(UTF-8 bytes)."""
    return sha256_text(text)[:ID_LENGTH]


@dataclasses.dataclass(frozen=True)
class TextSet:
    """Texts with ids and kept fields; ``records`` has columns ``id``, ``text`` and the rest."""

    records: pd.DataFrame
    source: str

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return self.records["id"].tolist()

    @property
    def texts(self) -> list[str]:
        return self.records["text"].tolist()

    @property
    def labels(self) -> list[int] | None:
        """Ground-truth membership labels, or None when the data has no ``label`` field."""
        if "label" not in self.records.columns:
            return None
        return self.records["label"].astype(int).tolist()

    def subset(self, ids: list[str]) -> "TextSet":
        """The texts with the given ids, in that order."""
        frame = self.records.set_index("id", drop=False).loc[ids].reset_index(drop=True)
        return TextSet(records=frame, source=self.source)


def texts_from_list(texts: list[str], *, source: str = "<memory>", **fields: list[Any]) -> TextSet:
    """A TextSet from strings in memory (with optional equal-length field lists)."""
    rows = [{"text": text, **{key: values[i] for key, values in fields.items()}}
            for i, text in enumerate(texts)]
    return _build(((f"item {i}", row) for i, row in enumerate(rows)), source=source, text_field="text")


def load_texts(path: str | os.PathLike, *, text_field: str = "text") -> TextSet:
    """Read texts from a file; see the module docstring for the formats and the checks."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file; check the --data path")
    if not path.is_file():
        raise InputDataError(f"{path}: is not a file; pass a {', '.join(SUFFIXES)} file")
    suffix = path.suffix.lower()
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_csv,
        ".txt": _read_txt,
        ".parquet": _read_parquet,
    }
    if suffix not in readers:
        raise InputDataError(f"{path}: unknown format {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        rows = list(readers[suffix](path, text_field))
    except PermissionError as exc:
        raise InputDataError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not rows:
        raise InputDataError(f"{path}: holds no texts")
    return _build(iter(rows), source=str(path), text_field=text_field)


def _build(rows: Iterator[tuple[str, dict[str, Any]]], *, source: str, text_field: str) -> TextSet:
    records: list[dict[str, Any]] = []
    seen: dict[str, tuple[str, Any]] = {}  # id -> where the text first was, and its label
    duplicates = 0
    for where, row in rows:
        text = _check_text(row, where=where, source=source, text_field=text_field)
        record = _user_fields({k: v for k, v in row.items() if k != text_field}, where=where, source=source)
        if "label" in record:
            record["label"] = _check_label(record["label"], where=where, source=source)
        identifier = text_id(text)
        if identifier in seen:
            _check_same_label(seen[identifier], (where, record.get("label")), source=source)
            duplicates += 1
            continue
        seen[identifier] = (where, record.get("label"))
        records.append({"id": identifier, "text": text, **record})
    if duplicates:
        logger.warning("%s: dropped %d duplicate text(s), keeping the first of each", source, duplicates)
    frame = pd.DataFrame.from_records(records)
    if "label" in frame.columns and frame["label"].isna().any():
        missing = int(frame["label"].isna().sum())
        raise InputDataError(
            f"{source}: {missing} record(s) have no label while others do; give every record a "
            "label (0 or 1) or none"
        )
    return TextSet(records=frame, source=source)


RESERVED_FIELDS = ("id", "text")


def _user_fields(record: dict[str, Any], *, where: str, source: str) -> dict[str, Any]:
    """The record's fields, its own ``id`` / ``text`` renamed ``user_id`` / ``user_text``."""
    fields = dict(record)
    for name in RESERVED_FIELDS:
        if name not in fields:
            continue
        renamed = f"user_{name}"
        if renamed in fields:
            raise InputDataError(
                f"{source}, {where}: the record has both {name!r} and {renamed!r}; {name!r} is kept as "
                f"{renamed!r} (the {name!r} column is the loader's own), so rename one of the two fields"
            )
        fields[renamed] = fields.pop(name)
    return fields


def _check_same_label(first: tuple[str, Any], again: tuple[str, Any], *, source: str) -> None:
    """A repeated text must repeat its label: one text cannot be a member and a non-member."""
    (first_where, first_label), (where, label) = first, again
    if first_label != label:
        def shown(value: Any) -> str:
            return "no label" if value is None else f"label {value}"

        raise InputDataError(
            f"{source}: the same text is at {first_where} ({shown(first_label)}) and at {where} "
            f"({shown(label)}); a text cannot be both a member and a non-member: fix or remove one of them"
        )


def _check_text(row: dict[str, Any], *, where: str, source: str, text_field: str) -> str:
    if text_field not in row:
        fields = ", ".join(sorted(map(str, row))) or "none"
        raise InputDataError(
            f"{source}, {where}: no field {text_field!r} (fields: {fields}); pass --text-field NAME"
        )
    text = row[text_field]
    if not isinstance(text, str):
        raise InputDataError(f"{source}, {where}: field {text_field!r} is {type(text).__name__}, not a string")
    if not text.strip():
        raise InputDataError(f"{source}, {where}: the text is empty or whitespace only; remove the record")
    return text


def _check_label(value: Any, *, where: str, source: str) -> int | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool) or value in (0, 1, "0", "1"):
        return int(value)
    raise InputDataError(f"{source}, {where}: label {value!r} is not 0 or 1 (1 = member, 0 = non-member)")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]  # spreadsheet programs write a UTF-8 byte order mark
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputDataError(
                    f"{path}, line {number}: invalid UTF-8 at byte {exc.start}; re-encode the file as UTF-8"
                ) from exc


def _record_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a line-based file (.jsonl, .txt), numbered; blank ones are skipped.

    A warning counts the blank lines between records (trailing ones are left unmentioned).
    """
    pending: list[int] = []  # blank lines since the last record
    between: list[int] = []
    for number, line in _decoded_lines(path):
        if not line.strip():
            pending.append(number)
            continue
        between.extend(pending)
        pending.clear()
        yield number, line
    if between:
        shown = ", ".join(map(str, between[:10])) + (", ..." if len(between) > 10 else "")
        logger.warning("%s: skipped %d blank line(s) between records (line(s) %s); each non-blank line is "
                       "one record, so a text spanning several lines needs a .jsonl file", path, len(between),
                       shown)


def _read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in _record_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputDataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise InputDataError(f"{path}, line {number}: expected a JSON object, got {type(obj).__name__}")
        yield f"line {number}", obj


def _read_json(path: Path, text_field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    content = "".join(line for _, line in _decoded_lines(path))
    try:
        obj = json.loads(content)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(obj, list):
        raise InputDataError(f"{path}: expected a JSON list of objects or strings, got {type(obj).__name__}")
    for index, item in enumerate(obj):
        if isinstance(item, str):
            item = {text_field: item}
        if not isinstance(item, dict):
            raise InputDataError(f"{path}, item {index}: expected an object or a string")
        yield f"item {index}", item


def _read_csv(path: Path, text_field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    content = "".join(line for _, line in _decoded_lines(path))
    # strict: an unclosed quote fails instead of swallowing the rest of the file into one text
    reader = csv.DictReader(io.StringIO(content, newline=""), strict=True)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(content) + 1))  # long texts (books, notes) are fine
    try:
        try:
            reader.fieldnames  # reads the header, so that line_num counts from it
        except csv.Error as exc:
            raise InputDataError(f"{path}, line 1: malformed CSV header ({exc})") from exc
        rows = []
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise InputDataError(f"{path}, line {start}: malformed CSV ({exc}); check the quoting") from exc
            if None in row:
                raise InputDataError(f"{path}, line {reader.line_num}: more fields than the header has")
            rows.append((f"line {reader.line_num}", {k: _csv_value(v) for k, v in row.items()}))
    finally:
        csv.field_size_limit(limit)
    yield from rows


def _csv_value(value: str | None) -> Any:
    if value is None:
        return None
    return value


def _read_txt(path: Path, text_field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in _record_lines(path):
        yield f"line {number}", {text_field: line.rstrip("\r\n")}


def _read_parquet(path: Path, text_field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise InputDataError(f"{path}: not a readable Parquet file ({exc})") from exc
    for index, row in enumerate(table.to_pylist()):
        yield f"row {index}", row
