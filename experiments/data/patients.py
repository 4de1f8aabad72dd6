"""A deterministic generator of synthetic patient records: the demo corpus of shadowmia.

The demo asks the question membership inference is about: *was this patient's record in
the fine-tuning data?* A model is fine-tuned on some of these records; the attack then
tries to tell those records from others drawn the same way.

Every record is **entirely fictional**. Names are combined at random from lists of common
first names and surnames, and ages, dates, diagnoses, medications, findings, clinicians
and hospitals are all drawn at random; none describes a real person, clinician, hospital
or case. The clinical content is plausible in shape only and is not medical advice.

Each record is one paragraph of clinical prose (40 to 90 words) written from one of
:data:`N_TEMPLATES` templates -- admission notes, discharge summaries, clinic letters,
referrals, follow-up notes and more -- each with several options per clause, plus the
structured fields the text was written from. Generation uses only
``numpy.random.default_rng(seed)``: the same ``n`` and ``seed`` give the same records on
every machine, and no global random state is read or changed. Texts are distinct within
one call, and a prefix of a longer call equals a shorter call with the same seed.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments.data.patient_vocabulary import (
    CONDITIONS,
    COURSES,
    DRUG_CLASS,
    FEMALE_FIRST_NAMES,
    FOLLOW_UPS,
    HOSPITALS,
    MALE_FIRST_NAMES,
    MEDICATIONS,
    PLANS,
    ROUTES,
    SOCIAL,
    SURNAMES,
    TEMPLATES,
    TREATMENTS,
    WARDS,
    WITH_ARTICLE,
)
from llm_features.io import atomic_path
from llm_features.validation import check_int

__all__ = [
    "CONDITIONS",
    "FEMALE_FIRST_NAMES",
    "MALE_FIRST_NAMES",
    "MAX_TOKEN_ESTIMATE",
    "MAX_WORDS",
    "MEDICATIONS",
    "MIN_WORDS",
    "N_TEMPLATES",
    "SURNAMES",
    "generate_patient_records",
    "write_patient_corpus",
]

logger = logging.getLogger(__name__)

MIN_WORDS = 40
MAX_WORDS = 90
MIN_AGE = 18
MAX_AGE = 95
_FIRST_DAY = _dt.date(2015, 1, 1)
_LAST_DAY = _dt.date(2025, 12, 31)
_MAX_ATTEMPTS_PER_RECORD = 1000
_MAX_DRUGS = 4
# Byte-level BPE tokenizers that split digits (Llama 3, SmolLM2, Qwen) spend about one
# token per word plus one per digit or punctuation mark; a text whose such count exceeds
# this is redrawn, which keeps records at about 60 to 130 tokens.
MAX_TOKEN_ESTIMATE = 115
_SYMBOL = re.compile(r"[^\sA-Za-z]")

N_TEMPLATES = len(TEMPLATES)

_SPECIALTIES: dict[str, str] = {}
_DEFAULT_SPECIALTY = "general medicine"
_SPECIALTY_WORDS = (
    ("cardiology", ("atrial", "heart", "angina", "myocardial", "hypertension")),
    ("respiratory medicine",
     ("pneumonia", "COPD", "asthma", "pulmonary", "apnoea", "COVID", "influenza")),
    ("gastroenterology",
     ("pancrea", "reflux", "peptic", "Crohn", "colitis", "cirrhosis", "diverticul")),
    ("general surgery", ("appendicitis", "cholecystitis")),
    ("endocrinology", ("diabetes", "thyroid", "osteoporosis", "hyponatraemia")),
    ("neurology", ("stroke", "ischaemic attack", "epilepsy", "Parkinson", "migraine", "sciatica")),
    ("psychiatry", ("depressive", "anxiety")),
    ("rheumatology", ("arthritis", "gout")),
    ("orthopaedics", ("femur", "osteoarthritis")),
    ("nephrology", ("kidney",)),
    ("urology", ("prostatic", "renal colic", "urinary")),
    ("dermatology", ("psoriasis", "shingles", "cellulitis")),
    ("haematology", ("anaemia", "thrombosis")),
    ("elderly care", ("dementia",)),
    ("infectious diseases", ("sepsis",)),
)
for _condition in CONDITIONS:
    for _specialty, _words in _SPECIALTY_WORDS:
        if any(word in _condition for word in _words):
            _SPECIALTIES[_condition] = _specialty
            break
    else:
        _SPECIALTIES[_condition] = _DEFAULT_SPECIALTY

_MALE_ONLY_CONDITIONS = frozenset({"benign prostatic hyperplasia"})
_CONDITION_NAMES: tuple[str, ...] = tuple(CONDITIONS)
_FEMALE_CONDITION_NAMES: tuple[str, ...] = tuple(
    c for c in CONDITIONS if c not in _MALE_ONLY_CONDITIONS
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_LOS_DAYS = (1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10, 12, 14, 18, 21)
_SPAN_DAYS = (_LAST_DAY - _FIRST_DAY).days - max(_LOS_DAYS)


# --------------------------------------------------------------------------- sampling

class _Draws:
    """Uniform draws from one ``Generator``, fetched in blocks (scalar calls are slow)."""

    _BLOCK = 8192

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buffer: list[float] = []
        self._next = 0

    def uniform(self) -> float:
        if self._next >= len(self._buffer):
            self._buffer = self._rng.random(self._BLOCK).tolist()
            self._next = 0
        value = self._buffer[self._next]
        self._next += 1
        return value

    def index(self, n: int) -> int:
        return min(int(self.uniform() * n), n - 1)

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.index(len(items))]

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]`` (both included)."""
        return low + self.index(high - low + 1)

    def distinct(self, items: Sequence[Any], k: int, exclude: Sequence[Any] = ()) -> list[Any]:
        chosen: list[Any] = []
        while len(chosen) < k:
            item = self.pick(items)
            if item not in chosen and item not in exclude:
                chosen.append(item)
        return chosen


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _format_date(day: _dt.date, style: int) -> str:
    if style == 0:
        return day.isoformat()
    if style == 1:
        return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"
    if style == 2:
        return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"
    return f"{day.day:02d}/{day.month:02d}/{day.year}"


def _compatible(drug: str, chosen: Sequence[str]) -> bool:
    """Whether ``drug`` can join ``chosen``: not already there, no second of its class."""
    if drug in chosen:
        return False
    group = DRUG_CLASS.get(drug)
    return group is None or all(DRUG_CLASS.get(other) != group for other in chosen)


def _prose(condition: str) -> str:
    """A condition as it reads in a sentence: 'urinary tract infection' -> 'a urinary ...'."""
    article = WITH_ARTICLE.get(condition)
    return f"{article} {condition}" if article else condition


def _short_symptom(symptom: str) -> str:
    """'a productive cough and fever' -> 'productive cough and fever' (reads after 'his')."""
    for article in ("a ", "an "):
        if symptom.startswith(article):
            return symptom[len(article):]
    return symptom


def _draw_record(draws: _Draws) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """One record's fields, its text pattern and the pattern's slots (``pid`` unset)."""
    female = draws.uniform() < 0.5
    first = draws.pick(FEMALE_FIRST_NAMES if female else MALE_FIRST_NAMES)
    last = draws.pick(SURNAMES)
    name = f"{first} {last}"
    # ages skew older, as inpatients do: the larger of two uniform draws, half the time
    age = draws.integer(MIN_AGE, MAX_AGE)
    if draws.uniform() < 0.5:
        age = max(age, draws.integer(MIN_AGE, MAX_AGE))

    admission = _FIRST_DAY + _dt.timedelta(days=draws.index(_SPAN_DAYS + 1))
    los = draws.pick(_LOS_DAYS)
    discharge = admission + _dt.timedelta(days=los)

    possible = _FEMALE_CONDITION_NAMES if female else _CONDITION_NAMES
    primary = draws.pick(possible)
    n_comorbid = draws.pick((0, 0, 1, 1, 1, 2))
    comorbid = draws.distinct(possible, n_comorbid, exclude=(primary,))
    conditions = [primary, *comorbid]

    symptoms, findings, typical = CONDITIONS[primary]
    symptom = draws.pick(symptoms)
    finding = draws.pick(findings)
    n_typical = draws.pick((1, 1, 1, 2, 2, 3))
    drugs: list[str] = []
    for drug in draws.distinct(typical, len(typical)):  # the typical drugs, shuffled
        if len(drugs) < n_typical and _compatible(drug, drugs):
            drugs.append(drug)
    for condition in comorbid:
        if len(drugs) < _MAX_DRUGS and draws.uniform() < 0.6:
            drug = draws.pick(CONDITIONS[condition][2])
            if _compatible(drug, drugs):
                drugs.append(drug)
    medications = []
    for drug in drugs:
        doses, frequencies = MEDICATIONS[drug]
        medications.append(f"{drug} {draws.pick(doses)} {draws.pick(frequencies)}")

    template = draws.index(N_TEMPLATES)
    _, clauses = TEMPLATES[template]
    date_style = draws.index(4)
    pron, poss, obj = ("she", "her", "her") if female else ("he", "his", "him")
    history = [_prose(c) for c in comorbid]
    primary_prose = _prose(primary)
    specialty = _SPECIALTIES[primary]
    gp = draws.pick(SURNAMES)
    slots = {
        "name": name,
        "first": first,
        "last": last,
        "title": draws.pick(("Mrs", "Ms", "Miss")) if female else "Mr",
        "age": age,
        "a_age": "an" if age == 18 or 80 <= age <= 89 else "a",
        "sex": "female" if female else "male",
        "sexn": "woman" if female else "man",
        "sexl": "F" if female else "M",
        "pron": pron,
        "Pron": _capitalize(pron),
        "poss": poss,
        "obj": obj,
        "adm": _format_date(admission, date_style),
        "dis": _format_date(discharge, date_style),
        "los": f"{los} day" if los == 1 else f"{los} days",
        "day": draws.integer(2, max(2, los)),
        "c1": primary_prose,
        "C1": _capitalize(primary_prose),
        "sym": symptom,
        "sym_short": _short_symptom(symptom),
        "find": finding,
        "Find": _capitalize(finding),
        "Hist_sent": (
            f"Past history includes {_join(history)}." if history
            else draws.pick(("No significant past medical history.",
                             "There is no relevant past medical history.",
                             "Previously fit and well."))),
        "Hist_item": (_capitalize(_join(history)) if history else "No other active problems"),
        "meds": _join(medications),
        "plan": draws.pick(PLANS),
        "fu": draws.pick(FOLLOW_UPS),
        "course": draws.pick(COURSES),
        "treat": draws.pick(TREATMENTS),
        "social": draws.pick(SOCIAL).format(poss=poss),
        "hosp": draws.pick(HOSPITALS),
        "ward": draws.pick(WARDS),
        "route": draws.pick(ROUTES),
        "clin": f"Dr {draws.pick(SURNAMES)}",
        "gp": gp,
        "specialty": specialty,
        "Specialty": _capitalize(specialty),
        "pid": "",  # filled in by the caller once the id is known to be unique
    }
    parts = [draws.pick(options) for options in clauses]
    record = {
        "patient_id": "",
        "name": name,
        "age": age,
        "sex": slots["sex"],
        "admission_date": admission.isoformat(),
        "discharge_date": discharge.isoformat(),
        "conditions": conditions,
        "medications": medications,
        "template": template,
    }
    return record, " ".join(parts), slots


def _fits(text: str) -> bool:
    """Whether ``text`` has 40 to 90 words and a token estimate within the limit."""
    words = len(text.split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        return False
    return words + len(_SYMBOL.findall(text)) <= MAX_TOKEN_ESTIMATE


def generate_patient_records(n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct synthetic (fictional) patient records, determined by ``seed``.

    Each record is a dict with ``text`` (one paragraph of clinical prose, 40 to 90 words)
    and the fields it was written from: ``patient_id`` (unique, ``"MRN"`` and 7 digits),
    ``name``, ``age`` (18 to 95), ``sex`` (``"female"`` or ``"male"``),
    ``admission_date`` and ``discharge_date`` (ISO ``YYYY-MM-DD``, 2015 to 2025, discharge
    1 to 21 days after admission), ``conditions`` (primary diagnosis first),
    ``medications`` (drug, dose, frequency) and ``template`` (index of the note template,
    ``0 <= template < N_TEMPLATES``).

    Only ``numpy.random.default_rng(seed)`` is used. Records whose text repeats an earlier
    one, fall outside the word range or look longer than about 130 tokens
    (:data:`MAX_TOKEN_ESTIMATE`) are redrawn, so texts are distinct and the
    records of ``generate_patient_records(m, seed=s)`` are the first ``m`` of any larger
    ``n`` with the same seed.
    """
    check_int(n, name="n", low=0, hint="the number of records")
    draws = _Draws(np.random.default_rng(check_int(seed, name="seed", low=0)))
    records: list[dict[str, Any]] = []
    seen_texts: set[str] = set()
    seen_ids: set[str] = set()
    redrawn = 0
    for _ in range(int(n)):
        for _attempt in range(_MAX_ATTEMPTS_PER_RECORD):
            record, pattern, slots = _draw_record(draws)
            patient_id = f"MRN{draws.integer(1_000_000, 9_999_999)}"
            while patient_id in seen_ids:
                patient_id = f"MRN{draws.integer(1_000_000, 9_999_999)}"
            slots["pid"] = patient_id
            text = pattern.format(**slots)
            if text not in seen_texts and _fits(text):
                break
            redrawn += 1
        else:  # pragma: no cover - the content lists make this practically unreachable
            raise RuntimeError(
                f"could not draw a new distinct record after {_MAX_ATTEMPTS_PER_RECORD} tries"
            )
        seen_texts.add(text)
        seen_ids.add(patient_id)
        record["patient_id"] = patient_id
        records.append({"text": text, **record})
    logger.debug("generated %d patient records (seed %d, %d redrawn)", len(records), seed, redrawn)
    return records


def write_patient_corpus(path: str | os.PathLike, n: int, *, seed: int) -> Path:
    """Write ``generate_patient_records(n, seed=seed)`` to ``path`` as JSON lines.

    One object per line with ``text`` first, then the structured fields (lists as JSON
    lists), UTF-8. The file is written to a temporary name in the same directory and
    moved into place with ``os.replace``, so ``path`` never holds a partial corpus.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    records = generate_patient_records(n, seed=seed)
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("wrote %d synthetic patient records to %s", len(records), target)
    return target
