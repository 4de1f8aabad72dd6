"""Reading texts: every format, stable ids, kept fields, labels, and clear errors for bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from llm_features.errors import InputDataError
from llm_features.texts import load_texts, text_id, texts_from_list

TEXTS = [
    "The patient was seen on Monday.",
    "Zoë ate crème brûlée, said \"wow\", and left; then, a comma.",
    "A text with a tab\tinside it and ünïcödé ☃.",
    "Last line of the sample.",
]
LABELS = [1, 0, 1, 0]
SOURCES = ["a", "b", "c", "d"]


def write_all_formats(directory: Path, *, field: str = "text") -> dict[str, Path]:
    rows = [{field: t, "label": l, "source": s} for t, l, s in zip(TEXTS, LABELS, SOURCES)]
    paths = {}
    paths["jsonl"] = directory / "data.jsonl"
    paths["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    paths["json"] = directory / "data.json"
    paths["json"].write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    paths["csv"] = directory / "data.csv"
    with open(paths["csv"], "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[field, "label", "source"])
        writer.writeheader()
        writer.writerows(rows)
    paths["parquet"] = directory / "data.parquet"
    pd.DataFrame(rows).to_parquet(paths["parquet"], index=False)
    return paths


def expected_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_format_loads_the_same_texts_ids_and_fields(tmp_path, fmt):
    path = write_all_formats(tmp_path)[fmt]
    loaded = load_texts(path)
    assert loaded.texts == TEXTS
    assert loaded.ids == [expected_id(t) for t in TEXTS]
    assert loaded.labels == LABELS
    assert loaded.records["source"].tolist() == SOURCES
    assert list(loaded.records.columns) == ["id", "text", "label", "source"]
    assert pd.api.types.is_integer_dtype(loaded.records["label"])
    assert loaded.source == str(path)


def test_txt_is_one_text_per_line_without_line_endings(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(("\r\n".join(TEXTS) + "\r\n").encode("utf-8"))
    loaded = load_texts(path)
    assert loaded.texts == TEXTS
    assert loaded.ids == [expected_id(t) for t in TEXTS]
    assert loaded.labels is None


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_text_field_under_another_name(tmp_path, fmt):
    path = write_all_formats(tmp_path, field="body")[fmt]
    loaded = load_texts(path, text_field="body")
    assert loaded.texts == TEXTS
    assert "body" not in loaded.records.columns
    assert loaded.labels == LABELS
    with pytest.raises(InputDataError, match="no field 'text'.*body.*--text-field"):
        load_texts(path)


def test_json_list_of_strings(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(TEXTS), encoding="utf-8")
    assert load_texts(path).texts == TEXTS


def test_csv_with_a_byte_order_mark(tmp_path):
    """Spreadsheet programs write a UTF-8 BOM; it must not become part of the header or the text."""
    csv_path = tmp_path / "data.csv"
    csv_path.write_bytes(b"\xef\xbb\xbftext,label\nHello there,1\nGeneral Kenobi,0\n")
    loaded = load_texts(csv_path)
    assert loaded.texts == ["Hello there", "General Kenobi"]
    assert loaded.labels == [1, 0]
    txt_path = tmp_path / "data.txt"
    txt_path.write_bytes(b"\xef\xbb\xbfHello there\n")
    assert load_texts(txt_path).ids == [expected_id("Hello there")]
    jsonl_path = tmp_path / "data.jsonl"
    jsonl_path.write_bytes(b'\xef\xbb\xbf{"text": "Hello there"}\n')
    assert load_texts(jsonl_path).texts == ["Hello there"]


@pytest.mark.parametrize("raw,expected", [(True, 1), (False, 0), (1.0, 1), ("1", 1), ("0", 0)])
def test_labels_become_ints(tmp_path, raw, expected):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "x y z", "label": raw}) + "\n", encoding="utf-8")
    loaded = load_texts(path)
    assert loaded.labels == [expected]
    assert type(loaded.labels[0]) is int


def test_ids_are_stable_and_independent_of_file_order(tmp_path):
    forward = tmp_path / "forward.jsonl"
    backward = tmp_path / "backward.jsonl"
    forward.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    backward.write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed(TEXTS)), encoding="utf-8")
    a, b = load_texts(forward), load_texts(backward)
    assert dict(zip(a.ids, a.texts)) == dict(zip(b.ids, b.texts))
    assert b.ids == list(reversed(a.ids))
    assert text_id(TEXTS[0]) == expected_id(TEXTS[0])
    assert len(set(a.ids)) == len(TEXTS)
    assert texts_from_list(TEXTS).ids == a.ids
    assert a.subset(b.ids[:2]).texts == [TEXTS[3], TEXTS[2]]


def test_duplicates_are_dropped_with_a_counting_warning(tmp_path, caplog):
    path = tmp_path / "dups.jsonl"
    rows = [{"text": "one", "label": 1}, {"text": "two", "label": 0}, {"text": "one", "label": 1, "x": 2},
            {"text": "three", "label": 1}, {"text": "two", "label": 0}, {"text": "one", "label": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="llm_features.texts"):
        loaded = load_texts(path)
    assert loaded.texts == ["one", "two", "three"]
    assert loaded.labels == [1, 0, 1]  # the first of each is kept
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3 duplicate" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()


def test_no_warning_without_duplicates(tmp_path, caplog):
    path = write_all_formats(tmp_path)["jsonl"]
    with caplog.at_level(logging.WARNING, logger="llm_features.texts"):
        load_texts(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---- bad input: InputDataError naming the file and the line ---------------------------------


def jsonl_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


GOOD = b'{"text": "a good text", "label": 1}'


@pytest.mark.parametrize(
    "lines,where,pattern",
    [
        ([GOOD, b'{"text": "fine"}', b'{"text": "caf\xe9"}'], "line 3", "invalid UTF-8"),
        ([GOOD, b'{"text": "unclosed}'], "line 2", "not valid JSON"),
        ([GOOD, b'["a list"]'], "line 2", "JSON object"),
        ([GOOD, b'{"body": "x", "title": "t"}'], "line 2", r"no field 'text' \(fields: body, title\)"),
        ([GOOD, b'{"text": ""}'], "line 2", "empty or whitespace"),
        ([GOOD, b'', b'{"text": " \\t\\n "}'], "line 3", "empty or whitespace"),
        ([GOOD, b'{"text": "x", "label": 2}'], "line 2", "label 2 is not 0 or 1"),
        ([GOOD, b'{"text": "x", "label": "yes"}'], "line 2", "not 0 or 1"),
        ([GOOD, b'{"text": 17}'], "line 2", "not a string"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, lines, where, pattern):
    path = jsonl_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputDataError, match=pattern) as info:
        load_texts(path)
    message = str(info.value)
    assert str(path) in message
    assert where in message


def test_bad_csv_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,1\nalso fine,0\nbad,7\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="label '7' is not 0 or 1") as info:
        load_texts(path)
    assert str(path) in str(info.value) and "line 4" in str(info.value)
    path.write_text("text,label\nfine,1\ntoo,1,many\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="line 3: more fields"):
        load_texts(path)


def test_csv_unclosed_quote_fails_instead_of_swallowing_the_rest(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('text,label\nfine,1\n"unclosed quote,0\nthird,1\nfourth,0\n', encoding="utf-8")
    with pytest.raises(InputDataError, match="line 3: malformed CSV") as info:
        load_texts(path)
    assert str(path) in str(info.value)


def test_csv_quoted_multiline_and_very_long_fields(tmp_path):
    long_text = "word " * 40_000  # 200 kB: over the csv module's default field limit
    path = tmp_path / "long.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerow(["two\nlines, with \"quotes\"", 1])
        writer.writerow([long_text, 0])
    loaded = load_texts(path)
    assert loaded.texts == ["two\nlines, with \"quotes\"", long_text]
    assert loaded.labels == [1, 0]
    assert csv.field_size_limit() == 131072  # the global limit is restored


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n', encoding="utf-8")
    with pytest.raises(InputDataError, match="line 3: not valid JSON") as info:
        load_texts(path)
    assert str(path) in str(info.value)
    path.write_text(json.dumps([{"text": "a"}, {"text": "  "}]), encoding="utf-8")
    with pytest.raises(InputDataError, match="item 1: the text is empty"):
        load_texts(path)


def test_bad_parquet_names_file_and_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 3]}).to_parquet(path)
    with pytest.raises(InputDataError, match="row 2: label 3 is not 0 or 1") as info:
        load_texts(path)
    assert str(path) in str(info.value)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    with pytest.raises(InputDataError, match="not a readable Parquet file") as info:
        load_texts(garbage)
    assert str(garbage) in str(info.value)


def test_txt_with_a_blank_line_skips_it_with_a_warning_naming_the_line(tmp_path, caplog):
    path = tmp_path / "blank.txt"
    path.write_text("one\ntwo\n   \nfour\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="llm_features.texts"):
        assert load_texts(path).texts == ["one", "two", "four"]
    assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage() and "line(s) 3)" in r.getMessage()]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(InputDataError, match="no such file") as info:
        load_texts(path)
    assert str(path) in str(info.value)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "data.xyz"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(InputDataError, match=r"unknown format '\.xyz'.*\.jsonl") as info:
        load_texts(path)
    assert str(path) in str(info.value)


def test_a_directory(tmp_path):
    directory = tmp_path / "data.jsonl"
    directory.mkdir()
    with pytest.raises(InputDataError, match="is not a file") as info:
        load_texts(directory)
    assert str(directory) in str(info.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt", ".parquet"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(InputDataError) as info:
        load_texts(path)
    assert str(path) in str(info.value)


def test_header_only_csv_and_blank_jsonl_hold_no_texts(tmp_path):
    csv_path = tmp_path / "header.csv"
    csv_path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="holds no texts"):
        load_texts(csv_path)
    jsonl_path = tmp_path / "blank.jsonl"
    jsonl_path.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(InputDataError, match="holds no texts"):
        load_texts(jsonl_path)


def test_labels_on_some_records_only(tmp_path):
    path = jsonl_lines(tmp_path / "partial.jsonl", [GOOD, b'{"text": "no label here"}'])
    with pytest.raises(InputDataError, match="1 record.*no label") as info:
        load_texts(path)
    assert str(path) in str(info.value)
