"""Is there membership evidence in the shadows' token log-probabilities beyond ``token_lira``?

A study on a finished run's shadows only (no target, no target labels): every shadow in
turn plays the target (leave-one-shadow-out), its pool texts' membership is the truth, and
the other shadows are the attacker's. For each text the per-token z-scores against the
OUT shadows (:mod:`attack_models.token_calibration`, nested: a training row never sees the
held-out shadow) are summarised in several ways, and a classifier trained on the other
shadows' rows combines them. If a combination beat ``token_lira`` here, the attack
classifier would have the inputs to beat it on a target; if none does, the token
log-probabilities of 8 shadows hold no evidence that ``token_lira`` leaves unused.

    python -m experiments.studies.token_evidence runs/arxiv-hard
    python -m experiments.studies.token_evidence runs/agnews-hard --features neighbour_gap,error_zone
    python -m experiments.studies.token_evidence runs/k16 --shadows 0:8     # the first 8 of 16 shadows

With ``--shadows START:STOP``, only those shadows of the run take part (they play the target
and the attacker in turn, the others are ignored): the same pool and trainings at fewer
shadows, to see whether a classifier gains on ``weighted_token_lira`` as the shadows grow.
A subset of a balanced design is not balanced per text (a text may be IN for more or fewer
than half of it), which the calibrations handle as they handle any OUT count.

With ``--features``, the calibrated views ``cal_<feature>`` of those columns of the shadow
table (:mod:`attack_models.fusion`, nested the same way) are evaluated alone and added to
the classifiers' inputs: evidence of another kind than the token log-probs (the
neighbour texts, the target's whole next-token distribution), measured the same way.

Summaries of z_t (per text): the clipped mean at clips 1, 2, 3 (= ``token_lira``) and 5;
the 10/50/90% quantiles; the share of tokens with z > 2 and z < -2; the clipped mean within
five bins of the OUT shadows' mean log-prob (how predictable the token is); and
``weighted_token_lira``, whose token weights are learned on the other shadows' rows
(:func:`attack_models.token_calibration.weighted_token_lira_rows`). Reported: ROC AUC and
TPR at 1% FPR, the mean over the folds; and against ``weighted_token_lira`` fold by fold, the
mean difference of TPR@1%FPR and the number of folds where it is above (:func:`against_weighted`).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from attack_models.token_calibration import CLIP, PRIOR_WEIGHT
from experiments.cli import run_reporting_errors
from llm_features.errors import InputDataError

logger = logging.getLogger(__name__)

#: Edges of the predictability bins, in nats of the OUT shadows' mean token log-prob.
BIN_EDGES = (-np.inf, -6.0, -3.0, -1.0, -0.2, np.inf)


def _logistic():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _xgboost():
    import xgboost

    return xgboost.XGBClassifier(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8, n_jobs=2,
                                 random_state=0)


#: The classifiers that combine the summaries, each fitted on the other shadows' rows.
CLASSIFIERS = {"logistic": _logistic, "xgboost": _xgboost}


def padded_logprobs(shadows_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``X[K, N, T]`` token log-probs of every shadow (0 past a text's end), ``mask[N, T]``, ``keep[K, N]``."""
    from experiments.jobs.shadows import FEATURES_DIR, read_token_logprobs, token_path
    from shadow.membership import load_membership

    keep, ids = load_membership(shadows_dir)
    ragged = [read_token_logprobs(token_path(shadows_dir / FEATURES_DIR, k), ids) for k in range(keep.shape[0])]
    X, mask = pad_ragged(ragged)
    return X, mask, keep.astype(bool)


def pad_ragged(ragged: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``X[K, N, T]`` from K models' per-text token arrays (0 past a text's end) and ``mask[N, T]``;
    every model must have the same token count per text."""
    lengths = np.array([len(x) for x in ragged[0]])
    if any([len(x) for x in texts] != lengths.tolist() for texts in ragged[1:]):
        raise InputDataError("the models' token arrays cover different tokens of the texts; score them with the "
                             "same tokenizer and max_tokens")
    mask = np.arange(lengths.max())[None, :] < lengths[:, None]
    X = np.zeros((len(ragged), *mask.shape))
    for k, texts in enumerate(ragged):
        X[k][mask] = np.concatenate(texts)
    return X, mask


def pooled_variance(X: np.ndarray, keep: np.ndarray, mask: np.ndarray, excluded: set[int]) -> float:
    """The mean over tokens of the OUT shadows' sample variance of ``X`` (shadows in ``excluded``
    left out; tokens with fewer than two OUT shadows not counted): the prior of :func:`z_scores`."""
    weights = (~keep).astype(float)
    weights[list(excluded)] = 0.0
    w = weights[:, :, None]
    m = w.sum(axis=0)
    mean = (w * X).sum(axis=0) / np.maximum(m, 1)
    variance = (w * (X - mean) ** 2).sum(axis=0) / np.maximum(m - 1, 1)
    return float(variance[(m >= 2) & mask].mean())


def chosen_logprobs(shadows_dir: Path, shadows: slice | None) -> tuple[np.ndarray, ...]:
    """:func:`padded_logprobs` of the ``shadows`` of the run (all by default) and their indices
    in the run; fewer than 4 is a one-line error (one plays the target; a training row needs
    two more to calibrate and learn the token weights)."""
    X, mask, keep = padded_logprobs(shadows_dir)
    chosen = np.arange(keep.shape[0])[shadows or slice(None)]
    if len(chosen) < 4:
        subset = f"--shadows {shadows.start}:{shadows.stop}: " if shadows else ""
        raise InputDataError(f"{subset}{len(chosen)} of the run's {keep.shape[0]} shadows; the study needs at least 4 "
                             "(one plays the target; a training row needs two more to calibrate and learn the token "
                             "weights)")
    return X[chosen], mask, keep[chosen], chosen


def z_scores(X: np.ndarray, keep: np.ndarray, row: int, excluded: set[int], pooled: float) -> tuple[np.ndarray, ...]:
    """Shadow ``row``'s per-token z against the shadows OUT of each text, less ``excluded``
    (the formula of :func:`attack_models.token_calibration.token_lira`), and the OUT mean;
    NaN for a text without an OUT shadow among them (as ``token_lira`` leaves it unscored)."""
    weights = (~keep).astype(float)
    weights[[row, *excluded]] = 0.0
    w = weights[:, :, None]
    m = w.sum(axis=0)
    mean = (w * X).sum(axis=0) / np.maximum(m, 1)
    sample = (w * (X - mean) ** 2).sum(axis=0) / np.maximum(m - 1, 1)
    variance = ((m - 1) * sample + PRIOR_WEIGHT * pooled) / (m - 1 + PRIOR_WEIGHT)
    return np.where(m > 0, (X[row] - mean) / np.sqrt(variance), np.nan), mean


def summaries(z: np.ndarray, out_mean: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    """Per-text summaries of the token z-scores (see the module docstring)."""
    n = mask.sum(axis=1)
    columns = {f"clipped_mean_{c:g}": (np.clip(z, -c, c) * mask).sum(axis=1) / n for c in (1, 2, CLIP, 5)}
    masked = np.where(mask, z, np.nan)
    with warnings.catch_warnings():  # an unscored text (all NaN) has NaN quantiles, said by its NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        columns.update({f"z_q{q}": np.nanpercentile(masked, q, axis=1) for q in (10, 50, 90)})
    columns["share_z_above_2"] = ((z > 2) & mask).sum(axis=1) / n
    columns["share_z_below_-2"] = ((z < -2) & mask).sum(axis=1) / n
    clipped = np.clip(z, -CLIP, CLIP)
    for b in range(len(BIN_EDGES) - 1):
        inside = mask & (out_mean > BIN_EDGES[b]) & (out_mean <= BIN_EDGES[b + 1])
        count = inside.sum(axis=1)
        columns[f"bin{b}_clipped_mean"] = np.where(count > 0, (clipped * inside).sum(axis=1) / np.maximum(count, 1), 0.)
    unscored = np.isnan(z).all(axis=1)
    return pd.DataFrame(columns).mask(pd.Series(unscored), axis=0)


def shadow_table_columns(shadows_dir: Path, features: list[str]) -> pd.DataFrame:
    """The shadow table (``shadow``, ``id``, ``label`` and ``features``), refusing a column it lacks."""
    from experiments.jobs.shadows import load_shadow_table

    table = load_shadow_table(shadows_dir)[0]
    missing = sorted(set(features) - set(table.columns))
    if missing:
        raise InputDataError(f"--features {','.join(missing)}: not a column of {shadows_dir}/features/shadows.parquet "
                             f"(its features: {', '.join(c for c in table.columns if c not in ('shadow', 'id', 'label'))})")
    return table[["shadow", "id", "label", *features]]


def calibrated_views(table: pd.DataFrame, features: list[str], ids: list[str], held_out: int) -> pd.DataFrame:
    """``cal_<feature>[K * N]`` of the shadow ``table`` (rows shadow-major in ``ids`` order) for
    the fold that holds out shadow ``held_out``: its rows against all the other shadows, the
    other rows without it."""
    from attack_models.fusion import calibrate_shadow_table, calibrated_column

    table = calibrate_shadow_table(table, features, held_out=held_out)
    columns = [calibrated_column(f) for f in features]
    wide = {c: table.pivot(index="shadow", columns="id", values=c)[ids] for c in columns}
    return pd.DataFrame({c: frame.to_numpy(dtype=np.float64).ravel() for c, frame in wide.items()})


def study(shadows_dir: Path, features: list[str] | None = None, shadows: slice | None = None) -> pd.DataFrame:
    """Mean leave-one-shadow-out AUC and TPR@1%FPR of every summary, of the calibrated views
    of ``features`` and of classifiers on them (with and without ``weighted_token_lira`` as an
    input), among the ``shadows`` of the run (all by default); each against
    ``weighted_token_lira`` fold by fold."""
    from attack_models.metrics import roc_auc, tpr_at_fpr
    from attack_models.token_calibration import pooled_token_variance, weighted_token_lira_rows
    from shadow.membership import load_membership

    features = list(features or [])
    table = shadow_table_columns(shadows_dir, features) if features else None  # a wrong name fails first
    X, mask, keep, chosen = chosen_logprobs(shadows_dir, shadows)
    if table is not None:
        table = table[table["shadow"].isin(chosen)].assign(
            shadow=lambda t: t["shadow"].map({int(s): i for i, s in enumerate(chosen)}))
    K, N = keep.shape
    ids = load_membership(shadows_dir)[1]
    ragged = [[X[k, i, mask[i]] for i in range(mask.shape[0])] for k in range(K)]
    ragged_pooled = pooled_token_variance(ragged, keep)

    scores: dict[str, list[tuple[float, float]]] = {}
    for held_out in range(K):
        labels = keep[held_out].astype(int)
        test = summaries(*z_scores(X, keep, held_out, set(), pooled_variance(X, keep, mask, set())), mask)
        fold_pooled = pooled_variance(X, keep, mask, {held_out})
        train = pd.concat([summaries(*z_scores(X, keep, k, {held_out}, fold_pooled), mask).assign(label=keep[k])
                           for k in range(K) if k != held_out])
        scored = test["clipped_mean_3"].notna().to_numpy()  # a text with an OUT reference shadow
        trainable = train["clipped_mean_3"].notna().to_numpy()
        summary_columns = list(test.columns)
        if features:
            views = calibrated_views(table, features, ids, held_out)
            shadow_of_row = np.repeat(np.arange(K), N)
            test = pd.concat([test, views[shadow_of_row == held_out].reset_index(drop=True)], axis=1)
            train = pd.concat([train.reset_index(drop=True),
                               views[shadow_of_row != held_out].reset_index(drop=True)], axis=1)
        predictions = {column: test[column].to_numpy() for column in test.columns}
        weighted = weighted_token_lira_rows(ragged, keep, pooled_variance=ragged_pooled, held_out=held_out)
        predictions["weighted_token_lira"] = weighted[held_out]
        test["weighted_token_lira"] = weighted[held_out]
        train["weighted_token_lira"] = np.concatenate([weighted[k] for k in range(K) if k != held_out])
        inputs = {"all summaries": summary_columns,
                  "weighted_token_lira + all summaries": ["weighted_token_lira", *summary_columns]}
        if features:
            view_columns = [c for c in test.columns if c not in summary_columns and c != "weighted_token_lira"]
            inputs["clipped_mean_3 + views"] = ["clipped_mean_3", *view_columns]
            inputs["all summaries + views"] = [*summary_columns, *view_columns]
            inputs["weighted_token_lira + all summaries + views"] = ["weighted_token_lira", *summary_columns,
                                                                     *view_columns]
        for (what, columns), (name, make) in itertools.product(inputs.items(), CLASSIFIERS.items()):
            # rows without an OUT reference are left out of training; an unscored test text (NaN
            # summaries, not evaluated) and a NaN in a calibrated view are fed as 0
            model = make().fit(np.nan_to_num(train[columns].to_numpy()[trainable]),
                               train["label"].to_numpy()[trainable].astype(int))
            predictions[f"{name} on {what}"] = model.predict_proba(np.nan_to_num(test[columns].to_numpy()))[:, 1]
        for name, values in predictions.items():
            scores.setdefault(name, []).append((roc_auc(labels[scored], values[scored]),
                                                tpr_at_fpr(labels[scored], values[scored], fpr=0.01)))
        logger.info("fold %d of %d", held_out + 1, K)
    return against_weighted(scores, "summary")


def against_weighted(scores: dict[str, list[tuple[float, float]]], name_column: str) -> pd.DataFrame:
    """The table of a study: per variant, ``(AUC, TPR@1%FPR)`` of each fold (or half) in
    ``scores`` -> their means, the mean of TPR@1% minus ``weighted_token_lira``'s in the same
    fold (``minus_weighted``), the folds where it is higher (``above``) and the folds (``of``);
    best TPR@1% first."""
    baseline = np.array([s[1] for s in scores["weighted_token_lira"]])
    rows = []
    for name, values in scores.items():
        auc, tpr = np.array(values).T
        rows.append({name_column: name, "auc": float(auc.mean()), "tpr_at_1%fpr": float(tpr.mean()),
                     "minus_weighted": float((tpr - baseline).mean()), "above": int((tpr > baseline).sum()),
                     "of": len(values)})
    return pd.DataFrame(rows).sort_values("tpr_at_1%fpr", ascending=False, ignore_index=True)


def parse_slice(text: str | None) -> slice | None:
    """``"0:8"`` -> ``slice(0, 8)``; None stays None; anything else is a one-line error."""
    if text is None:
        return None
    try:
        start, stop = (int(part) if part else None for part in text.split(":"))
    except ValueError:
        raise InputDataError(f"--shadows {text!r}: expected START:STOP, two shadow indices such as 0:8") from None
    return slice(start, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (with shadows/) or a shadow directory")
    parser.add_argument("--features", default="",
                        help="comma-separated columns of the shadow table whose calibrated views are added")
    parser.add_argument("--shadows", default=None, metavar="START:STOP",
                        help="only these shadows of the run (a Python slice of their indices, e.g. 0:8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reporting_errors("experiments.studies.token_evidence", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    root = Path(args.run)
    shadows_dir = root / "shadows" if (root / "shadows").is_dir() else root
    table = study(shadows_dir, [f for f in args.features.split(",") if f], parse_slice(args.shadows))
    logger.info("what the shadows' token log-probs add, by summary (mean over folds):\n%s",
                table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
