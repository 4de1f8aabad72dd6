"""``shadowmia run CONFIG``: an experiment with known truth, end to end, resumable.

Stages, each skipped when its artifacts verify:

1. data: the pool (a file, a ``datasets`` data set, or generated patient records) split at
   random (``split.seed``) into target members, target non-members and the attacker's texts;
2. target: a LoRA fine-tune of the base on the members (``[target]``);
3. shadows: K LoRA fine-tunes on the attacker's pool (``[shadows]``) and their features.
   Threat model ``offline`` (Shokri et al. 2017): the pool is disjoint from the candidates.
   ``online`` (LiRA, Carlini et al. 2022): the candidates join the pool, so each candidate
   is IN for half of the shadows, and LiRA/RMIA scores exist for every candidate;
4. attack: classifiers compared leave-one-shadow-out, the best kept (LiRA features added
   in the online setting);
5. score: the target's candidates, then the report (``report/``) with every attack side by
   side: the classifier, each single feature, LiRA and RMIA where they exist.

Artifacts: ``config.toml`` (the resolved config), ``run.json`` (versions, wall time per
stage, and the data read: its source, a data set's fingerprint, the hash of the text ids),
``run.log``, ``data/``, ``target/``, ``shadows/``, ``attack/``, ``scores.csv``, ``report/``.
A run directory holding another config is refused unless ``force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from experiments.studies.config import ExperimentConfig, ThreatModel, config_hash, config_toml, load_config, to_dict
from llm_features.errors import ConfigError
from llm_features.io import library_versions, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

NOT_ATTACKS = frozenset({"id", "label", "n_tokens", "membership_probability", "patient_id", "document_id",
                         "user_id"})


def pool_texts(config: ExperimentConfig) -> list[dict[str, Any]]:
    """The records of the pool, each with a ``text``: generated, or read from ``data.path`` or
    ``data.dataset`` (see :func:`read_pool`)."""
    return read_pool(config)[0]


def read_pool(config: ExperimentConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of the pool, each with a ``text``, and what was read (for ``run.json``).

    With ``data.chunk_tokens`` every text is cut into passages of about that many tokens of
    the base model's tokenizer (:mod:`llm_features.chunking`); each passage records the
    ``document_id`` of its text, so that :func:`split_pool` keeps a document's passages on
    one side of the split.

    The second value, the data's provenance, names the source (``path``; ``dataset`` with
    its subset, split, revision and fingerprint; or ``generator``), the number of texts
    read and ``ids_sha256``, the SHA-256 of their ids in order (the same texts in the same
    order give the same value, whichever source they came from).
    """
    from llm_features.texts import text_id

    if config.data.generator == "patients":
        from experiments.data.patients import generate_patient_records

        records = [{"text": r["text"], "patient_id": r["patient_id"]}
                   for r in generate_patient_records(config.data.n_records, seed=config.seed)]
        provenance = {"generator": config.data.generator, "n_records": config.data.n_records, "seed": config.seed}
        return records, {**provenance, **_ids_summary([text_id(r["text"]) for r in records])}
    texts = read_data(config.data)
    provenance = {**texts.provenance, "text_field": config.data.text_field, **_ids_summary(texts.ids)}
    if config.data.chunk_tokens is None:
        return [{"text": text} for text in texts.texts], provenance
    records = chunk_records(texts.texts, texts.ids, base_model=config.base_model,
                            chunk_tokens=config.data.chunk_tokens)
    return records, {**provenance, "passages": len(records)}


def read_data(data: Any) -> Any:
    """The :class:`~llm_features.texts.TextSet` of a ``[data]`` section's ``path`` or ``dataset``
    (not a generator), after the loader's checks (empty texts, duplicates, labels)."""
    from llm_features.texts import load_dataset_texts, load_texts

    if data.dataset is not None:
        return load_dataset_texts(data.dataset, split=data.split, text_field=data.text_field,
                                  revision=data.revision, subset=data.subset)
    return load_texts(data.path, text_field=data.text_field)


def _ids_summary(ids: list[str]) -> dict[str, Any]:
    return {"texts": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()}


def chunk_records(texts: list[str], ids: list[str], *, base_model: str, chunk_tokens: int) -> list[dict[str, Any]]:
    """Passages of about ``chunk_tokens`` tokens of every text, each with its ``document_id``;
    a passage that repeats an earlier one (boilerplate) is dropped."""
    from llm_features.chunking import chunk_text
    from llm_features.models import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for text, document_id in zip(texts, ids):
        for passage in chunk_text(text, tokenizer, chunk_tokens):
            if passage not in seen:
                seen.add(passage)
                records.append({"text": passage, "document_id": document_id})
    logger.info("cut %d texts into %d passages of about %d tokens", len(texts), len(records), chunk_tokens)
    return records


def split_pool(records: list[dict[str, Any]], config: ExperimentConfig) -> dict[str, list[dict[str, Any]]]:
    """Members, non-members and the attacker's texts: disjoint, drawn by ``split.seed``.

    Records with a ``document_id`` (passages of one document) are split by document: the
    documents are shuffled and dealt in turn to the members, the non-members and the
    attacker, each part taking whole documents and dropping the passages of the one
    document that overflows it, so no document has passages on two sides. (Passages of one
    clinical note share a patient and a style; split apart they would leak membership.)
    """
    split = config.split
    sizes = {"members": split.target_members, "non_members": split.target_non_members,
             "attacker": split.attacker_pool}
    rng = np.random.default_rng(split.seed)
    if records and "document_id" in records[0]:
        documents: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            documents.setdefault(record["document_id"], []).append(record)
        order = rng.permutation(len(documents))
        groups = list(documents.values())
        parts = _deal_documents([groups[i] for i in order], sizes)
    else:
        order = rng.permutation(len(records))
        parts = _deal_documents([[records[i]] for i in order], sizes)
    if any(len(parts[name]) < size for name, size in sizes.items()):
        unit = "passages from whole documents" if records and "document_id" in records[0] else "texts"
        raise ConfigError(
            f"split needs {split.target_members} + {split.target_non_members} + {split.attacker_pool} = "
            f"{split.total} {unit} but the pool has {len(records)} and the split could fill only "
            f"{', '.join(f'{name} {len(parts[name])}/{size}' for name, size in sizes.items())}; "
            "lower the split sizes or use a larger pool")
    return parts


def _deal_documents(documents: list[list[dict[str, Any]]], sizes: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Fill each part in turn with whole documents; the document that overflows a part gives it
    only the passages it still needs and loses the rest."""
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name in sizes}
    names = iter(sizes)
    name = next(names)
    for document in documents:
        while len(parts[name]) >= sizes[name]:
            name = next(names, None)
            if name is None:
                return parts
        parts[name].extend(document[:sizes[name] - len(parts[name])])
    return parts


def write_records(path: Path, records: list[dict[str, Any]], *, label: int | None = None) -> Path:
    """JSON lines (with a ``label`` field when given), written atomically."""
    lines = [json.dumps({**r, **({"label": label} if label is not None else {})}) for r in records]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Copy the run's log records (INFO and above) into ``path`` too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    if level > logging.INFO:  # the file gets INFO whatever the console shows
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


#: What a run writes at its end from the stages before: removed when a run starts, so a
#: failed run never leaves a report that describes other inputs than the config beside it.
RUN_OUTPUTS = ("report", "scores.csv", "run.json", "transfer/report.md", "transfer/report.json")
#: What holds expensive work: a directory with one of these made under another config is
#: refused unless ``force`` (a directory with only a config.toml, say after a failed start,
#: is simply claimed).
RUN_ARTIFACTS = ("target", "targets", "shadows")


def claim_run_directory(out: Path, config: Any, *, force: bool) -> None:
    """Invalidate the outputs of earlier runs, then write ``config.toml``.

    A directory that holds trained models made with another config is refused unless
    ``force``. Either way the report, the scores and ``run.json`` of the earlier run are
    removed first: every stage then verifies and reuses, or recomputes, its own artifacts,
    and a run that fails on the way leaves no report that disagrees with ``config.toml``.
    """
    path = out / "config.toml"
    if path.is_file() and not force and any((out / name).exists() for name in RUN_ARTIFACTS):
        existing = load_config(path)
        if config_hash(existing) != config_hash(config):
            before, after = to_dict(existing), to_dict(config)
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            raise ConfigError(f"{out} holds a run of another config (differs in: {', '.join(changed)}); "
                              "use another --out, or --force to continue it with this config (every stage "
                              "whose inputs changed is recomputed)")
    for name in RUN_OUTPUTS:
        stale = out / name
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    write_text_atomic(path, config_toml(config))


def run_experiment(config: ExperimentConfig, *, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Run every stage (skipping verified ones) and write the report; return report.json's content."""
    from experiments.jobs.attack import fit_attack_job
    from experiments.jobs.score import score_job
    from experiments.jobs.shadows import train_shadows_job
    from experiments.report import write_report

    out = Path(out)
    records, provenance = read_pool(config)
    parts = split_pool(records, config)  # fails on a too-small pool before anything is written
    out.mkdir(parents=True, exist_ok=True)
    claim_run_directory(out, config, force=force)
    timings: dict[str, float] = {}
    with log_to_file(out / "run.log"):
        logger.info("run %s in %s (%s threat model)", config.name, out, config.threat_model.value)
        logger.info("data: %s", json.dumps(provenance, sort_keys=True))
        started = time.perf_counter()
        write_records(out / "data" / "target_members.jsonl", parts["members"])
        candidates = out / "data" / "candidates.jsonl"
        write_text_atomic(candidates, "".join(
            json.dumps({**r, "label": label}) + "\n"
            for label, group in ((1, parts["members"]), (0, parts["non_members"])) for r in group))
        pool_records = parts["attacker"]
        if config.threat_model is ThreatModel.ONLINE:
            pool_records = parts["members"] + parts["non_members"] + parts["attacker"]
        pool = write_records(out / "data" / "pool.jsonl", pool_records)
        timings["data_s"] = time.perf_counter() - started

        stage = time.perf_counter()
        target_dir = out / "target"
        train_target(config.base_model, [r["text"] for r in parts["members"]], target_dir, config.target)
        timings["target_s"] = time.perf_counter() - stage

        stage = time.perf_counter()
        # the run directory owns its shadows: once the config is claimed, shadows or features made
        # from other inputs (another pool after the data changed) are recomputed, never refused or kept
        train_shadows_job(base=config.base_model, data=str(pool), out=str(out / "shadows"),
                          n_shadows=config.n_shadows, config=config.shadows, seed=config.seed,
                          settings=config.feature_settings(), force=True)
        timings["shadows_s"] = time.perf_counter() - stage

        stage = time.perf_counter()
        fitted = fit_attack_job(shadows=str(out / "shadows"), out=str(out / "attack"),
                                classifier=config.classifier,
                                calibration=config.threat_model.value, seed=config.seed)
        timings["attack_s"] = time.perf_counter() - stage

        stage = time.perf_counter()
        scored = score_job(attack=str(out / "attack"), model=config.base_model, adapter=str(target_dir),
                           data=str(candidates), out=str(out / "scores.csv"), seed=config.seed)
        timings["score_s"] = time.perf_counter() - stage
        timings["total_s"] = time.perf_counter() - started

        scores = scored["table"]
        classifier_name = classifier_label(fitted["attack"].selected)
        attacks = attack_scores(scores, classifier_name)
        setting = {
            "name": config.name,
            "base_model": config.base_model,
            "threat_model": config.threat_model.value,
            "sizes": {"target_members": len(parts["members"]), "target_non_members": len(parts["non_members"]),
                      "attacker_pool": len(pool_records), "shadows": config.n_shadows},
            "target_training": config.target.to_dict(),
            "shadow_training": config.shadows.to_dict(),
            "seeds": {"run": config.seed, "split": config.split.seed},
            "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
        }
        report = write_report(out / "report", labels=scores["label"].to_numpy(), attacks=attacks, setting=setting,
                              seed=config.seed, best=classifier_name, paired_with=classifier_name)
        write_json_atomic(out / "run.json", {"config_hash": config_hash(config), "timings_s": timings,
                                             "data": provenance, "library_versions": library_versions()})
        logger.info("report: %s", out / "report" / "report.md")
    return report


def train_target(base_model: str, members: list[str], target_dir: Path, training: Any) -> None:
    """The target's LoRA fine-tune on its members, unless ``target_dir`` holds one that verifies
    and was trained from the same base, with the same settings, on the same texts in the same
    order (the manifest's ``ids_hash``)."""
    from shadow.adapter import ids_hash, read_manifest, verify_adapter
    from shadow.finetune import finetune

    if _adapter_verifies(verify_adapter, target_dir):
        manifest = read_manifest(target_dir)
        stale = target_staleness(manifest, base_model=base_model, training=training, texts_hash=ids_hash(members))
        if not stale:
            logger.info("stage: target %s is complete and verified; skipping it", target_dir)
            return
        logger.info("stage: target %s was trained on other inputs (%s); training it again", target_dir,
                    ", ".join(stale))
    logger.info("stage: target fine-tune on %d members -> %s", len(members), target_dir)
    finetune(base_model, members, target_dir, training, overwrite=True)


def target_staleness(manifest: dict[str, Any], *, base_model: str, training: Any, texts_hash: str) -> list[str]:
    """Which inputs of an adapter's manifest differ from those asked for (empty: it can be reused)."""
    from shadow.finetune import FinetuneConfig

    stale = []
    recorded = manifest.get("config")
    try:
        if recorded is None or FinetuneConfig.from_dict(recorded) != training:
            stale.append("settings")
    except ConfigError:
        stale.append("settings")
    if manifest.get("ids_hash") != texts_hash:
        stale.append("training texts")
    if (manifest.get("base_model") or {}).get("spec") != str(base_model):
        stale.append("base model")
    return stale


def classifier_label(selected: str) -> str:
    """The report's name of the shadow classifier."""
    return f"shadow classifier ({selected})"


def attack_scores(scores: pd.DataFrame, classifier_name: str) -> dict[str, np.ndarray]:
    """Every attack's scores in a ``scores.csv``: the classifier, each feature, LiRA and RMIA
    (the numeric columns that are not bookkeeping; a data file's own text fields are not attacks)."""
    attacks = {classifier_name: scores["membership_probability"].to_numpy()}
    attacks.update({c: scores[c].to_numpy() for c in scores.columns
                    if c not in NOT_ATTACKS and pd.api.types.is_numeric_dtype(scores[c])})
    return attacks


def _adapter_verifies(verify: Any, directory: Path) -> bool:
    if not directory.is_dir():
        return False
    try:
        return bool(verify(directory))
    except Exception as exc:  # a damaged adapter is retrained, never trusted
        logger.warning("%s does not verify (%s); training it again", directory, exc)
        return False
