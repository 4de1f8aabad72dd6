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

Data sets of the Hugging Face ``datasets`` library are read by :func:`load_dataset_texts`:
a local directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a
hub name (``"fancyzhx/ag_news"``) on a machine that reaches the hub. Their rows go through
the same checks as a file's (``row N`` in place of the line). ``datasets`` is an optional
dependency (``pip install 'shadowmia[data]'``), imported only there.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

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
    """Texts with ids and kept fields; ``records`` has columns ``id``, ``text`` and the rest.

    ``source`` names where the texts came from in messages; ``provenance`` records what was
    read, for the artifacts of a run (a file's ``path``; a data set's name, subset, split,
    revision and fingerprint).
    """

    records: pd.DataFrame
    source: str
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

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
        return TextSet(records=frame, source=self.source, provenance=self.provenance)


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
    return _build(iter(rows), source=str(path), text_field=text_field, provenance={"path": str(path)})


def load_dataset_texts(name: str, *, split: str | None, text_field: str = "text", revision: str | None = None,
                       subset: str | None = None) -> TextSet:
    """Read the texts of a ``datasets`` data set: a local directory or a hub name.

    Args:
        name: a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
            (read with ``datasets.load_from_disk``, never the network), else a hub name such
            as ``"fancyzhx/ag_news"`` (read with ``datasets.load_dataset``).
        split: the split to read. Needed for a hub name and for a saved ``DatasetDict``; for a
            saved single ``Dataset`` it may be None, and if given must match the split the
            data set records (when it records one).
        text_field: the column holding the text.
        revision: a hub revision (branch, tag or commit) to pin; hub names only.
        subset: the hub data set's configuration (its "subset", ``name=`` of
            ``load_dataset``); hub names only.

    Every row goes through the checks of :func:`load_texts` (empty texts, duplicates,
    labels), named ``row N``. A ``label`` column of integers 0/1 is membership ground truth
    as for files; a ``label`` declared as a ``datasets.ClassLabel`` (AG News's topic) is a
    class of the data set, not membership, and is kept as ``user_label``.

    The TextSet's ``provenance`` holds the name, subset, split, revision, the number of
    rows and the data set's fingerprint (``Dataset._fingerprint``).

    Raises:
        InputDataError: ``datasets`` is not installed, the directory is not a saved data
            set, the hub cannot be reached or has no such data set, the split or the text
            column is missing, or a row fails a check.
    """
    datasets = _import_datasets()
    local = Path(name).is_dir()
    if local:
        for key, value in (("revision", revision), ("subset", subset)):
            if value is not None:
                raise InputDataError(
                    f"{name}: {key}={value!r} applies to a hub data set; a local directory is read as saved, "
                    f"so leave {key} out")
        data = _load_saved_dataset(datasets, name, split)
    else:
        data = _load_hub_dataset(datasets, name, split=split, revision=revision, subset=subset)
    source = name if split is None else f"{name} (split {split!r})"
    columns = list(data.column_names)
    if text_field not in columns:
        raise InputDataError(
            f"{source}: no column {text_field!r} (columns: {', '.join(columns) or 'none'}); set data.text_field "
            "to the column that holds the text")
    if len(data) == 0:
        raise InputDataError(f"{source}: holds no texts")
    provenance = {"dataset": name, "local": local, "subset": subset, "split": split, "revision": revision,
                  "fingerprint": getattr(data, "_fingerprint", None), "rows": len(data),
                  "datasets_version": getattr(datasets, "__version__", "unknown")}
    label = data.features.get("label")
    if text_field != "label" and isinstance(label, datasets.ClassLabel):
        if "user_label" in columns:
            raise InputDataError(
                f"{source}: the data set has a class column 'label' and a 'user_label' column; the class is kept "
                "as 'user_label' (the 'label' column is membership, 0/1), so rename one of the two columns")
        logger.info("%s: its label column is a class (%s), not membership; kept as user_label", source,
                    ", ".join(map(str, label.names[:8])))
        data = data.rename_column("label", "user_label")
    rows = ((f"row {index}", row) for index, row in enumerate(data))
    return _build(rows, source=source, text_field=text_field, provenance=provenance)


_DATASETS_MISSING = ("reading data.dataset needs the 'datasets' package, which is not installed: "
                     "pip install 'shadowmia[data]' (or datasets), or export the texts to a .jsonl file and "
                     "use data.path")


def _import_datasets() -> Any:
    """The ``datasets`` module, imported here only (it is optional)."""
    try:
        import datasets
    except ImportError:
        raise InputDataError(_DATASETS_MISSING) from None
    return datasets


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def _split_names(data: Any) -> list[str]:
    return [str(s) for s in data]


def _load_saved_dataset(datasets: Any, name: str, split: str | None) -> Any:
    """A ``Dataset`` from a ``save_to_disk`` directory (a ``DatasetDict``'s ``split``)."""
    try:
        data = datasets.load_from_disk(name)
    except Exception as exc:  # FileNotFoundError, a damaged or foreign directory, ...
        raise InputDataError(
            f"{name}: not a data set written by Dataset.save_to_disk or DatasetDict.save_to_disk "
            f"({_one_line(exc)}); save one there, or give a hub name or a file (data.path)") from None
    if isinstance(data, datasets.DatasetDict):
        splits = _split_names(data)
        if split is None:
            raise InputDataError(f"{name}: holds the splits {splits}; set data.split to the one to read")
        if split not in data:
            raise InputDataError(f"{name}: no split {split!r}; its splits: {splits}; set data.split to one of them")
        return data[split]
    recorded = None if data.split is None else str(data.split)
    if split is not None and recorded is not None and recorded != split:
        raise InputDataError(
            f"{name}: data.split={split!r} but the directory holds one Dataset of split {recorded!r}; set "
            f"data.split = {recorded!r}, or point data.dataset at a directory that holds split {split!r}")
    return data


def _load_hub_dataset(datasets: Any, name: str, *, split: str | None, revision: str | None,
                      subset: str | None) -> Any:
    """One split of a hub data set, through ``datasets.load_dataset`` (and its cache)."""
    where = Path(name).resolve()
    if split is None:
        raise InputDataError(
            f"{name}: no directory {where} exists, so it is read as a hub name, which needs data.split "
            "(e.g. split = \"test\")")
    offline_hint = (f"on a machine without the hub, save a copy elsewhere (datasets.load_dataset({name!r}, "
                    f"split={split!r}).save_to_disk(DIR)) and use --set data.dataset=DIR, or export it to a "
                    ".jsonl file and use --set data.path=FILE")
    try:
        data = datasets.load_dataset(name, subset, split=split, revision=revision)
    except ConnectionError as exc:  # also what HF_HUB_OFFLINE=1 gives
        raise InputDataError(
            f"{name}: the Hugging Face hub cannot be reached ({_one_line(exc)}) and no directory {where} exists; "
            f"{offline_hint}") from None
    except Exception as exc:
        not_found = getattr(getattr(datasets, "exceptions", None), "DatasetNotFoundError", ())
        if not_found and isinstance(exc, not_found):
            raise InputDataError(
                f"{name}: no such data set on the hub, or it is gated or private ({_one_line(exc)}), and no "
                f"directory {where} exists; check the name (namespace/name), or give a local save_to_disk "
                "directory or a file (data.path)") from None
        if isinstance(exc, ValueError) and "split" in str(exc).lower():
            raise InputDataError(f"{name}: split {split!r} cannot be read ({_one_line(exc)}); set data.split "
                                 "to one of the data set's splits") from None
        raise InputDataError(f"{name}: the data set cannot be loaded ({_one_line(exc)}); {offline_hint}") from None
    if isinstance(data, datasets.DatasetDict):  # not with a split given, but be sure
        raise InputDataError(f"{name}: holds the splits {_split_names(data)}; set data.split to one of them")
    return data


def _build(rows: Iterator[tuple[str, dict[str, Any]]], *, source: str, text_field: str,
           provenance: Mapping[str, Any] | None = None) -> TextSet:
    """The TextSet of ``(where, record)`` pairs, after every check of the module docstring."""
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
    return TextSet(records=frame, source=source, provenance=dict(provenance or {}))


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
