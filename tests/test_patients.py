"""Tests for experiments.data.patients: determinism, diversity, field validity, JSON lines I/O."""

from __future__ import annotations

import datetime as dt
import json
import os
import random

import numpy as np
import pytest

from experiments.data.patients import (
    CONDITIONS,
    FEMALE_FIRST_NAMES,
    MALE_FIRST_NAMES,
    MAX_WORDS,
    MEDICATIONS,
    MIN_WORDS,
    N_TEMPLATES,
    SURNAMES,
    generate_patient_records,
    write_patient_corpus,
)
from llm_features.errors import ConfigError

FIELDS = {
    "text", "patient_id", "name", "age", "sex", "admission_date", "discharge_date",
    "conditions", "medications", "template",
}

PRESCRIPTIONS = {
    f"{drug} {dose} {frequency}"
    for drug, (doses, frequencies) in MEDICATIONS.items()
    for dose in doses
    for frequency in frequencies
}


@pytest.fixture(scope="module")
def records_5000() -> list[dict]:
    return generate_patient_records(5000, seed=2024)


def test_content_lists_are_sizeable():
    assert len(set(FEMALE_FIRST_NAMES) | set(MALE_FIRST_NAMES)) >= 150
    assert len(set(SURNAMES)) >= 150
    assert len(CONDITIONS) >= 40
    assert len(MEDICATIONS) >= 40
    assert N_TEMPLATES >= 24
    for condition, (_, _, drugs) in CONDITIONS.items():
        assert set(drugs) <= set(MEDICATIONS), condition


def test_same_seed_gives_identical_records():
    first = generate_patient_records(300, seed=11)
    second = generate_patient_records(300, seed=11)
    assert first == second
    # a shorter call is a prefix of a longer one
    assert generate_patient_records(100, seed=11) == first[:100]


def test_different_seed_gives_different_records():
    a = generate_patient_records(200, seed=1)
    b = generate_patient_records(200, seed=2)
    texts_a = {r["text"] for r in a}
    texts_b = {r["text"] for r in b}
    assert len(texts_a & texts_b) == 0
    assert [r["name"] for r in a] != [r["name"] for r in b]


def test_global_random_state_untouched():
    np.random.seed(5)
    random.seed(5)
    expected_np = np.random.random()
    expected_py = random.random()
    np.random.seed(5)
    random.seed(5)
    generate_patient_records(50, seed=3)
    assert np.random.random() == expected_np
    assert random.random() == expected_py


def test_5000_distinct_texts_and_ids(records_5000):
    assert len(records_5000) == 5000
    assert len({r["text"] for r in records_5000}) == 5000
    assert len({r["patient_id"] for r in records_5000}) == 5000


def test_templates_and_names_are_varied(records_5000):
    templates = {r["template"] for r in records_5000}
    assert len(templates) >= 20
    assert all(0 <= t < N_TEMPLATES for t in templates)
    assert len({r["name"] for r in records_5000}) >= 3000
    assert len({r["name"].split()[0] for r in records_5000}) >= 150
    assert len({r["conditions"][0] for r in records_5000}) >= 40
    # no single opening dominates: texts start in many different ways
    openings = {" ".join(r["text"].split()[:2]) for r in records_5000}
    assert len(openings) >= 60


def test_fields_are_valid(records_5000):
    first_day, last_day = dt.date(2015, 1, 1), dt.date(2025, 12, 31)
    for r in records_5000:
        assert set(r) == FIELDS
        assert isinstance(r["age"], int) and 18 <= r["age"] <= 95
        assert r["sex"] in ("female", "male")
        first = r["name"].split()[0]
        assert first in (FEMALE_FIRST_NAMES if r["sex"] == "female" else MALE_FIRST_NAMES)
        admitted = dt.date.fromisoformat(r["admission_date"])
        discharged = dt.date.fromisoformat(r["discharge_date"])
        assert first_day <= admitted <= discharged <= last_day
        assert r["name"] in r["text"]
        if r["sex"] == "female":
            assert "benign prostatic hyperplasia" not in r["conditions"]
        assert r["patient_id"].startswith("MRN") and len(r["patient_id"]) == 10
        assert isinstance(r["conditions"], list) and 1 <= len(r["conditions"]) <= 3
        assert len(set(r["conditions"])) == len(r["conditions"])
        assert all(c in CONDITIONS for c in r["conditions"])
        primary = r["conditions"][0]
        assert primary in r["text"] or primary[:1].upper() + primary[1:] in r["text"]
        assert isinstance(r["medications"], list) and 1 <= len(r["medications"]) <= 4
        for med in r["medications"]:
            assert med in PRESCRIPTIONS, med  # drug, one of its doses, one of its frequencies
        assert "{" not in r["text"] and "}" not in r["text"]
        assert "  " not in r["text"]


def test_no_duplicate_drug_classes(records_5000):
    anticoagulants = {"apixaban", "rivaroxaban", "warfarin", "enoxaparin"}
    antibiotics = {"amoxicillin", "co-amoxiclav", "doxycycline", "nitrofurantoin",
                   "ceftriaxone", "flucloxacillin", "piperacillin-tazobactam"}
    for r in records_5000:
        drugs = [m.split(" ")[0] for m in r["medications"]]
        assert len(drugs) == len(set(drugs)), r["medications"]
        assert len(anticoagulants & set(drugs)) <= 1, r["medications"]
        assert len(antibiotics & set(drugs)) <= 1, r["medications"]


def test_word_counts_in_range(records_5000):
    counts = np.array([len(r["text"].split()) for r in records_5000])
    assert counts.min() >= MIN_WORDS == 40
    assert counts.max() <= MAX_WORDS == 90
    assert 45 <= counts.mean() <= 75


def test_age_and_date_spread(records_5000):
    ages = np.array([r["age"] for r in records_5000])
    assert ages.min() <= 22 and ages.max() >= 92
    years = {r["admission_date"][:4] for r in records_5000}
    assert years == {str(y) for y in range(2015, 2026)}
    assert any(r["discharge_date"] > r["admission_date"] for r in records_5000)


def test_small_and_invalid_n():
    assert generate_patient_records(0, seed=0) == []
    assert len(generate_patient_records(1, seed=0)) == 1
    with pytest.raises(ConfigError):
        generate_patient_records(-1, seed=0)
    with pytest.raises(ConfigError):
        generate_patient_records(2.5, seed=0)  # type: ignore[arg-type]


def test_write_patient_corpus_round_trips(tmp_path):
    target = tmp_path / "sub" / "patients.jsonl"
    returned = write_patient_corpus(target, 120, seed=9)
    assert returned == target and target.is_file()
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 120
    loaded = [json.loads(line) for line in lines]
    assert loaded == generate_patient_records(120, seed=9)
    assert isinstance(loaded[0]["conditions"], list)
    assert isinstance(loaded[0]["medications"], list)
    assert next(iter(loaded[0])) == "text"
    # nothing but the corpus is left in the directory (the temp file was renamed away)
    assert os.listdir(target.parent) == ["patients.jsonl"]


def test_write_patient_corpus_replaces_atomically(tmp_path):
    target = tmp_path / "patients.jsonl"
    target.write_text("old\n", encoding="utf-8")
    write_patient_corpus(str(target), 5, seed=1)
    assert len(target.read_text(encoding="utf-8").splitlines()) == 5
    # a failed write leaves the old file intact and no temp file behind
    with pytest.raises(ConfigError):
        write_patient_corpus(target, -3, seed=1)
    assert len(target.read_text(encoding="utf-8").splitlines()) == 5
    assert os.listdir(tmp_path) == ["patients.jsonl"]
