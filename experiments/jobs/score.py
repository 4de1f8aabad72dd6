"""``shadowmia score``: the membership probability of every candidate text under a target model.

The target (and the base, for the reference feature) score the candidates once; the
shadows of the attack score them once more for the calibrated inputs (LiRA, RMIA,
``token_lira``, the calibrated views), or their pool tables are read when every candidate
is in the shadow pool. The fitted classifier then gives the membership probability.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from attack_models.candidates import (
    CALIBRATION_STATISTIC,
    TOKEN_LIRA,
    WEIGHTED_TOKEN_LIRA,
    ShadowScores,
    TargetTokens,
    calibrated_scores,
    classifier_inputs,
)
from attack_models.token_calibration import TokenWeights
from experiments.jobs.attack import calibrated_inputs, load_fitted_attack, shadow_score_matrix
from experiments.jobs.common import check_kept_fields, check_output_path, make_neighbours
from experiments.jobs.shadows import FEATURES_DIR, SHADOW_TABLE, read_token_logprobs, token_path
from llm_features.cache import ModelSpec, ScoreCache, default_score_cache, score_texts_cached
from llm_features.errors import ConfigError, IncompatibleArtifactError, IntegrityError
from llm_features.extract import compute_features, needs_of, score_neighbours
from llm_features.io import atomic_path, sha256_file
from llm_features.registry import parse_features
from llm_features.settings import FeatureSettings
from llm_features.texts import TextSet, load_texts, texts_from_list

if TYPE_CHECKING:
    from llm_features.models import LoadedModel

logger = logging.getLogger(__name__)


SCORE_COLUMNS = ("n_tokens", "membership_probability", "lira_online", "lira_offline", "rmia_online",
                 "rmia_offline", "token_lira", "weighted_token_lira")


def score_job(*, attack: str, model: str, data: str, out: str, adapter: str | None = None,
              text_field: str = "text", dtype: str = "auto", device: str = "auto", seed: int = 0,
              trust_remote_code: bool = False, calibration: bool = True) -> dict[str, Any]:
    """``shadowmia score``: membership probability of every candidate text under a target model.

    Writes ``out`` (CSV) and returns ``{"out", "n", "table"}`` (the table written) and, with
    labelled candidates, ``"metrics"``.

    With ``calibration`` (the default) the candidates also get the per-text calibrated
    attacks that the same shadows allow: LiRA online and RMIA online when every candidate is
    in the shadow pool (read from the shadow table), else LiRA offline and RMIA offline from
    the shadows' own scores of the candidates (K more forward passes over the candidates;
    every shadow is an OUT model for a text outside its pool).
    """
    from llm_features.models import load_model, load_tokenizer, tokenizer_fingerprint

    out_path = check_output_path(out, suffix=".csv")
    fitted = load_fitted_attack(attack)
    meta = fitted.metadata
    candidates = load_texts(data, text_field=text_field)
    computed = [r.column for r in parse_features(meta["feature_settings"]["features"])]
    check_kept_fields(candidates, computed + fitted.feature_columns + list(SCORE_COLUMNS))
    target_tokenizer_hash = tokenizer_fingerprint(load_tokenizer(model, trust_remote_code=trust_remote_code))
    if target_tokenizer_hash != meta["tokenizer_hash"]:
        raise IncompatibleArtifactError(
            f"the target {model} has another tokenizer ({target_tokenizer_hash}) than the shadows' base "
            f"{meta['base_model']} ({meta['tokenizer_hash']}); the attack's features would not be comparable. "
            "Train shadows from the target's own base model")
    shadow_table = _verified_shadow_table(meta)
    in_pool = _pool_calibration(shadow_table, candidates, list(meta.get("calibrated_views", [])), meta)
    uses = calibrated_inputs(meta)
    if "lira_online" in uses and in_pool is None:
        raise ConfigError(
            "this attack uses LiRA online, which exists only for candidates in the shadow pool, and "
            f"{data} holds texts outside it (or the shadow table is gone); fit the attack with --calibrated offline")

    settings = FeatureSettings.from_dict(meta["feature_settings"])
    requests = parse_features(settings.features)
    target = load_model(model, adapter=adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    base = target if adapter is None and model == meta["base_model"] else load_model(meta["base_model"], dtype=dtype,
                                                                                    device=device)
    needs = needs_of(requests)
    cache = default_score_cache()
    target_scores = score_texts_cached(target, candidates.texts, cache=cache, batch_size=settings.batch_size,
                                       max_tokens=settings.max_tokens, description="scoring target")
    reference_scores = None
    if "reference" in needs:
        reference_scores = target_scores if base is target else score_texts_cached(
            base, candidates.texts, cache=cache, batch_size=settings.batch_size, max_tokens=settings.max_tokens,
            description="scoring base (reference)")
    neighbour_scores = None
    if "neighbours" in needs:
        neighbours = make_neighbours(candidates, generator=base, settings=settings, device=device)
        neighbour_scores = score_neighbours(target.model, target.tokenizer, neighbours,
                                            batch_size=settings.batch_size, max_tokens=settings.max_tokens)
    table = compute_features(candidates, requests, target_scores, reference_scores=reference_scores,
                             neighbour_scores=neighbour_scores)
    calibration_inputs = None
    target_tokens = None
    if calibration or uses:
        calibration_inputs = in_pool
        if in_pool is None and shadow_table is not None:
            calibration_inputs = _shadow_calibration(meta, candidates, settings, dtype=dtype, device=device,
                                                     cache=cache, reference_scores=reference_scores)
    if uses and calibration_inputs is None:
        raise IntegrityError(f"this attack uses {', '.join(uses)}, which needs the shadows in {meta['shadows_dir']}; "
                             "they are gone or incomplete")
    if calibration_inputs is not None:
        population = None
        if not calibration_inputs.online and meta.get("rmia_population") and shadow_table is not None:
            population = _rmia_population_scores(meta["rmia_population"], shadow_table, target, settings, cache=cache)
        if meta.get("token_lira") and calibration_inputs.token_logprobs is not None:
            weights = meta["token_lira"].get("weights")
            target_tokens = TargetTokens(logprobs=[np.asarray(t.token_logprobs, dtype=np.float64)
                                                   for t in target_scores],
                                         pooled_variance=float(meta["token_lira"]["pooled_variance"]),
                                         weights=None if weights is None else TokenWeights.from_list(weights))
        table = table.join(calibrated_scores(table, calibration_inputs, stds=meta.get("pooled_out_std"),
                                              population=population, target_tokens=target_tokens))
    unscored = _nothing_to_predict(table, out_path)
    probability = np.full(len(table), np.nan)
    if (~unscored).any():
        rows = table.loc[~unscored]
        subsets = _matched_subsets(meta, calibration_inputs)
        if subsets is None:
            probability[~unscored] = fitted.predict_proba(rows)
        else:
            logger.info("membership probability: the mean over %d subsets of the %d shadows, sized like the "
                        "training rows' references (matched-reference scoring)", len(subsets),
                        calibration_inputs.keep.shape[0])
            fixed = calibration_inputs.keep.shape[0] < 16
            probability[~unscored] = np.mean([
                fitted.predict_proba(rows.drop(columns=list(inputs.columns)).join(inputs.loc[~unscored]), quiet=True)
                for inputs in (classifier_inputs(table, calibration_inputs.subset(subset),
                                                 stds=meta.get("pooled_out_std"), fixed_variance=fixed,
                                                 target_tokens=target_tokens)
                               for subset in subsets)], axis=0)
    table.insert(1, "membership_probability", probability)
    table.loc[unscored, [c for c in SCORE_METRICS if c in table.columns]] = np.nan
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False)
    logger.info("wrote %s (%d candidates)", out_path, len(table))
    summary: dict[str, Any] = {"out": str(out_path), "n": len(table), "table": table}
    if candidates.labels is not None:
        metrics = _score_metrics(np.asarray(candidates.labels), table, seed=seed)
        if metrics:
            summary["metrics"] = metrics
    return summary


#: The score columns of ``shadowmia score``, by the name their metrics have in its summary.
SCORE_METRICS = {"membership_probability": "attack", "lira_online": "lira_online", "lira_offline": "lira_offline",
                 "rmia_online": "rmia_online", "rmia_offline": "rmia_offline", TOKEN_LIRA: TOKEN_LIRA,
                 WEIGHTED_TOKEN_LIRA: WEIGHTED_TOKEN_LIRA}


def _matched_subsets(meta: dict[str, Any], calibration: "ShadowScores | None") -> list[np.ndarray] | None:
    """The shadow subsets of matched-reference scoring, or None to predict once: for an attack
    with calibrated inputs fitted with ``reference_draws`` > 0, on offline candidates."""
    from attack_models.fusion import reference_subsets

    matched = meta.get("matched_references")
    if not matched or calibration is None or calibration.online or not calibrated_inputs(meta):
        return None
    counts = {int(k): int(v) for k, v in matched["out_reference_counts"].items()}
    return reference_subsets(counts, calibration.keep.shape[0], draws=int(matched["draws"]),
                             seed=int(meta.get("seed", 0)))


def _nothing_to_predict(table: pd.DataFrame, out_path: Path) -> np.ndarray:
    """Rows of texts with fewer than 2 tokens: their features are NaN, so they get no score (not an imputed one)."""
    unscored = (table["n_tokens"] < 2).to_numpy()
    if unscored.any():
        logger.warning("%d candidate(s) have fewer than 2 tokens, so nothing to predict: their scores are left empty "
                       "in %s (e.g. %s)", int(unscored.sum()), out_path, table.loc[unscored, "id"].head(3).tolist())
    return unscored


def _score_metrics(labels: np.ndarray, table: pd.DataFrame, *, seed: int) -> dict[str, Any]:
    """Metrics of each score column on the labelled candidates that have a score; a logged note for what is skipped."""
    from attack_models import summarize

    if len(set(labels.tolist())) < 2:
        logger.info("labels are all %d: no metrics (ROC AUC and TPR at low FPR need members and non-members)",
                    labels[0])
        return {}
    metrics: dict[str, Any] = {}
    for column, name in SCORE_METRICS.items():
        if column not in table.columns:
            continue
        scores = table[column].to_numpy(dtype=np.float64)
        scored = ~np.isnan(scores)
        if not scored.all():
            logger.info("%s metrics skip %d candidate(s) without a score", name, int((~scored).sum()))
        if len(set(labels[scored].tolist())) < 2:
            logger.info("%s: the labels of the scored candidates are all one class: no metrics", name)
            continue
        metrics[name] = summarize(labels[scored], scores[scored], seed=seed)
    _warn_when_beaten(metrics)
    return metrics


def _warn_when_beaten(metrics: dict[str, Any]) -> None:
    """Say so when a calibrated column beats the membership probability beyond its 95% interval."""
    attack = metrics.get("attack")
    if attack is None:
        return
    for name, other in metrics.items():
        if name != "attack" and other["auc_ci_low"] > attack["auc"]:
            logger.warning("%s (ROC AUC %.3f, 95%% interval from %.3f) beats the membership probability (ROC AUC "
                           "%.3f) on these candidates; refit with `shadowmia fit-attack --calibrated offline` (the "
                           "default) so that the classifier takes it as a feature", name, other["auc"],
                           other["auc_ci_low"], attack["auc"])


def _verified_shadow_table(meta: dict[str, Any]) -> pd.DataFrame | None:
    path = Path(meta["shadows_dir"]) / FEATURES_DIR / SHADOW_TABLE
    if not path.is_file():
        logger.warning("the shadow table %s is gone: no LiRA/RMIA scores", path)
        return None
    if sha256_file(path) != meta["shadow_table_sha256"]:
        raise IntegrityError(f"{path} changed since the attack was fitted (SHA-256 differs); refit the attack")
    return pd.read_parquet(path)


def _pool_calibration(shadow_table: pd.DataFrame | None, candidates: TextSet,
                      views: list[str], meta: dict[str, Any]) -> ShadowScores | None:
    """The shadows' statistics of the candidates from the shadow table, or None unless all are in the pool."""
    if shadow_table is None or CALIBRATION_STATISTIC not in shadow_table.columns:
        return None
    scores, keep, ids = shadow_score_matrix(shadow_table, CALIBRATION_STATISTIC)
    position = {identifier: i for i, identifier in enumerate(ids)}
    outside = sum(i not in position for i in candidates.ids)
    if outside:
        logger.info("%d of %d candidates are not in the shadow pool", outside, len(candidates))
        return None
    columns = [position[i] for i in candidates.ids]
    features = {view: shadow_score_matrix(shadow_table, view)[0][:, columns] for view in views}
    tokens = None
    if meta.get("token_lira"):
        features_dir = Path(meta["shadows_dir"]) / FEATURES_DIR
        paths = [token_path(features_dir, k) for k in sorted(shadow_table["shadow"].unique())]
        recorded = meta["token_lira"].get("files_sha256", {})
        for path in paths:
            if not path.is_file() or sha256_file(path) != recorded.get(path.name):
                raise IntegrityError(f"{path} is gone or changed since the attack was fitted; refit the attack")
        tokens = [read_token_logprobs(path, candidates.ids) for path in paths]
    return ShadowScores(scores=scores[:, columns], keep=keep[:, columns], features=features, token_logprobs=tokens)


def _shadow_calibration(meta: dict[str, Any], candidates: TextSet, settings: FeatureSettings, *, dtype: str,
                        device: str, cache: ScoreCache | None, reference_scores: Any = None) -> ShadowScores | None:
    """Each shadow's statistic (and calibrated features) of each candidate, by scoring the
    candidates with every shadow through ``cache`` (``reference_scores``: the base's, for
    features that need them).

    A candidate outside the pool was trained on by no shadow (keep = False); a candidate in
    the pool keeps its row of the membership matrix.
    """
    from shadow.adapter import verify_adapter
    from shadow.membership import load_membership
    from shadow.shadows import shadow_dirs

    shadows_dir = Path(meta["shadows_dir"])
    if not (shadows_dir / "config.json").is_file():
        logger.warning("the shadows %s are gone: no LiRA/RMIA scores", shadows_dir)
        return None
    pool_keep, pool_ids = load_membership(shadows_dir)
    position = {identifier: i for i, identifier in enumerate(pool_ids)}
    directories = shadow_dirs(shadows_dir)
    keep = np.zeros((len(directories), len(candidates)), dtype=bool)
    for i, identifier in enumerate(candidates.ids):
        if identifier in position:
            keep[:, i] = pool_keep[:, position[identifier]]
    views = list(meta.get("calibrated_views", []))
    requests = [r for r in parse_features(settings.features) if r.column in views or r.column == CALIBRATION_STATISTIC]
    recorded = meta.get("shadow_manifests")
    if recorded is not None and sorted(recorded) != [d.name for d in directories]:
        raise IntegrityError(f"{shadows_dir} holds the shadows {[d.name for d in directories]}, but the attack was "
                             f"fitted on {sorted(recorded)}; refit the attack")
    manifests = []
    for directory in directories:
        verify_adapter(directory)
        manifests.append(sha256_file(directory / "manifest.json"))
        if recorded is not None and manifests[-1] != recorded[directory.name]:
            raise IntegrityError(f"{directory} changed since the attack was fitted (its manifest's SHA-256 differs: "
                                 "retrained or edited); its scores would not match the shadow table. Refit the attack")
    scores = np.empty(keep.shape, dtype=np.float64)
    features = {view: np.empty(keep.shape, dtype=np.float64) for view in views}
    tokens: list[list[np.ndarray]] | None = [] if meta.get("token_lira") else None
    logger.info("scoring the %d candidates with each of the %d shadows (for LiRA/RMIA offline)", len(candidates),
                len(directories))
    for k, directory in enumerate(directories):
        shadow = ModelSpec(meta["base_model"], adapter=str(directory), dtype=dtype, device=device)
        token_scores = score_texts_cached(shadow, candidates.texts, cache=cache, batch_size=settings.batch_size,
                                          max_tokens=settings.max_tokens, description=f"candidates, shadow {k}")
        values = compute_features(candidates, requests, token_scores, reference_scores=reference_scores)
        scores[k] = values[CALIBRATION_STATISTIC].to_numpy()
        for view in views:
            features[view][k] = values[view].to_numpy()
        if tokens is not None:
            tokens.append([np.asarray(t.token_logprobs, dtype=np.float64) for t in token_scores])
    return ShadowScores(scores=scores, keep=keep, features=features, token_logprobs=tokens)


def _rmia_population_scores(population: dict[str, list[str]], shadow_table: pd.DataFrame, target: LoadedModel,
                            settings: FeatureSettings, *, cache: ScoreCache | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMIA's population: the target's log-likelihood of each population text (one more pass
    over them), the shadows' from the shadow table, and which shadows trained on each."""
    texts = texts_from_list(population["texts"])
    if texts.ids != population["ids"]:
        raise IntegrityError("the attack's RMIA population texts do not match their ids; refit the attack")
    token_scores = score_texts_cached(target, texts.texts, cache=cache, batch_size=settings.batch_size,
                                      max_tokens=settings.max_tokens, description="RMIA population, target")
    target_ll = compute_features(texts, parse_features(CALIBRATION_STATISTIC), token_scores)[
        CALIBRATION_STATISTIC].to_numpy(dtype=np.float64)
    scores, keep, ids = shadow_score_matrix(shadow_table, CALIBRATION_STATISTIC)
    columns = pd.Index(ids).get_indexer(population["ids"])
    if (columns < 0).any():
        raise IntegrityError("the attack's RMIA population is not in the shadow table; refit the attack")
    target_ll = np.where(np.isnan(target_ll), np.nanmedian(target_ll), target_ll)
    return target_ll, scores[:, columns], keep[:, columns]


