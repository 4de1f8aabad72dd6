"""A privacy audit of DP LoRA fine-tuning: ``shadowmia run experiments/configs/audit.toml``.

The experiment of Steinke, Nasr and Jagielski (2023, "Privacy Auditing with One (1) Training
Run"), one training run per epsilon:

1. ``audit.canaries`` canaries that the base model has never seen, built as
   ``audit.canary_design`` says (:mod:`experiments.data.canaries`: synthetic patient records,
   random-token sequences, or records ending in the base model's least likely token); each
   is included in the training set with probability 1/2 (seeded by ``audit.canary_seed``),
   as ``audit.canary_repeats`` copies; ``audit.fillers`` other texts from ``[data]``
   complete the training set;
2. one target per epsilon in ``audit.epsilons``, fine-tuned as ``[target]`` says with
   DP-SGD at that epsilon (``inf``: without DP), all on the same training set;
3. the attack statistic fixed in advance scores every canary under each target: the feature
   named by ``audit.statistic``, or, with ``"auto"`` (the default), the one chosen *before*
   the audit on a separate calibration target (:func:`choose_statistic`): a fine-tune with
   the same recipe at the largest of ``audit.epsilons`` (``inf`` when there), on an
   independent canary draw (seed :func:`calibration_seed`, the first child of
   ``SeedSequence(canary_seed)``, with its own coin flips) and the same fillers. Every
   feature of ``audit.features`` scores the calibration canaries; the one whose guesses
   reject the largest mu of Gaussian DP (mu_LB of the f-DP one-run bound) is the statistic,
   ties to the larger calibration AUC, then to the earlier feature. The audited canaries
   and their coins are never read for the choice, so the bounds stay valid. (The shadow
   classifier is not a candidate: it needs shadow fine-tunes, each as costly as a target,
   which the audit does not train.)
   The calibration target is trained once and reused on a rerun (``targets/calibration``).
   With ``audit.calibrate = "each"`` there is one per epsilon (``targets/calibration_eps_8``,
   ...; the same calibration draw, each trained at its target's epsilon), and each chooses
   its target's statistic and the one (k+, k-) pair of guesses that target is tested at
   (:func:`calibrated_guesses`), since a DP target's scores have another shape than a
   non-private one's.
   The features that compare the target with a reference model (``reference``,
   ``suffix_ratio``, ``error_zone``) use the base model, or with ``audit.reference =
   "other-canaries"`` a fine-tune per epsilon with the target's recipe on a third canary
   draw (:func:`reference_seed`, ``targets/reference_eps_*``), which never saw the audited or
   the calibration canaries;
4. epsilon lower bounds from the scores and the inclusion labels
   (:mod:`attack_models.privacy_bounds`): the one-run bound, valid for one training run with
   many canaries; the f-DP one-run bound (Mahloujifar, Melis & Chaudhuri 2025) on the same
   guesses, which rejects Gaussian DP curves (mu_LB) and reports the epsilon at the audit's
   delta of the strongest one rejected (valid for a Gaussian-shaped privacy curve, as
   DP-SGD's nearly is); and the classic bound, which treats the canaries as independent
   trials (a heuristic here; see that module);
5. ``report/``: ``audit.json``, ``audit.md`` (a table of epsilon_theory, the accountant's
   epsilon, and the PRV accountant's for the same steps, against the three lower bounds and each
   feature's AUC; the precision each target was trained in; any (epsilon, delta) bound above the
   smaller accountant epsilon, flagged as a bug; with ``"auto"``, the calibration target's mu_LB
   and AUC per feature and the statistic chosen) and ``epsilon.png``.

Every target is resumable (skipped when it verifies with the same settings), and every
forward pass (each target's, each reference's, the base model's) goes through the score cache
(:mod:`llm_features.cache`), so a rerun or a resumed audit scores nothing twice. The true
epsilon of each training lies in [epsilon_LB, epsilon_theory] with the stated confidence.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.studies.config import AuditExperimentConfig, config_hash
from llm_features.errors import ConfigError, InputDataError
from llm_features.io import atomic_path, library_versions, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


def canary_records(config: AuditExperimentConfig, *, base: Any = None,
                   seed: int | None = None) -> tuple[list[str], np.ndarray]:
    """The canary texts and whether each is included (a fair coin per canary, seeded).

    The texts are ``audit.canary_design``'s (:func:`experiments.data.canaries.make_canaries`),
    drawn with ``seed`` (default ``audit.canary_seed``; the calibration canaries use
    :func:`calibration_seed`), and the coins with ``numpy.random.default_rng([seed, 1])``.
    A design that needs the base model's tokenizer or the model itself takes them from
    ``base`` (a :class:`~llm_features.models.LoadedModel`), or loads them when ``base`` is None.
    """
    from experiments.data.canaries import DESIGN_NEEDS, make_canaries

    audit = config.audit
    seed = audit.canary_seed if seed is None else seed
    needs = DESIGN_NEEDS[audit.canary_design]
    tokenizer = model = None
    if needs is not None and base is not None:
        tokenizer, model = base.tokenizer, base.model
    elif needs == "tokenizer":
        from llm_features.models import load_tokenizer

        tokenizer = load_tokenizer(config.base_model)
    elif needs == "model":
        from llm_features.models import load_model

        loaded = load_model(config.base_model)
        tokenizer, model = loaded.tokenizer, loaded.model
    texts = make_canaries(audit.canary_design, audit.canaries, seed=seed, length=audit.canary_tokens,
                          max_tokens=config.target.max_tokens, prefix_tokens=audit.canary_prefix_tokens,
                          tokenizer=tokenizer, model=model)
    included = np.random.default_rng([seed, 1]).random(audit.canaries) < 0.5
    return texts, included


def calibration_seed(canary_seed: int) -> int:
    """The seed of the calibration canaries and their coins: the first child of
    ``numpy.random.SeedSequence(canary_seed)``, as a 32-bit integer.

    A spawned child's stream is independent of its parent's by construction (NumPy's
    ``SeedSequence`` mixes the spawn key into the entropy), so the calibration canaries and
    coin flips share nothing with the audited ones drawn from ``canary_seed``.
    """
    return int(np.random.SeedSequence(canary_seed).spawn(1)[0].generate_state(1)[0])


def reference_seed(canary_seed: int) -> int:
    """The seed of the reference models' canaries and coins (``audit.reference =
    "other-canaries"``): the second child of ``numpy.random.SeedSequence(canary_seed)``, as a
    32-bit integer; independent of the audited draw (``canary_seed``) and of the calibration
    one (the first child, :func:`calibration_seed`).

    Why a reference fine-tuned on other canaries: whatever every canary shares (the records'
    format, the random tokens of the secrets, the odd final tokens) the target learns from
    all the included ones, members or not of the audited set; against the base model that
    shared lift dwarfs one canary's own. A model trained with the same recipe, at the same
    epsilon, on other canaries of the same design and the same fillers learns the shared
    part and none of the audited canaries, so the target-over-reference ratio keeps each
    canary's own evidence (the offline reference model of LiRA, Carlini et al. 2022, one
    model per epsilon). It is independent of the audited coins, so the bounds stay valid.
    """
    return int(np.random.SeedSequence(canary_seed).spawn(2)[1].generate_state(1)[0])


def calibration_epsilon(epsilons: tuple[float, ...]) -> float:
    """The epsilon of the calibration target: the largest of ``audit.epsilons`` (``inf``, no
    DP, when it is there), the audited target that leaks most, so that the features differ
    most in what they detect; at small epsilon every feature is near chance and the choice
    would be decided by noise."""
    return max(epsilons)


def statistic_criteria(labels: np.ndarray, scores: dict[str, np.ndarray], *, confidence: float,
                       seed: int) -> dict[str, float]:
    """mu_LB of the f-DP one-run bound for each feature's scores of the calibration canaries.

    mu_LB (Mahloujifar, Melis & Chaudhuri 2025, "Auditing f-Differential Privacy in One
    Run", arXiv 2410.22235; :func:`attack_models.privacy_bounds.fdp_epsilon_bound`) is the
    largest mu of mu-GDP that the feature's guesses (the k+ highest scores "in", the k-
    lowest "out", over the default grid) reject at ``confidence``. It is the criterion
    rather than the one-run epsilon_LB (Steinke et al. 2023) because it does not depend on
    delta: the calibration target is audited at the audit's delta, the audited targets at a
    canary's group delta, and the one-run bound's 2 m delta term can force it to 0 for every
    feature (no choice left), while mu_LB still ranks them. Both bounds are functions of the
    same guesses, so the feature that guesses best is the best for both.

    A feature with a non-finite score for some canary gets NaN (it cannot be chosen).
    """
    from attack_models.privacy_bounds import fdp_epsilon_bound

    criteria = {}
    for column, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            logger.warning("calibration: %s is not finite for %d canaries; it cannot be the statistic", column,
                           int((~np.isfinite(values)).sum()))
            criteria[column] = math.nan
            continue
        criteria[column] = fdp_epsilon_bound(labels, values, confidence=confidence, seed=seed).mu_lb
    return criteria


def select_statistic(criteria: dict[str, float], auc: dict[str, float] | None = None) -> str:
    """The feature with the largest criterion (:func:`statistic_criteria`); NaN is never chosen.

    Features whose criteria lie within :data:`TIE_TOLERANCE` of the largest are tied, and the
    tie goes to the larger ``auc`` (the calibration AUC; a feature missing from it counts as
    NaN, below any AUC), then to the earlier feature in ``criteria``'s order
    (``audit.features``). Ties are common, not a corner case: mu_LB is the bound of the best
    (k+, k-) of a fixed grid, so every feature whose guesses are all right at the same grid
    pair gets the same mu_LB, the ceiling of that pair (on a non-private calibration target
    several features often reach it). The AUC then ranks them by all their scores.
    """
    from attack_models.selection import lexicographic_choice

    finite = [column for column, value in criteria.items() if not math.isnan(value)]
    if not finite:
        raise InputDataError(f"no feature of {', '.join(criteria)} scores every calibration canary; "
                             "name audit.statistic instead of \"auto\"")
    areas = [(auc or {}).get(column) for column in finite]
    choice, _ = lexicographic_choice(finite, [[criteria[c] for c in finite],
                                              [math.nan if a is None else a for a in areas]], [TIE_TOLERANCE, 0.0])
    return choice


TIE_TOLERANCE = 1e-6
"""Criteria (mu_LB) closer than this to the largest are a tie for :func:`select_statistic`."""


def filler_texts(config: AuditExperimentConfig, exclude: set[str]) -> list[str]:
    """``audit.fillers`` texts from ``[data]`` (none of them a canary), drawn with ``seed``."""
    from experiments.studies.run import read_data

    data = config.data
    if data.generator == "patients":
        from experiments.data.patients import generate_patient_records

        pool = [r["text"] for r in generate_patient_records(data.n_records, seed=config.seed)]
    else:
        pool = read_data(data).texts  # a file or a data set
    pool = [t for t in pool if t not in exclude]
    if len(pool) < config.audit.fillers:
        raise ConfigError(
            f"audit.fillers={config.audit.fillers} but [data] gives {len(pool)} texts that are not canaries; "
            "lower audit.fillers, enlarge the data (data.n_records), or use another seed for the canaries "
            "(audit.canary_seed) than for generated fillers (seed)")
    order = np.random.default_rng(config.seed).permutation(len(pool))[:config.audit.fillers]
    return [pool[i] for i in order]


def training_texts(canaries: list[str], included: np.ndarray, fillers: list[str], repeats: int) -> list[str]:
    """The fillers and ``repeats`` copies of every included canary."""
    return fillers + [text for text, keep in zip(canaries, included) if keep for _ in range(repeats)]


def dp_recipe(config: AuditExperimentConfig) -> dict[str, Any]:
    """What the DP targets and their references train with apart from ``[target]``: the
    expected batch (``audit.dp_batch_size``, else ``target.batch_size``) and the learning rate
    (``audit.dp_lr``, else ``target.lr``), as ``{"batch_size": ..., "lr": ...}``."""
    return {"batch_size": config.audit.dp_batch_size or config.target.batch_size,
            "lr": config.audit.dp_lr or config.target.lr}


def target_training(config: AuditExperimentConfig, epsilon: float) -> Any:
    """``[target]`` with DP at ``epsilon`` (the audit's delta and :func:`dp_recipe`); ``inf``
    leaves it non-private."""
    if math.isinf(epsilon):
        return config.target
    return dataclasses.replace(config.target, dp_epsilon=epsilon, dp_delta=config.audit.delta, **dp_recipe(config))


def epsilon_label(epsilon: float) -> str:
    """``8.0`` -> ``"eps_8"``, ``inf`` -> ``"eps_inf"``: a directory name."""
    return "eps_inf" if math.isinf(epsilon) else f"eps_{epsilon:g}"


def epsilon_theory(manifest: dict[str, Any]) -> float:
    """The accountant's epsilon of a trained adapter (``inf`` for a non-private one)."""
    record = manifest.get("dp")
    if not record:
        return math.inf
    return float(record["epsilon"])


def prv_epsilon(manifest: dict[str, Any]) -> float | None:
    """The PRV accountant's epsilon of a trained adapter, beside the one its training used
    (:func:`shadow.dp.accountant_epsilons`; ``inf`` for a non-private one, ``None`` where the
    PRV accountant cannot evaluate the setting)."""
    from shadow.dp import accountant_epsilons

    record = manifest.get("dp")
    if not record:
        return math.inf
    return accountant_epsilons(record)["prv"]


def training_precision(manifest: dict[str, Any]) -> str:
    """What a target was trained in, as its manifest says: ``"bfloat16 autocast"`` or the weights' dtype
    (``precision = "auto"`` resolves per machine, so the report says which it was)."""
    return "bfloat16 autocast" if manifest.get("autocast_bf16") else str(manifest.get("base_model", {}).get("dtype"))


def bounds_above_accountant(row: dict[str, Any]) -> list[str]:
    """The (epsilon, delta) lower bounds of an audit row that exceed an accountant's epsilon of a canary.

    The one-run bound (Steinke et al. 2023) and the classic one bound epsilon at the canary's delta
    directly, so either above the smaller of the RDP and PRV epsilons (both upper bounds) means a bug
    in the audit or the DP training; each is logged as an error. The f-DP epsilon is not checked: it is
    the epsilon of the Gaussian curve mu_LB-GDP, and DP-SGD's own curve can certify a smaller epsilon
    at the same delta than the Gaussian curve that it nearly is (README, audit section).
    """
    uppers = [e for e in (row["epsilon_theory_canary"], row.get("epsilon_theory_prv_canary")) if e is not None]
    upper = min(uppers)
    above = [method for method in ("one-run", "classic") if row["bounds"][method]["epsilon_lb"] > upper * (1 + 1e-9)]
    for method in above:
        logger.error("%s: the %s lower bound %.4f exceeds the accountant's epsilon %.4f: a bug in the audit or in "
                     "the DP training; do not publish this audit", epsilon_label(row["epsilon_target"]), method,
                     row["bounds"][method]["epsilon_lb"], upper)
    return above


def group_privacy(epsilon: float, delta: float, group: int) -> tuple[float, float]:
    """(epsilon, delta) of a group of ``group`` records under (epsilon, delta)-DP per record.

    Group privacy (Dwork & Roth 2014, Theorem 2.2 and its (epsilon, delta) form): changing k
    records changes every output's probability by at most e^(k eps) with additive slack
    k e^((k - 1) eps) delta. A canary repeated k times in the training set is such a group,
    so the audit's claim for it is (k eps, k e^((k - 1) eps) delta), capped at delta = 1.
    """
    if group == 1 or math.isinf(epsilon):
        return epsilon, delta
    return group * epsilon, min(1.0, group * math.exp((group - 1) * epsilon) * delta)


def audit_bounds(labels: np.ndarray, scores: np.ndarray, *, delta: float, confidence: float,
                 seed: int, guesses: list[list[int]] | None = None) -> dict[str, Any]:
    """The three lower bounds of one target's canary scores (one-run, f-DP, classic), as JSON-ready dicts;
    ``guesses``: the (k+, k-) pairs of the one-run and f-DP bounds (None: the default grid)."""
    from attack_models.privacy_bounds import classic_epsilon_bound, fdp_epsilon_bound, one_run_epsilon_bound

    pairs = None if guesses is None else [tuple(pair) for pair in guesses]
    return {"one-run": one_run_epsilon_bound(labels, scores, delta=delta, confidence=confidence,
                                             seed=seed, guesses=pairs).to_dict(),
            "f-dp": fdp_epsilon_bound(labels, scores, delta=delta, confidence=confidence, seed=seed,
                                      guesses=pairs).to_dict(),
            "classic": classic_epsilon_bound(labels, scores, delta=delta, confidence=confidence,
                                             seed=seed).to_dict()}


def run_audit_experiment(config: AuditExperimentConfig, *, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Train the targets, score the canaries, bound epsilon; return ``audit.json``'s content.

    With ``audit.statistic = "auto"`` a calibration target is trained and scored first
    (:func:`choose_statistic`); the audited targets are then scored with the one statistic
    it picked.
    """
    from attack_models import summarize
    from experiments.data.canaries import DESIGN_NEEDS
    from experiments.studies.run import claim_run_directory, log_to_file, train_target
    from llm_features.cache import ModelSpec, default_score_cache, score_texts_cached
    from llm_features.extract import extract_features
    from llm_features.models import load_model
    from llm_features.registry import parse_features
    from llm_features.texts import texts_from_list
    from shadow.adapter import read_manifest

    def canaries_and_training(base: Any, seed: int | None = None,
                              exclude: frozenset[str] = frozenset()) -> tuple[list[str], np.ndarray, list[str], list[str]]:
        canaries, included = canary_records(config, base=base, seed=seed)
        fillers = filler_texts(config, exclude=set(canaries) | exclude)
        return canaries, included, fillers, training_texts(canaries, included, fillers, config.audit.canary_repeats)

    def train_and_score(name: str, epsilon: float, training: list[str], canaries: list[str], included: np.ndarray,
                        reference_scores: list[Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Train (or reuse) the target ``targets/NAME`` at ``epsilon``, score ``canaries`` with every feature
        (``reference_scores``: the canaries' scores under the reference model); return the table and
        the target's manifest."""
        directory = out / "targets" / name
        train_target(config.base_model, training, directory, target_training(config, epsilon))
        table = extract_features(ModelSpec(config.base_model, adapter=str(directory)),
                                 texts_from_list(canaries, label=[int(k) for k in included]), requests,
                                 reference_scores=reference_scores, max_tokens=config.target.max_tokens, cache=cache)
        with atomic_path(directory.parent / f"{name}_scores.csv") as tmp:
            table.to_csv(tmp, index=False)
        return table, read_manifest(directory)

    out = Path(out)
    audit = config.audit
    auto = audit.statistic == "auto"
    each = audit.calibrate == "each"
    calibrated = auto or each  # a calibration draw and target(s)
    candidates = [r.column for r in requests_of(audit)] if auto else [parse_features(audit.statistic)[0].column]
    other_canaries = audit.reference == "other-canaries"
    needs_base = DESIGN_NEEDS[audit.canary_design] is not None
    if not needs_base:  # settings errors (too few fillers) before the run directory is claimed
        canaries, included, fillers, training = canaries_and_training(None)
    out.mkdir(parents=True, exist_ok=True)
    claim_run_directory(out, config, force=force)
    requests = requests_of(audit)
    cache = default_score_cache()  # a rerun or a resumed audit pays no forward pass twice
    started = time.perf_counter()
    with log_to_file(out / "run.log"):
        base = load_model(config.base_model)
        if needs_base:  # built from the base model's tokenizer or predictions
            canaries, included, fillers, training = canaries_and_training(base)
        logger.info("audit %s: %d canaries (%s; %d included x %d), %d fillers, epsilons %s", config.name,
                    len(canaries), audit.canary_design, int(included.sum()), audit.canary_repeats, len(fillers),
                    list(audit.epsilons))
        write_text_atomic(out / "data" / "canaries.jsonl", canaries_jsonl(canaries, included))
        max_tokens = config.target.max_tokens
        if calibrated:  # the calibration draw never sees the audited coins; its texts avoid the audited canaries
            seed = calibration_seed(audit.canary_seed)
            cal_canaries, cal_included, cal_fillers, cal_training = canaries_and_training(
                base, seed=seed, exclude=frozenset(canaries))
            write_text_atomic(out / "data" / "calibration_canaries.jsonl", canaries_jsonl(cal_canaries, cal_included))
        if other_canaries:  # the reference models' draw avoids the audited and the calibration canaries
            ref_seed = reference_seed(audit.canary_seed)
            ref_canaries, ref_included, _, ref_training = canaries_and_training(
                base, seed=ref_seed, exclude=frozenset(canaries) | frozenset(cal_canaries if calibrated else ()))
            write_text_atomic(out / "data" / "reference_canaries.jsonl", canaries_jsonl(ref_canaries, ref_included))
            reference = {"model": "other-canaries", "canary_seed": ref_seed, "canaries": len(ref_canaries),
                         "included": int(ref_included.sum()),
                         "shared_with_audited_canaries": len(set(ref_canaries) & set(canaries)), "epsilon_theory": {}}
        else:
            reference = {"model": "base"}
            base_scores = {"audited": score_texts_cached(base, canaries, cache=cache, max_tokens=max_tokens,
                                                         description="canaries, base model")}
            if calibrated:
                base_scores["calibration"] = score_texts_cached(base, cal_canaries, cache=cache,
                                                                max_tokens=max_tokens,
                                                                description="calibration canaries, base model")
        del base

        def reference_scores(epsilon: float, which: str) -> list[Any]:
            """The scores of the ``which`` canaries (``"audited"`` or ``"calibration"``) under the reference
            model of the targets at ``epsilon``: the base model, or the reference fine-tune at that epsilon
            (``targets/reference_eps_*``, trained on the reference draw, or reused when it verifies; loaded
            only for the texts that the score cache does not hold)."""
            if not other_canaries:
                return base_scores[which]
            directory = out / "targets" / f"{REFERENCE}_{epsilon_label(epsilon)}"
            if epsilon_label(epsilon) not in reference["epsilon_theory"]:
                logger.info("reference model (epsilon %s): %d canaries of seed %d, %d included", epsilon,
                            len(ref_canaries), ref_seed, int(ref_included.sum()))
                train_target(config.base_model, ref_training, directory, target_training(config, epsilon))
                reference["epsilon_theory"][epsilon_label(epsilon)] = epsilon_theory(read_manifest(directory))
            return score_texts_cached(ModelSpec(config.base_model, adapter=str(directory)),
                                      canaries if which == "audited" else cal_canaries, cache=cache,
                                      max_tokens=max_tokens, description=f"{which} canaries, {directory.name}")

        def calibrate(epsilon: float) -> dict[str, Any]:
            """Train (or reuse) the calibration target at ``epsilon`` on the calibration draw and choose on
            it the statistic (:func:`choose_statistic`) and, with ``audit.calibrate = "each"``, the guesses
            (:func:`calibrated_guesses`); the audited canaries and coins are never read."""
            stage = time.perf_counter()
            name = calibration_name(epsilon, each=each)
            logger.info("calibration target %s (epsilon %s): %d canaries of seed %d, %d included, %d fillers",
                        name, epsilon, len(cal_canaries), seed, int(cal_included.sum()), len(cal_fillers))
            table, manifest = train_and_score(name, epsilon, cal_training, cal_canaries, cal_included,
                                              reference_scores(epsilon, "calibration"))
            labels = cal_included.astype(int)
            choice = choose_statistic(labels, table, candidates, confidence=audit.confidence, seed=config.seed)
            if not auto:
                choice["mode"] = "fixed"
            if each:
                choice["guesses"] = calibrated_guesses(labels, table[choice["statistic"]].to_numpy(np.float64),
                                                       confidence=audit.confidence, seed=config.seed)
            choice["calibration"] = {
                "epsilon_target": epsilon, "epsilon_theory": epsilon_theory(manifest), "canary_seed": seed,
                "canaries": len(cal_canaries), "included": int(cal_included.sum()), "fillers": len(cal_fillers),
                "shared_with_audited_canaries": len(set(cal_canaries) & set(canaries)), "target": name,
                "auc": choice.pop("auc"),
                "wall_time_s": round(time.perf_counter() - stage, 1)}
            return choice

        if each:
            choice = {"mode": "each", "per_target": {}}
        elif auto:
            choice = calibrate(calibration_epsilon(audit.epsilons))
        else:
            choice = {"mode": "fixed", "statistic": candidates[0]}
        rows: list[dict[str, Any]] = []
        for epsilon in audit.epsilons:
            if each:  # the calibration at this epsilon, before its audited target
                choice["per_target"][epsilon_label(epsilon)] = calibrate(epsilon)
            chosen = choice["per_target"][epsilon_label(epsilon)] if each else choice
            statistic, guesses = chosen["statistic"], chosen.get("guesses")
            stage = time.perf_counter()
            table, manifest = train_and_score(epsilon_label(epsilon), epsilon, training, canaries, included,
                                              reference_scores(epsilon, "audited"))
            scores = table[statistic].to_numpy(dtype=np.float64)
            per_record = epsilon_theory(manifest)
            per_canary, canary_delta = group_privacy(per_record, audit.delta, audit.canary_repeats)
            prv = prv_epsilon(manifest)
            rows.append({
                "epsilon_target": epsilon,
                "statistic": statistic,
                "guesses": guesses,
                "epsilon_theory": per_record,
                "epsilon_theory_canary": per_canary,
                "epsilon_theory_prv": prv,
                "epsilon_theory_prv_canary": (None if prv is None else
                                              group_privacy(prv, audit.delta, audit.canary_repeats)[0]),
                "delta_canary": canary_delta,
                "precision": training_precision(manifest),
                "bounds": audit_bounds(included.astype(int), scores, delta=canary_delta,
                                       confidence=audit.confidence, seed=config.seed, guesses=guesses),
                "auc": {r.column: summarize(included.astype(int), table[r.column].to_numpy(),
                                            seed=config.seed)["auc"] for r in requests},
                "wall_time_s": round(time.perf_counter() - stage, 1),
            })
            bounds = rows[-1]["bounds"]
            rows[-1]["bounds_above_accountant"] = bounds_above_accountant(rows[-1])
            logger.info("%s: epsilon_theory %.3g, one-run epsilon_LB %.3f, f-DP %.3f (mu_LB %.3f), classic %.3f",
                        epsilon_label(epsilon), rows[-1]["epsilon_theory"], bounds["one-run"]["epsilon_lb"],
                        bounds["f-dp"]["epsilon_lb"], bounds["f-dp"]["mu_lb"], bounds["classic"]["epsilon_lb"])
        recipe = dp_recipe(config)
        report = {
            "setting": {"name": config.name, "base_model": config.base_model,
                        "statistic": report_statistic(rows), "calibrate": audit.calibrate,
                        "statistic_choice": choice, "reference": reference,
                        "canaries": len(canaries), "canary_design": audit.canary_design,
                        "canary_tokens": (audit.canary_tokens if audit.canary_design in ("random-tokens", "secret-suffix")
                                          else None),
                        "canary_prefix_tokens": (audit.canary_prefix_tokens if audit.canary_design == "secret-suffix"
                                                 else None),
                        "included": int(included.sum()),
                        "canary_repeats": audit.canary_repeats, "fillers": len(fillers),
                        "training_texts": len(training), "delta": audit.delta, "confidence": audit.confidence,
                        "target_training": config.target.to_dict(),
                        "dp_batch_size": recipe["batch_size"], "dp_lr": recipe["lr"],
                        "seeds": {"fillers": config.seed, "canaries": audit.canary_seed},
                        "wall_time_s": round(time.perf_counter() - started, 1)},
            "targets": rows,
        }
        write_audit_report(out / "report", report)
        write_json_atomic(out / "run.json", {"config_hash": config_hash(config),
                                             "library_versions": library_versions()})
    return report


CALIBRATION = "calibration"
"""The calibration target's name: ``targets/calibration`` and ``targets/calibration_scores.csv``
(``audit.calibrate = "each"``: ``targets/calibration_eps_8``, ...)."""


def calibration_name(epsilon: float, *, each: bool) -> str:
    """The calibration target's directory under ``targets/``: ``calibration`` (one, at the largest epsilon),
    or with ``audit.calibrate = "each"`` one per epsilon, ``calibration_eps_8``, ``calibration_eps_inf``, ..."""
    return f"{CALIBRATION}_{epsilon_label(epsilon)}" if each else CALIBRATION


def requests_of(audit: Any) -> list[Any]:
    """``audit.features`` parsed (:func:`llm_features.registry.parse_features`)."""
    from llm_features.registry import parse_features

    return parse_features(audit.features)


def report_statistic(rows: list[dict[str, Any]]) -> str:
    """``setting.statistic`` of ``audit.json``: the statistic of every target, or ``"per target"`` when the
    calibration at each epsilon (``audit.calibrate = "each"``) chose different ones."""
    statistics = {row["statistic"] for row in rows}
    return statistics.pop() if len(statistics) == 1 else "per target"


def calibrated_guesses(labels: np.ndarray, scores: np.ndarray, *, confidence: float,
                       seed: int) -> list[list[int]] | None:
    """``audit.calibrate = "each"``: the one (k+, k-) pair the audited target at the same epsilon is tested at.

    The pair of the default grid (:func:`attack_models.privacy_bounds.default_guess_grid`) whose guesses on
    the calibration canaries reject the largest mu of Gaussian DP (the f-DP one-run bound's best pair,
    Bonferroni over the grid as there; ties to the earlier pair). Fixed before the audited scores are seen,
    it is then the only pair tested, at the full confidence: no correction is owed for a choice made on
    other data. ``None`` (test the whole grid) when no pair rejects any mu on the calibration canaries.

    Why: the grid pays for its 18 pairs (for 1,000 canaries) with a Bonferroni correction, worth it when the
    best pair is unknown; the best pair depends on the shape of the scores (a DP target shifts every
    member a little, a non-private one memorises some), which a calibration target at the same epsilon
    shows. On synthetic audits of 1,000 canaries (:mod:`experiments.studies.guess_pairs`, 20 draws each) a
    pair chosen this way on an independent draw raised the mean mu_LB over the grid's in every setting
    tried: by 15-27% where every member shifts (AUC 0.6 to 0.95) and by 21-45% where 5-40% of the members
    are memorised, where a fixed pair such as (100, 100) alone loses half or more.
    """
    from attack_models.privacy_bounds import fdp_epsilon_bound

    best = fdp_epsilon_bound(labels, scores, confidence=confidence, seed=seed)
    if best.mu_lb <= 0.0:
        logger.warning("calibration: no (k+, k-) pair rejects any mu-GDP on the calibration canaries; the audited "
                       "target is tested over the whole grid")
        return None
    logger.info("calibration: the audited target will be tested at (k+, k-) = (%d, %d) alone (mu_LB %.3f here)",
                best.k_plus, best.k_minus, best.mu_lb)
    return [[best.k_plus, best.k_minus]]

REFERENCE = "reference"
"""The reference models' name prefix (``audit.reference = "other-canaries"``): ``targets/reference_eps_inf``, ..."""

CRITERION = "mu_lb"
"""What ``"auto"`` maximises over the features on the calibration canaries (:func:`statistic_criteria`)."""

TIE_BREAK = "auc"
"""What decides between features tied on :data:`CRITERION` (:func:`select_statistic`)."""


def canaries_jsonl(canaries: list[str], included: np.ndarray) -> str:
    """One JSON line per canary: its text and whether it is included (``label``)."""
    return "".join(json.dumps({"text": t, "label": int(k)}) + "\n" for t, k in zip(canaries, included))


def choose_statistic(labels: np.ndarray, table: pd.DataFrame, columns: list[str], *, confidence: float,
                     seed: int) -> dict[str, Any]:
    """``audit.statistic = "auto"``: the statistic of the audit, chosen on the calibration target.

    ``labels`` are the calibration canaries' coins and ``table`` their scores under the
    calibration target (one column per feature of ``columns``, ``audit.features``); the
    audited canaries, their coins and the audited targets are never read. Returns the
    report's record: ``statistic`` (:func:`select_statistic` of the ``values``,
    :func:`statistic_criteria`, ties to the larger calibration AUC), the criterion, the
    ``tie_break`` and each feature's ``auc``, where the choice was made, and the
    ``candidates`` in the order of ``columns`` (``audit.json`` sorts the keys of ``values``;
    the order decides ties of both mu_LB and AUC).

    The shadow classifier of the issue is not a candidate: it needs shadow fine-tunes (K
    more trainings, each as costly as a target), which the audit does not train.
    """
    from attack_models.metrics import roc_auc

    scores = {c: table[c].to_numpy(dtype=np.float64) for c in columns}
    criteria = statistic_criteria(labels, scores, confidence=confidence, seed=seed)
    auc = {c: (roc_auc(labels, v) if np.isfinite(v).all() else math.nan) for c, v in scores.items()}
    statistic = select_statistic(criteria, auc)
    if criteria[statistic] == 0.0:
        logger.warning("calibration: no feature rejects any mu-GDP on the calibration canaries; the one with "
                       "the largest calibration AUC is the statistic, %s", statistic)
    logger.info("calibration: statistic %s (mu_LB / AUC: %s; ties on mu_LB go to the larger AUC)", statistic,
                ", ".join(f"{c} {criteria[c]:.3f} / {auc[c]:.3f}" for c in columns))
    return {"mode": "auto", "statistic": statistic, "criterion": CRITERION, "tie_break": TIE_BREAK,
            "auc": {c: (None if math.isnan(v) else v) for c, v in auc.items()}, "candidates": list(columns),
            "made_on": "calibration target: its own canaries and coin flips, never the audited ones",
            "values": {c: (None if math.isnan(v) else v) for c, v in criteria.items()}}


def audit_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per target: epsilon_theory, the lower bounds (one-run, f-DP with its mu_LB, classic), the
    statistic's AUC. A report written before the f-DP bound existed has no f-DP columns."""
    statistic = report["setting"]["statistic"]
    per_target = statistic == "per target"
    calibrated = any(row.get("guesses") for row in report["targets"])
    rows = []
    for row in report["targets"]:
        bounds = row["bounds"]
        entry = {
            "epsilon (target)": row["epsilon_target"],
            "epsilon_theory": row["epsilon_theory"],
            "epsilon_theory (canary)": row["epsilon_theory_canary"],
        }
        if "epsilon_theory_prv_canary" in row:
            prv = row["epsilon_theory_prv_canary"]
            entry["epsilon_theory PRV (canary)"] = math.nan if prv is None else prv
        entry |= {
            "delta (canary)": row["delta_canary"],
            "epsilon_LB one-run": bounds["one-run"]["epsilon_lb"],
        }
        if "f-dp" in bounds:
            entry["epsilon_LB f-DP"] = bounds["f-dp"]["epsilon_lb"]
            entry["mu_LB f-DP"] = bounds["f-dp"]["mu_lb"]
        entry["epsilon_LB classic"] = bounds["classic"]["epsilon_lb"]
        if calibrated:
            entry["guesses (k+, k-)"] = (f"({row['guesses'][0][0]}, {row['guesses'][0][1]}), calibrated"
                                         if row.get("guesses") else f"grid of {bounds['one-run']['n_hypotheses']}")
        if per_target:
            entry["statistic"] = row["statistic"]
            entry["AUC"] = row["auc"][row["statistic"]]
        else:
            entry[f"AUC ({statistic})"] = row["auc"][statistic]
        rows.append(entry)
    return pd.DataFrame(rows)


def audit_markdown(report: dict[str, Any]) -> str:
    """The audit's table and setting as Markdown."""
    from experiments.data.canaries import CANARY_DESIGNS

    setting = report["setting"]
    table = audit_table(report)
    design = CANARY_DESIGNS.get(setting.get("canary_design", "patient-records"), setting.get("canary_design"))
    if setting.get("canary_prefix_tokens"):
        design += f": keys of {setting['canary_prefix_tokens']} tokens, secrets of {setting['canary_tokens']}"
    elif setting.get("canary_tokens"):
        design += f" of {setting['canary_tokens']} tokens"
    training = setting.get("target_training", {})
    differ = [f"{what} {setting[key]:g} with DP, {training[name]:g} without"
              for what, key, name in (("expected batch", "dp_batch_size", "batch_size"), ("lr", "dp_lr", "lr"))
              if setting.get(key) and training.get(name) and setting[key] != training[name]]
    batches = f" ({'; '.join(differ)})" if differ else ""
    scored_by = ("each target's own statistic (column statistic)" if setting["statistic"] == "per target"
                 else f"`{setting['statistic']}`")
    lines = [f"# Privacy audit: {setting['name']}", "",
             f"{setting['canaries']} canaries ({design}), {setting['included']} of them included "
             f"(a fair coin each) x {setting['canary_repeats']}, among {setting['fillers']} fillers; "
             f"one LoRA fine-tune of {setting['base_model']} per epsilon{batches}; the canaries scored by "
             f"{scored_by}; delta = {setting['delta']:g}, confidence {setting['confidence']:g}.", "",
             "epsilon_theory is the accountant's epsilon of the training (the one it was run with, RDP by "
             "default), epsilon_theory PRV that of the PRV accountant (Gopi, Lee & Wutschitz 2021) for the same "
             "steps, usually tighter; both are upper bounds. epsilon_LB is the lower bound that the "
             "attack proves: the one-run bound (Steinke et al. 2023, valid for one run with many canaries); "
             "the f-DP one-run bound (Mahloujifar, Melis & Chaudhuri 2025) on the same guesses: mu_LB, the "
             "largest mu of Gaussian DP that they reject, and the epsilon at the canary's delta that mu_LB-GDP "
             "implies (a lower bound for a Gaussian-shaped privacy curve, as DP-SGD's nearly is; by group "
             "privacy a canary repeated k times is k mu-GDP under mu-GDP per record); and the classic bound "
             "(Clopper-Pearson on a held-out threshold, Jagielski et al. 2020; it treats the canaries as "
             "independent trials, a heuristic for one training run). A canary repeated k "
             "times is a group of k records: its guarantee is (k epsilon, k e^((k-1) epsilon) delta) by group "
             "privacy (Dwork & Roth 2014), the 'canary' columns, and the bounds are computed at that delta and "
             "compared with that epsilon.", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) and not math.isinf(v) else
                                        ("inf (no DP)" if isinstance(v, float) else str(v)) for v in row) + " |")
    precision = [f"{label(row)} {row['precision']}" for row in report["targets"] if row.get("precision")]
    if precision:
        lines += ["", f"Trained in (precision = \"auto\" resolves per machine): {', '.join(precision)}."]
    above = [f"{label(row)} {method}" for row in report["targets"] for method in row.get("bounds_above_accountant", [])]
    if above:
        lines += ["", f"**A lower bound exceeds the accountant's epsilon ({', '.join(above)}): a bug in the audit or "
                      "the DP training. Do not publish this audit.**"]
    lines += reference_markdown(setting.get("reference"))
    lines += choice_markdown(setting.get("statistic_choice"))
    notes = [f"- {label(row)}: {method} note: {bound['note']}" for row in report["targets"]
             for method, bound in row["bounds"].items() if bound.get("note")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def reference_markdown(reference: dict[str, Any] | None) -> list[str]:
    """Which model the reference-based features compare each target with, as Markdown lines (nothing
    for the base model, or a report written before ``audit.reference`` existed)."""
    if not reference or reference.get("model") != "other-canaries":
        return []
    theory = ", ".join(f"{name} {'inf (no DP)' if value in ('inf', math.inf) else f'{value:.3g}'}"
                       for name, value in reference["epsilon_theory"].items())
    return ["", f"The reference model of each target (for `reference`, `suffix_ratio`, `error_zone`, ...) is "
                f"not the base model but a fine-tune with the same recipe at the same epsilon on "
                f"{reference['canaries']} other canaries of the same design (seed {reference['canary_seed']}, "
                f"{reference['included']} included by their own coins) and the same fillers: it learns what all "
                f"canaries share and none of the audited ones (accountant's epsilon: {theory})."]


def choice_markdown(choice: dict[str, Any] | None) -> list[str]:
    """How the statistic was chosen, as Markdown lines: nothing for a fixed one (or a report
    written before ``"auto"`` existed), else the calibration target's mu_LB and AUC per feature
    (with ``audit.calibrate = "each"``, one section per epsilon with the guesses chosen there)."""
    if choice and choice.get("mode") == "each":
        lines = ["", "## The statistic and the guesses, chosen before the audit at each epsilon", "",
                 "Each target's statistic and (k+, k-) guesses were chosen on a calibration target at its own "
                 "epsilon (`audit.calibrate = \"each\"`): the grid pair with the largest mu_LB on the calibration "
                 "canaries is the only pair tested on the audited ones, without a Bonferroni correction."]
        for name, chosen in choice["per_target"].items():
            pair = chosen.get("guesses")
            lines += ["", f"### {name}: `{chosen['statistic']}`, guesses "
                          f"{'the whole grid' if not pair else f'({pair[0][0]}, {pair[0][1]})'}"]
            lines += choice_markdown(chosen)[3:] if chosen.get("mode") == "auto" else []
        return lines
    if not choice or choice.get("mode") != "auto":
        return []
    calibration = choice["calibration"]
    epsilon = calibration["epsilon_target"]
    epsilon = "inf (no DP)" if isinstance(epsilon, str) or math.isinf(epsilon) else f"{epsilon:g}"
    lines = ["", "## The statistic, chosen before the audit", "",
             f"`{choice['statistic']}` was chosen on a calibration target, never on the audited canaries or "
             f"their labels: a fine-tune at epsilon {epsilon} with the same recipe, on "
             f"{calibration['canaries']} other canaries of the same design (seed {calibration['canary_seed']}, "
             f"their own fair coins: {calibration['included']} included) and {calibration['fillers']} fillers. "
             "Of `audit.features`, the one whose guesses on those canaries reject the largest mu of Gaussian DP "
             "(mu_LB of the f-DP one-run bound) was chosen; ties go to the larger AUC, then to the earlier "
             "feature.", "",
             "| feature | mu_LB (calibration) | AUC (calibration) |", "|---|---|---|"]
    for column in choice.get("candidates", choice["values"]):
        value = choice["values"][column]
        shown = "n/a" if value is None else f"{value:.3g}"
        if column == choice["statistic"]:
            column, shown = f"**{column}**", f"**{shown}**"
        auc = calibration["auc"].get(column.strip("*"))
        lines.append(f"| {column} | {shown} | {'n/a' if auc is None else f'{auc:.3g}'} |")
    return lines


def label(row: dict[str, Any]) -> str:
    return epsilon_label(row["epsilon_target"])


def epsilon_figure(report: dict[str, Any]):
    """epsilon_LB (every bound) against a canary's epsilon_theory; a non-private target sits at the right edge."""
    from experiments.report import new_figure

    table = audit_table(report)
    theory = table["epsilon_theory (canary)"]
    finite = theory[np.isfinite(theory)]
    right = 2.0 * (finite.max() if len(finite) else 10.0)
    x = theory.where(np.isfinite(theory), right)
    fig = new_figure(5.0, 4.0)
    ax = fig.add_subplot()
    curves = [(column, marker, label) for column, marker, label in (
        ("epsilon_LB one-run", "o-", "epsilon_LB, one-run"),
        ("epsilon_LB f-DP", "^-", "epsilon_LB, f-DP (Gaussian)"),
        ("epsilon_LB classic", "s-", "epsilon_LB, classic")) if column in table]
    top = max(right, float(table[[c for c, _, _ in curves]].max().max()) * 1.1)
    ax.plot([0, right], [0, right], color="grey", linestyle="--", linewidth=1, label="epsilon_LB = epsilon_theory")
    for column, marker, label in curves:
        ax.plot(x, table[column], marker, label=label)
    ticks = list(finite) + ([right] if len(finite) < len(table) else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.3g}" for t in finite] + (["inf (no DP)"] if len(finite) < len(table) else []))
    ax.set_xlim(0, right * 1.05)
    ax.set_ylim(0, top)
    ax.set_xlabel("epsilon_theory of a canary (accountant, group privacy)")
    ax.set_ylabel("epsilon lower bound (audit)")
    ax.set_title(f"Audit: {report['setting']['name']} ({report['setting']['statistic']})")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def json_ready(value: Any) -> Any:
    """``value`` with every infinite float (a non-private target's epsilon) as the string ``"inf"``."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_audit_report(directory: Path, report: dict[str, Any]) -> None:
    """``audit.md``, ``epsilon.png``, then ``audit.json`` (last: its presence means complete)."""
    from experiments.report import save_png

    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(directory / "audit.md", audit_markdown(report))
    save_png(epsilon_figure(report), directory / "epsilon.png")
    write_json_atomic(directory / "audit.json", json_ready(report))
    logger.info("audit report: %s", directory / "audit.md")
