"""Pretraining-data detection: single-feature attacks on labelled texts, beside a blind baseline.

For benchmarks such as WikiMIA the labels say which texts were in a model's *pretraining*
data. There is nothing to train: no target fine-tune, no shadows. The given model scores
the labelled texts once, every feature is reported as an attack on its own, and a **blind
baseline** that never looks at the model -- a bag-of-words logistic regression whose
score for each text comes from a fold that did not see it -- is reported beside them.

Why the baseline: WikiMIA's members and non-members were written at different times
(non-members describe events after the model's training cut-off), so their words alone
separate them (Das et al. 2024, "Blind Baselines Beat Membership Inference Attacks for
Foundation Models"; Duan et al. 2024, "Do Membership Inference Attacks Work on Large
Language Models?"). An attack that does not beat the blind baseline has not shown that
it detects membership; it may only detect the distribution shift.

Output directory: ``report.json``, ``report.md``, ``roc.png``, ``histogram.png``
(:func:`experiments.report.write_report`), ``features.parquet`` (one row per text: id,
label, kept fields, every feature, the blind baseline's out-of-fold score) and
``config.json`` (the arguments, seeds and library versions). Every file is written
atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from experiments.jobs.common import check_kept_fields, write_parquet_atomic
from experiments.jobs.features import features_job
from llm_features.errors import ConfigError, InputDataError
from llm_features.io import library_versions, write_json_atomic
from llm_features.registry import FeatureRequest, known_features, parse_features
from llm_features.settings import FeatureSettings
from llm_features.texts import load_texts
from llm_features.validation import check_int, check_labels

logger = logging.getLogger(__name__)

__all__ = ["BLIND_BASELINE", "BLIND_COLUMN", "blind_baseline_scores", "run_pretraining_detection"]

#: Regularisation strengths the blind baseline chooses among, by inner cross-validation.
BLIND_CS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
#: Column of the blind baseline's out-of-fold score in ``features.parquet``.
BLIND_COLUMN = "blind_baseline"

BLIND_NOTE = (
    "The blind baseline never looks at the model: it is a bag-of-words classifier (word "
    "unigrams and bigrams, TF-IDF, logistic regression) trained on the texts and their labels, "
    "and each text's score comes from a cross-validation fold that never saw that text. It "
    "measures the distribution shift between member and non-member texts (e.g. their dates), "
    "so an attack that does not beat it does not show membership."
)


def blind_baseline_name(folds: int) -> str:
    """The attack name of the blind baseline in the report."""
    return f"blind baseline (bag of words, {folds}-fold CV)"


BLIND_BASELINE = blind_baseline_name(5)


def _blind_classifier(*, seed: int, inner_folds: int) -> Any:
    """A fresh, unfitted bag-of-words pipeline: TF-IDF of word 1-2-grams, then logistic regression.

    The vectoriser is part of the pipeline, so its vocabulary and IDF weights are learned
    from the training fold only. ``C`` is chosen by an inner stratified CV on the training
    fold (ROC AUC; the vectoriser is refitted inside each inner fold too) where each class
    has at least 2 texts in the training fold, else ``C = 1``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), lowercase=True, sublinear_tf=True),
                             LogisticRegression(C=1.0, max_iter=5000))
    if inner_folds < 2:
        return pipeline
    return GridSearchCV(pipeline, {"logisticregression__C": list(BLIND_CS)}, scoring="roc_auc",
                        cv=StratifiedKFold(inner_folds, shuffle=True, random_state=seed))


def _check_folds(folds: int, labels: np.ndarray, *, source: str) -> None:
    check_int(folds, name="--folds", low=2)
    n_members = int(labels.sum())
    smallest = min(n_members, labels.size - n_members)
    if smallest < folds:
        raise InputDataError(
            f"{source}: {n_members} member(s) and {labels.size - n_members} non-member(s); "
            f"{folds}-fold cross-validation needs at least {folds} texts of each class. "
            f"Add labelled texts or pass a smaller --folds"
        )


def blind_baseline_scores(texts: Sequence[str], labels: Sequence[int], *, folds: int = 5,
                          seed: int = 0, source: str = "<texts>") -> np.ndarray:
    """Out-of-fold membership probabilities of a bag-of-words classifier that never sees the model.

    The texts are split by a seeded, shuffled ``StratifiedKFold(folds)``; for each fold a
    fresh pipeline (:func:`_blind_classifier`) is fitted on the other folds and predicts
    P(member) for the fold's texts. Every text is scored exactly once, by a model that did
    not see it. Deterministic for a given ``seed``.
    """
    from sklearn.model_selection import StratifiedKFold

    texts = list(texts)
    y = check_labels(labels, name=f"{source}: labels").astype(np.int64)
    if y.size != len(texts):
        raise InputDataError(f"{source}: {y.size} labels for {len(texts)} texts")
    _check_folds(folds, y, source=source)
    scores = np.full(len(texts), np.nan)
    splitter = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=seed)
    for fold, (train, test) in enumerate(splitter.split(np.zeros(len(texts)), y)):
        y_train = y[train]
        smallest = int(min(y_train.sum(), y_train.size - y_train.sum()))
        model = _blind_classifier(seed=seed + fold, inner_folds=min(3, smallest))
        model.fit([texts[i] for i in train], y_train)
        member_column = list(model.classes_).index(1)
        scores[test] = model.predict_proba([texts[i] for i in test])[:, member_column]
    assert not np.isnan(scores).any(), "every text is in exactly one test fold"
    return scores


def _feature_requests(features: str | Sequence[str] | None, *, reference: str | None,
                      model: str) -> list[FeatureRequest]:
    """The requested features; ``reference`` is dropped from ``all`` without --reference, refused if named."""
    if features is None or features == "all":
        names = known_features()
        if reference is None and "reference" in names:
            logger.info("the reference feature is left out: it needs a reference model other than the target; "
                        "pass --reference MODEL to include it")
            names = [n for n in names if n != "reference"]
        requests = parse_features(names)
    else:
        requests = parse_features(list(features) if not isinstance(features, str) else features)
        named = [r.column for r in requests if "reference" in r.needs]
        if named and reference is None:
            raise ConfigError(
                f"feature(s) {', '.join(named)} need a reference model other than the target; "
                "pass --reference MODEL (e.g. a smaller or older model with the same tokenizer), "
                "or leave them out of --features"
            )
    if reference is not None and reference == model and any("reference" in r.needs for r in requests):
        raise ConfigError(f"--reference {reference} is the target model itself, so the reference feature would "
                          "be 0 for every text; pass a different model")
    return requests


def run_pretraining_detection(
    *,
    model: str,
    data: str | Path,
    out: str | Path,
    settings: FeatureSettings = FeatureSettings(),
    reference: str | None = None,
    text_field: str = "text",
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
    folds: int = 5,
    trust_remote_code: bool = False,
    n_resamples: int = 1000,
) -> dict:
    """``shadowmia pretraining``: every feature of ``model`` as an attack on labelled texts, and a blind baseline.

    Parameters
    ----------
    model:
        The model whose pretraining data is in question (built-in name, directory, .gguf, hub id).
    data:
        Labelled texts (``label`` 1 = member of the pretraining data, 0 = non-member);
        both classes required, at least ``folds`` texts of each.
    out:
        Output directory (created): report files, ``features.parquet``, ``config.json``.
    settings:
        How features are computed, as for ``shadowmia features``: the feature spec (default
        ``all``; ``reference`` needs a ``reference`` model other than ``model``, and without
        one it is dropped from ``all``), how ``neighbour_gap``'s neighbours are made (by
        ``reference`` if given, else by ``model``, unless a masked LM is named), the token
        limit and the batch size.
    reference:
        Reference model for the ``reference`` feature (same tokenizer as ``model``).
    seed:
        Seed of the blind baseline's folds and of the report's bootstrap intervals.
    folds:
        Cross-validation folds of the blind baseline.

    Returns
    -------
    dict
        The content of ``report.json`` (``setting``, ``attacks``, ``best``); ``best`` is the
        model feature with the highest ROC AUC (the blind baseline is a yardstick, never "best").
    """
    from llm_features.models import resolve_device, resolve_dtype

    start = time.perf_counter()
    timings: dict[str, float] = {}
    # everything that can fail without a model fails here, before any model is loaded
    requests = _feature_requests(settings.features, reference=reference, model=model)
    columns = [r.column for r in requests]
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device=device)
    check_int(seed, name="--seed", low=0)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; give a directory for the report")
    texts = load_texts(data, text_field=text_field)
    if texts.labels is None:
        raise InputDataError(f"{texts.source}: no 'label' field; pretraining-data detection needs labelled texts "
                             "(label 1 = member of the pretraining data, 0 = non-member)")
    labels = np.asarray(texts.labels, dtype=np.int64)
    n_members = int(labels.sum())
    n_nonmembers = int(labels.size - n_members)
    if n_members == 0 or n_nonmembers == 0:
        raise InputDataError(f"{texts.source}: {n_members} member(s) and {n_nonmembers} non-member(s); "
                             "the labels must hold both classes (1 = member, 0 = non-member)")
    _check_folds(folds, labels, source=texts.source)
    check_kept_fields(texts, columns + ["n_tokens", BLIND_COLUMN])
    logger.info("%s: %d members, %d non-members; features: %s", texts.source, n_members, n_nonmembers,
                ", ".join(columns))
    timings["load_s"] = time.perf_counter() - start

    t = time.perf_counter()
    logger.info("blind baseline: bag-of-words logistic regression, %d-fold cross-validation", folds)
    blind = blind_baseline_scores(texts.texts, labels, folds=folds, seed=seed, source=texts.source)
    timings["blind_baseline_s"] = time.perf_counter() - t

    t = time.perf_counter()
    features_path = out_dir / "features.parquet"
    table = pd.read_parquet(features_job(
        model=model, data=str(data), out=str(features_path), reference=reference, text_field=text_field,
        settings=dataclasses.replace(settings, features=",".join(columns)), dtype=dtype, device=device,
        trust_remote_code=trust_remote_code))
    timings["features_s"] = time.perf_counter() - t
    if table["id"].tolist() != texts.ids:
        raise AssertionError("the feature table is not in the order of the texts")
    table[BLIND_COLUMN] = blind
    write_parquet_atomic(table, features_path)

    attacks: dict[str, np.ndarray] = {}
    nan_scores: dict[str, int] = {}
    for column in columns:
        scores = table[column].to_numpy(dtype=np.float64)
        missing = np.isnan(scores)
        if missing.any():
            # a feature undefined on a text (e.g. too short to score) cannot call it a member
            nan_scores[column] = int(missing.sum())
            logger.warning("feature %s is undefined on %d text(s); they get score -inf (least member-like)",
                           column, int(missing.sum()))
            scores = np.where(missing, -np.inf, scores)
        attacks[column] = scores
    blind_name = blind_baseline_name(folds)
    attacks[blind_name] = blind
    timings["total_s"] = time.perf_counter() - start

    setting: dict[str, Any] = {
        "task": "pretraining-data detection (no target or shadow training; each feature is an attack on its own)",
        "model": model,
        "reference_model": reference if reference is not None else "(none)",
        "data": str(data),
        "n_members": n_members,
        "n_nonmembers": n_nonmembers,
        "features": columns,
        "blind_baseline": BLIND_NOTE,
        "blind_baseline_model": {
            "vectoriser": "TfidfVectorizer(word 1-2-grams, lowercase, sublinear tf), fitted per training fold",
            "classifier": f"logistic regression, C chosen from {list(BLIND_CS)} by inner 3-fold CV (ROC AUC)",
            "folds": folds,
        },
        "scoring": {"max_tokens": settings.max_tokens, "batch_size": settings.batch_size, "dtype": dtype,
                    "device": device},
        "seeds": {"cross_validation_and_bootstrap": seed, "neighbours": settings.neighbour_seed},
        "undefined_scores_set_to_-inf": nan_scores,
        "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
    }
    if any("neighbours" in r.needs for r in requests):
        setting["neighbours"] = {"n": settings.neighbours, "fraction": settings.neighbour_fraction,
                                 "top_k": settings.neighbour_top_k,
                                 "made_by": settings.masked_lm or reference or model}
    config = {
        "command": "pretraining",
        "model": model, "reference": reference, "data": str(data), "out": str(out_dir),
        "features": columns, "text_field": text_field,
        "neighbours": settings.to_dict()["neighbours"],
        "max_tokens": settings.max_tokens, "batch_size": settings.batch_size, "dtype": dtype, "device": device,
        "seed": seed, "folds": folds, "trust_remote_code": trust_remote_code, "n_resamples": n_resamples,
        "library_versions": library_versions(),
    }
    write_json_atomic(out_dir / "config.json", config)

    from attack_models.metrics import roc_auc
    from experiments.report import write_report

    # the best *attack* is the best of the model's features: the blind baseline is the yardstick, not an attack
    best = max(columns, key=lambda c: roc_auc(labels, attacks[c]))
    report = write_report(out_dir, labels=labels, attacks=attacks, setting=setting, seed=seed, best=best,
                          n_resamples=n_resamples)
    blind_auc = report["attacks"][blind_name]["auc"]
    above = [n for n, s in report["attacks"].items() if n != blind_name and s["auc"] > blind_auc]
    logger.info("blind baseline AUC %.3f; attacks above it: %s", blind_auc, ", ".join(above) or "none")
    return report
