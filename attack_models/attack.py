"""The fitted attack: one object from ``fit-attack`` to ``score``.

:func:`fit_attack` compares the attack classifiers leave-one-shadow-out on a shadow feature
table (:mod:`attack_models.selection`), fits the chosen one on every shadow row, and returns
a :class:`FittedAttack`: the estimator, its feature columns, the medians that fill NaN
inputs, and the metadata that says how to compute those inputs on a target (feature
settings, calibration inputs, provenance). ``attack.predict_proba(table)`` gives the
membership probability of each row; ``attack.save(directory)`` and
``FittedAttack.load(directory)`` go through the verified persistence of
:mod:`attack_models.persistence` (SHA-256 of every file, an allowlist of the types a
model file may hold: loading a pickle runs code, so nothing else is unpickled).

    attack, results = fit_attack(table, feature_columns=["loss", "lira_offline"], classifier="auto")
    attack.save("runs/x/attack")
    probability = FittedAttack.load("runs/x/attack").predict_proba(target_table)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from llm_features.errors import ConfigError, IntegrityError

__all__ = ["FittedAttack", "fit_attack"]


@dataclasses.dataclass(frozen=True)
class FittedAttack:
    """A fitted attack classifier and what it needs to score a target.

    Attributes:
        estimator: the fitted classifier (scikit-learn contract).
        feature_columns: its inputs, in order.
        nan_medians: the shadow rows' median of each input, which fills a NaN input.
        selected: the classifier's registry name (:data:`attack_models.CLASSIFIERS`).
        metadata: everything else recorded with it (feature settings, calibration inputs,
            leave-one-shadow-out results, provenance); JSON-ready.
    """

    estimator: Any
    feature_columns: list[str]
    nan_medians: dict[str, float]
    selected: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def predict_proba(self, table: pd.DataFrame, *, quiet: bool = False) -> np.ndarray:
        """P(member) of every row of ``table`` (which holds :attr:`feature_columns`); a NaN
        input is filled with the shadows' median (:func:`attack_models.impute_nan`, which
        refuses a column it has no median for), logged unless ``quiet``."""
        from attack_models.classifiers import impute_nan

        filled, _ = impute_nan(table, self.feature_columns, medians=self.nan_medians, quiet=quiet)
        return self.estimator.predict_proba(filled[self.feature_columns])[:, 1]

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the attack to ``directory`` (model file + manifest with every file's SHA-256)."""
        from attack_models.persistence import save_attack

        metadata = {**self.metadata, "feature_columns": list(self.feature_columns),
                    "nan_medians": {k: float(v) for k, v in self.nan_medians.items()}, "selected": self.selected}
        return save_attack(directory, self.estimator, feature_names=list(self.feature_columns), metadata=metadata,
                           overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "FittedAttack":
        """The attack :meth:`save` wrote, verified (IntegrityError if a file or the manifest
        changed, or the manifest lacks what :meth:`predict_proba` needs)."""
        from attack_models.persistence import load_attack

        estimator, manifest = load_attack(directory)
        where = Path(directory) / "manifest.json"
        metadata = dict(manifest.get("metadata") or {})
        columns = list(manifest["feature_names"])
        if metadata.get("feature_columns", columns) != columns:
            raise IntegrityError(f"{where}: metadata.feature_columns {metadata['feature_columns']} differ from the "
                                 f"feature names {columns}; re-fit the attack")
        medians = metadata.pop("nan_medians", None)
        if not isinstance(medians, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in medians.values()):
            raise IntegrityError(f"{where}: metadata.nan_medians must map features to numbers; re-fit the attack")
        metadata.pop("feature_columns", None)
        selected = str(metadata.pop("selected", manifest.get("classifier", "")))
        return cls(estimator=estimator, feature_columns=columns, nan_medians={k: float(v) for k, v in medians.items()},
                   selected=selected, metadata=metadata)


def fit_attack(table: pd.DataFrame, *, feature_columns: Sequence[str], classifier: str = "auto",
               random_state: int = 0, fold_table: Callable[[int], pd.DataFrame] | None = None,
               metadata: dict[str, Any] | None = None) -> tuple[FittedAttack, pd.DataFrame]:
    """Choose and fit the attack classifier on shadow rows (columns ``shadow``, ``label`` and
    ``feature_columns``, NaN allowed).

    With ``classifier="auto"`` every registered classifier is compared leave-one-shadow-out
    (:func:`attack_models.leave_one_shadow_out`, ``fold_table(h)`` giving the training table
    of the fold that holds out shadow h when the inputs are themselves computed against the
    shadows) and :func:`attack_models.select_best` chooses; a named classifier is evaluated
    the same way and kept. NaN inputs are filled with the medians of ``table``.

    Returns the fitted attack and the leave-one-shadow-out results (one row per classifier).
    """
    from attack_models.classifiers import CLASSIFIERS, impute_nan, make_classifier
    from attack_models.selection import leave_one_shadow_out, select_best

    if classifier != "auto" and classifier not in CLASSIFIERS:
        raise ConfigError(f"--classifier {classifier!r}: allowed are auto, {', '.join(CLASSIFIERS)}")
    columns = list(feature_columns)
    filled, medians = impute_nan(table, columns)

    def filled_fold(held_out: int) -> pd.DataFrame:
        return impute_nan(fold_table(held_out), columns, medians=medians)[0]

    names = list(CLASSIFIERS) if classifier == "auto" else [classifier]
    results = leave_one_shadow_out(filled, feature_columns=columns, classifier_names=names,
                                   random_state=random_state, fold_table=filled_fold if fold_table else None)
    chosen = select_best(results) if classifier == "auto" else classifier
    estimator = make_classifier(chosen, random_state=random_state).fit(filled[columns],
                                                                       filled["label"].to_numpy())
    return FittedAttack(estimator=estimator, feature_columns=columns, nan_medians=medians, selected=chosen,
                        metadata=dict(metadata or {})), results
