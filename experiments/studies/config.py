"""The configuration of one experiment: a TOML file, validated before anything runs.

``shadowmia run CONFIG.toml [--set section.key=value ...]`` reads one of these. A config
names the data (a text pool on disk, a data set of the ``datasets`` library, or the
built-in synthetic patient records), how the pool is split into the target's members, its
non-members and the attacker's pool, the threat model, how the target and the shadows are
fine-tuned, how many shadows, which features, which attack classifier, and the seed::

    name = "demo"
    base_model = "smollm2-135m"
    threat_model = "offline"
    n_shadows = 4

    [data]
    generator = "patients"
    n_records = 256

    [split]
    target_members = 64
    ...

    [target]          # any field of shadow.finetune.FinetuneConfig
    epochs = 4
    ...

:func:`load_config` reads the file, applies ``--set`` overrides (``target.epochs=6``,
``n_shadows=8``; values are parsed as TOML values, so ``target.lr=2e-3`` is a float and
``features.features="loss,min_k"`` a string; a value that is not valid TOML is taken as a
plain string), checks every section and key against the dataclasses below (an unknown one
is an error naming the file, the dotted key and the allowed keys), checks each value's
type, then builds the frozen dataclasses, whose ``__post_init__`` checks ranges. Every
error is a :class:`~llm_features.errors.ConfigError` that names the file and the dotted key.

:func:`config_toml` writes a config back as TOML that :func:`load_config` reads to an
equal config, and :func:`config_hash` is the SHA-256 of its canonical JSON, with which a
run directory refuses a different config.

TOML has no null: an optional value that is ``None`` is left out of the file (it is the
default), except where the default is not ``None`` (``max_grad_norm``, where ``None``
means no clipping), which is written as the string ``"none"``.

Relative data paths are relative to the current working directory, like every path on
the command line.

``[data]`` names one source: ``path`` (a file), ``dataset`` (a hub name such as
``"fancyzhx/ag_news"`` with its ``split``, or a directory written by ``save_to_disk``) or
``generator``. Since a ``--set`` cannot remove a key, the source named on the command line
wins: ``--set data.path=FILE`` or ``--set data.dataset=NAME`` replaces the file's ``path`` or
``dataset`` with its ``subset``, ``split`` and ``revision`` (set those again with ``--set``
where the new source needs them). The keys of a data set are left out of :func:`to_dict`
while unset, so configs without one keep the hash they had before data sets existed.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

from llm_features.errors import ConfigError
from llm_features.settings import FeatureSettings
from llm_features.validation import check_float, check_int
from shadow.finetune import FinetuneConfig

__all__ = [
    "DATASET_KEYS",
    "GENERATORS",
    "DataConfig",
    "AuditConfig",
    "AuditExperimentConfig",
    "ExperimentConfig",
    "SplitConfig",
    "ThreatModel",
    "config_hash",
    "config_toml",
    "from_dict",
    "load_config",
    "to_dict",
]

GENERATORS = ("patients",)
"""Built-in data generators: ``"patients"`` = :func:`experiments.data.patients.generate_patient_records`."""

logger = logging.getLogger(__name__)

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_SEED = 2**63 - 1


# ----------------------------------------------------------------------------- checks


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    check_int(value, name=name, low=low, high=high)


def _check_str(name: str, value: Any, *, allowed: str = "a non-empty string") -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}={value!r} must be {allowed}")


# ----------------------------------------------------------------------------- sections


#: The fewest shadows ``run`` accepts: leave-one-shadow-out LiRA, nested once more for model
#: selection, calibrates each text against K - 2 shadows, which must include OUT ones.
MIN_RUN_SHADOWS = 4

#: Keys of ``[data]`` that only a data set (``dataset``) uses.
DATASET_KEYS = ("subset", "split", "revision")
#: A hub data set's name: ``namespace/name`` or a bare canonical ``name``.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
#: New keys are left out of :func:`to_dict` while unset, so that older configs keep their hash.
_OMIT_IF_NONE = {"omit_if_none": True}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the texts come from: a file on disk, a ``datasets`` data set, or a built-in generator.

    Exactly one of ``path``, ``dataset`` and ``generator`` is given. A ``--set`` cannot
    remove a key, so the source named on the command line wins: ``--set data.path=...`` or
    ``--set data.dataset=...`` replaces the file's ``path`` or ``dataset`` together with its
    ``subset``, ``split`` and ``revision`` (give those again with ``--set`` where needed).

    Attributes:
        path: a jsonl/json/csv/tsv/txt/parquet file of texts (relative to the working
            directory); must exist.
        dataset: a data set of the Hugging Face ``datasets`` library (the optional extra
            ``shadowmia[data]``): a local directory written by ``Dataset.save_to_disk`` or
            ``DatasetDict.save_to_disk`` (relative to the working directory; read without
            the network), else a hub name such as ``"fancyzhx/ag_news"``, read through the
            hub and its cache.
        subset: the hub data set's configuration (``name=`` of ``datasets.load_dataset``),
            for data sets that have several; hub names only.
        split: the split to read (``"train"``, ``"test"``, ...). Required for a hub name and
            for a saved ``DatasetDict`` (there is no default: which split is the pool is a
            choice of the experiment); optional for a saved single ``Dataset``, where it must
            match the split the directory records.
        revision: the hub revision (branch, tag or commit) to pin; hub names only.
        text_field: the field (column) holding the text in ``path`` or ``dataset``.
        generator: ``"patients"`` for synthetic (fictional) patient records from
            :mod:`experiments.data.patients`; needs ``n_records``.
        n_records: how many records the generator writes (>= 1); only with ``generator``.
        chunk_tokens: cut long texts into chunks of about this many tokens (8..1_000_000),
            or None to keep texts whole.
    """

    path: str | None = None
    dataset: str | None = dataclasses.field(default=None, metadata=_OMIT_IF_NONE)
    subset: str | None = dataclasses.field(default=None, metadata=_OMIT_IF_NONE)
    split: str | None = dataclasses.field(default=None, metadata=_OMIT_IF_NONE)
    revision: str | None = dataclasses.field(default=None, metadata=_OMIT_IF_NONE)
    text_field: str = "text"
    generator: str | None = None
    n_records: int | None = None
    chunk_tokens: int | None = None

    def __post_init__(self) -> None:
        sources = [(key, getattr(self, key)) for key in ("path", "dataset", "generator")
                   if getattr(self, key) is not None]
        if not sources:
            raise ConfigError(
                "path and generator are both missing, and so is dataset; give path (a jsonl/csv/txt/parquet "
                "file of texts), dataset (a hub name or a save_to_disk directory) or generator (one of "
                f"{list(GENERATORS)})"
            )
        if len(sources) > 1:
            (first, a), (second, b) = sources[:2]
            hint = ("keep one of them in the config file (a --set override cannot remove a key)"
                    if "generator" in (first, second) else
                    "keep one of them (a --set data.path=... or --set data.dataset=... replaces the file's "
                    "path or dataset, so give only one of them on the command line)")
            raise ConfigError(f"{first}={a!r} and {second}={b!r} were both given; {hint}")
        _check_str("text_field", self.text_field)
        for key in DATASET_KEYS:
            value = getattr(self, key)
            if value is not None:
                if self.dataset is None:
                    raise ConfigError(f"{key}={value!r} is only used with dataset; remove it (the texts come "
                                      f"from {sources[0][0]})")
                _check_str(key, value)
        if self.path is not None:
            _check_str("path", self.path, allowed="a path to a file of texts")
            if not Path(self.path).is_file():
                where = Path(self.path).resolve()
                raise ConfigError(
                    f"path={self.path!r} does not exist (looked for {where}); give an existing "
                    "jsonl/csv/txt/parquet file, relative to the working directory, or use "
                    f"generator = {GENERATORS[0]!r}"
                )
        elif self.dataset is not None:
            _check_str("dataset", self.dataset, allowed="a hub name (namespace/name) or a save_to_disk directory")
            self._check_dataset()
        else:
            if self.generator not in GENERATORS:
                raise ConfigError(
                    f"generator={self.generator!r} is not a known generator; allowed: {list(GENERATORS)}"
                )
            if self.n_records is None:
                raise ConfigError(
                    f"n_records is missing; generator={self.generator!r} needs the number of "
                    "records to write (e.g. n_records = 256)"
                )
            _check_int("n_records", self.n_records, 1, 10_000_000)
        if self.generator is None and self.n_records is not None:
            raise ConfigError(
                f"n_records={self.n_records!r} is only used with a generator; remove it "
                f"(the {'file' if self.path is not None else 'data set'}'s texts are all read)"
            )
        if self.chunk_tokens is not None:
            _check_int("chunk_tokens", self.chunk_tokens, 8, 1_000_000)

    @property
    def is_local_dataset(self) -> bool:
        """Whether ``dataset`` names a local directory (else it is a hub name)."""
        return self.dataset is not None and Path(self.dataset).is_dir()

    def _check_dataset(self) -> None:
        """What can be checked of ``dataset`` without loading it: a saved directory's splits,
        a hub name's form and its split (never the network)."""
        directory = Path(self.dataset)
        if directory.is_dir():
            for key in ("subset", "revision"):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        f"{key}={getattr(self, key)!r} applies to a hub data set, but dataset={self.dataset!r} is "
                        f"a local directory, read as saved; remove {key}")
            splits, recorded = _saved_splits(directory, self.dataset)
            if splits is not None:
                if self.split is None:
                    raise ConfigError(f"split is missing; dataset={self.dataset!r} holds the splits {splits}: "
                                      "set split to the one to read (e.g. split = \"test\")")
                if self.split not in splits:
                    raise ConfigError(f"split={self.split!r} is not in dataset={self.dataset!r}; its splits: "
                                      f"{splits}")
            elif self.split is not None and recorded is not None and self.split != recorded:
                raise ConfigError(
                    f"split={self.split!r} but dataset={self.dataset!r} holds one Dataset of split {recorded!r}; "
                    f"set split = {recorded!r} or remove split")
            return
        where = directory.resolve()
        if directory.exists():
            raise ConfigError(f"dataset={self.dataset!r} is a file, not a data set; give a file of texts as "
                              "path = ... (jsonl/csv/txt/parquet), or a save_to_disk directory as dataset")
        if not _HUB_NAME.match(self.dataset):
            raise ConfigError(
                f"dataset={self.dataset!r} is neither a directory (looked for {where}) nor a hub name "
                "(namespace/name, e.g. \"fancyzhx/ag_news\"); give a directory written by save_to_disk, "
                "relative to the working directory, or a hub name")
        if self.split is None:
            raise ConfigError(
                f"split is missing; dataset={self.dataset!r} (no directory {where}, so a hub name) needs the "
                "split to read (e.g. split = \"test\")")


def _saved_splits(directory: Path, name: str) -> tuple[list[str] | None, str | None]:
    """A save_to_disk directory's splits (a DatasetDict) or recorded split (a single Dataset),
    read from its JSON files: ``(splits, None)`` or ``(None, split or None)``."""
    try:
        if (directory / "dataset_dict.json").is_file():
            splits = json.loads((directory / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
            return [str(s) for s in splits], None
        if (directory / "state.json").is_file():
            recorded = json.loads((directory / "state.json").read_text(encoding="utf-8")).get("_split")
            return None, None if recorded is None else str(recorded)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"dataset={name!r}: its save_to_disk metadata cannot be read ({exc}); save the "
                          "data set again") from None
    raise ConfigError(
        f"dataset={name!r} is a directory but not a data set written by save_to_disk (no dataset_dict.json "
        "or state.json in it); save one with Dataset.save_to_disk or DatasetDict.save_to_disk, or give a "
        "file of texts as path")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """How the texts are split: the target's members and non-members, the attacker's pool.

    The three parts are disjoint and drawn with ``seed``; the candidates the attack scores
    are the target's members and non-members.
    """

    target_members: int
    target_non_members: int
    attacker_pool: int
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("target_members", "target_non_members", "attacker_pool"):
            _check_int(name, getattr(self, name), 1, 100_000_000)
        _check_int("seed", self.seed, 0, _MAX_SEED)

    @property
    def total(self) -> int:
        """Texts the split needs."""
        return self.target_members + self.target_non_members + self.attacker_pool


class ThreatModel(str, enum.Enum):
    """What the attacker may train shadows on.

    ``OFFLINE``: the shadows are trained only on the attacker's pool, disjoint from the
    candidates (Shokri et al. 2017). ``ONLINE``: the shadows are also trained with each
    candidate IN for about half of them and OUT for the rest (LiRA online, Carlini et al. 2022).
    """

    OFFLINE = "offline"
    ONLINE = "online"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One experiment, end to end: data, split, threat model, training, features, attack.

    Attributes:
        name: the run's name, used as its directory (``runs/NAME``): letters, digits, ``.``,
            ``_`` and ``-``.
        base_model: the causal LM that the target and the shadows fine-tune (a built-in
            name such as ``smollm2-135m``, a local directory or a hub id).
        data, split: where the texts come from and how they are split.
        threat_model: ``"offline"`` or ``"online"`` (:class:`ThreatModel`).
        target: how the target model is fine-tuned on its members.
        shadows: how each shadow is fine-tuned (may differ from ``target``: the attacker
            rarely knows the target's recipe exactly).
        n_shadows: shadow models (even, 4..4096), so every text is IN for half of them; at
            least 4, since nested leave-one-shadow-out calibration leaves K - 2 references.
        features: how features are computed.
        classifier: ``"auto"`` (chosen by leave-one-shadow-out) or a name in
            :data:`attack_models.CLASSIFIERS`.
        seed: the seed of the shadows' membership matrix, the neighbours and the attack.
    """

    name: str
    base_model: str = "smollm2-135m"
    data: DataConfig
    split: SplitConfig
    threat_model: ThreatModel = ThreatModel.OFFLINE
    target: FinetuneConfig = FinetuneConfig()
    shadows: FinetuneConfig = FinetuneConfig()
    n_shadows: int = 4
    features: FeatureSettings = FeatureSettings()
    classifier: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ConfigError(
                f"name={self.name!r} must be a directory name: letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (e.g. name = \"ag-news-8-shadows\")"
            )
        _check_str("base_model", self.base_model, allowed="a model name or path (e.g. \"smollm2-135m\")")
        for field, cls in (("data", DataConfig), ("split", SplitConfig), ("target", FinetuneConfig),
                           ("shadows", FinetuneConfig), ("features", FeatureSettings)):
            if not isinstance(getattr(self, field), cls):
                raise ConfigError(f"{field}={getattr(self, field)!r} must be a {cls.__name__}")
        try:
            object.__setattr__(self, "threat_model", ThreatModel(self.threat_model))
        except ValueError:
            raise ConfigError(
                f"threat_model={self.threat_model!r} is not allowed; allowed: "
                f"{[t.value for t in ThreatModel]} (offline: shadows only on the attacker's pool; "
                "online: shadows also trained IN/OUT on the candidates)"
            ) from None
        if isinstance(self.n_shadows, bool) or not isinstance(self.n_shadows, int):
            raise ConfigError(f"n_shadows={self.n_shadows!r} must be an even integer in [{MIN_RUN_SHADOWS}, 4096]")
        if not (MIN_RUN_SHADOWS <= self.n_shadows <= 4096 and self.n_shadows % 2 == 0):
            raise ConfigError(
                f"n_shadows={self.n_shadows} is out of range; allowed: even integers in [{MIN_RUN_SHADOWS}, 4096] "
                "(each text is IN for half of the shadows, and the attack's leave-one-shadow-out LiRA "
                "features need OUT shadows for a text after one shadow is held out and another left out)"
            )
        from attack_models.classifiers import CLASSIFIERS

        allowed = ["auto", *CLASSIFIERS]
        if self.classifier not in allowed:
            raise ConfigError(f"classifier={self.classifier!r} is not allowed; allowed: {allowed}")
        _check_int("seed", self.seed, 0, _MAX_SEED)
        if self.data.generator is not None and self.data.n_records < self.split.total:
            raise ConfigError(
                f"split needs {self.split.target_members} + {self.split.target_non_members} + "
                f"{self.split.attacker_pool} = {self.split.total} texts but data.n_records="
                f"{self.data.n_records}; raise data.n_records or shrink the split"
            )

    def feature_settings(self) -> FeatureSettings:
        """The ``[features]`` section with the neighbours seeded by the experiment's ``seed``."""
        return dataclasses.replace(self.features, neighbour_seed=self.seed)


AUDIT_REFERENCES = ("base", "other-canaries")
"""The reference models an audit can compare its targets with (``AuditConfig.reference``)."""

AUDIT_CALIBRATIONS = ("largest", "each")
"""Where an audit calibrates its statistic and guesses (``AuditConfig.calibrate``)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """The ``[audit]`` section of a privacy-audit experiment (:mod:`experiments.studies.audit`).

    Attributes:
        canaries: canary texts (never seen by the base model) that each enter the training
            set with probability 1/2 (>= 2). The attack scores all of them.
        canary_design: how the canaries are built (:mod:`experiments.data.canaries`):
            ``"patient-records"`` (synthetic patient records; the default),
            ``"random-tokens"`` (``canary_tokens`` tokens drawn uniformly from the base
            model's vocabulary, decoded) or ``"rare-token"`` (a patient record ending in the
            token the base model finds least likely after it; Panda et al. 2025, "Privacy
            auditing of large language models", arXiv 2503.06808, find such canaries far
            easier to detect).
            ``"secret-suffix"`` (a patient record's first ``canary_prefix_tokens`` tokens,
            then a secret of ``canary_tokens`` random tokens of its own; score it with
            ``suffix_ratio:tokens=canary_tokens``).
        canary_tokens: the length in tokens of a random-token canary, or of a secret-suffix
            canary's secret (1..100000; below ``target.max_tokens``); unused by the other
            designs.
        canary_prefix_tokens: the tokens of a secret-suffix canary's key, the patient record
            it starts with (1..100000); unused by the other designs.
        canary_repeats: how many copies of an included canary the training set holds (>= 1).
        canary_seed: seed of the canary texts and of which of them are included.
        fillers: the other training texts, drawn from ``[data]`` (>= 0).
        dp_batch_size: the expected batch size of the DP targets and their references
            (Poisson sampling rate ``dp_batch_size / n``); ``None`` (the default) keeps
            ``target.batch_size``. The non-private targets always use ``target.batch_size``.
            For auditing a DP recipe trained with large batches (Li et al. 2022, "Large
            language models can be strong differentially private learners", arXiv
            2110.05679). In a linear model a canary's trace in the last iterate is
            ``q * sqrt(T) / sigma`` noise units, larger for larger q at the same epsilon (0.35
            at batch 8, 0.72 at batch 64 for epsilon 8 over 616 texts and 3 epochs), but on
            the default audit batch 64 proved less than batch 8 (f-DP 0.256 against 0.453 at
            epsilon 8; README, audit section).
        dp_lr: the peak learning rate of the DP targets and their references, in (0, 1];
            ``None`` (the default) keeps ``target.lr``. The non-private targets always use
            ``target.lr``. Under Adam a noise-dominated second moment makes each step move
            every weight by about ``lr`` whatever the noise, so a larger lr enlarges the
            canaries' absolute trace beside variation that does not grow with it; on the
            audit's calibration target at epsilon 8, lr 6e-3 rejected mu 0.256 (AUC 0.667)
            where 2e-3 rejected 0.191 (AUC 0.627) (README, audit section).
        epsilons: the targets' epsilons; ``inf`` trains without DP.
        delta: the delta of the DP guarantee and of the bounds, in (0, 1).
        confidence: the bounds' confidence, in (0, 1).
        statistic: the feature that scores the canaries, fixed before the audit (choosing it
            after seeing the audited scores would invalidate the bounds): one of ``features``,
            or ``"auto"`` (the default), which picks it among ``features`` on a separate
            calibration target with its own canaries and coin flips
            (:func:`experiments.studies.audit.select_statistic`).
        features: the features reported beside it (their AUCs), and the candidates of
            ``"auto"``, e.g. ``"loss,min_k_plus_plus"``; ties under ``"auto"`` go to the
            larger calibration AUC, then to the earlier one.
        reference: the reference model of the features that compare the target with one
            (``reference``, ``suffix_ratio``, ``error_zone``, ...): ``"base"`` (the base
            model; the default) or ``"other-canaries"``: for each epsilon, a fine-tune with
            the target's recipe at that epsilon on another canary draw (its own coins) and
            the same fillers, which learns whatever all canaries share (their format, their
            random tokens) but none of the audited or calibration canaries
            (:func:`experiments.studies.audit.reference_seed`).
        calibrate: where the calibration targets are trained (their own canary draw and coins,
            never the audited ones). ``"largest"`` (the default): one, at the largest of
            ``epsilons``, which chooses the statistic of every target (with ``statistic =
            "auto"``; none is trained for a fixed statistic), and every target is tested over
            the default grid of (k+, k-) guesses with a Bonferroni correction. ``"each"``: one
            per epsilon, which chooses that target's statistic (or keeps the fixed one) *and*
            its guesses: the grid pair with the largest mu_LB on the calibration canaries,
            then the only pair tested on the audited ones, without a correction (it is fixed
            before their scores are seen). A DP target leaks by a small shift of every member,
            not by memorising a few, and the best guesses differ with that shape; on synthetic
            audits a pair so chosen raised mu_LB over the grid's by 15-45% in every setting
            tried (:mod:`experiments.studies.guess_pairs`). The cost is one more training per
            epsilon.
    """

    canaries: int = 512
    canary_design: str = "rare-token"
    canary_tokens: int = 32
    canary_prefix_tokens: int = 24
    canary_repeats: int = 1
    canary_seed: int = 0
    fillers: int = 100
    dp_batch_size: int | None = None
    dp_lr: float | None = None
    epsilons: tuple[float, ...] = (1.0, 8.0, math.inf)
    delta: float = 1e-5
    confidence: float = 0.95
    statistic: str = "auto"
    features: str = "reference,suffix_ratio,loss,min_k_plus_plus,zlib_ratio,error_zone"
    reference: str = "base"
    calibrate: str = "largest"

    def __post_init__(self) -> None:
        from experiments.data.canaries import CANARY_DESIGNS
        from llm_features.registry import parse_features

        _check_int("canaries", self.canaries, 2, 10_000_000)
        if not isinstance(self.canary_design, str) or self.canary_design not in CANARY_DESIGNS:
            raise ConfigError(f"canary_design={self.canary_design!r} must be one of "
                              f"{', '.join(map(repr, CANARY_DESIGNS))}, e.g. canary_design = \"rare-token\"")
        _check_int("canary_tokens", self.canary_tokens, 1, 100_000)
        _check_int("canary_prefix_tokens", self.canary_prefix_tokens, 1, 100_000)
        _check_int("canary_repeats", self.canary_repeats, 1, 10_000)
        if self.reference not in AUDIT_REFERENCES:
            raise ConfigError(f"reference={self.reference!r} must be one of {', '.join(map(repr, AUDIT_REFERENCES))}, "
                              "e.g. reference = \"other-canaries\"")
        if self.calibrate not in AUDIT_CALIBRATIONS:
            raise ConfigError(f"calibrate={self.calibrate!r} must be one of "
                              f"{', '.join(map(repr, AUDIT_CALIBRATIONS))}, e.g. calibrate = \"each\"")
        _check_int("canary_seed", self.canary_seed, 0, _MAX_SEED)
        _check_int("fillers", self.fillers, 0, 100_000_000)
        if self.dp_batch_size is not None:
            _check_int("dp_batch_size", self.dp_batch_size, 1, 100_000_000)
        if self.dp_lr is not None:
            check_float(self.dp_lr, name="dp_lr", low=0.0, high=1.0, low_open=True,
                        hint="the DP targets' learning rate, e.g. dp_lr = 6e-3")
        numbers = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in self.epsilons)
        epsilons = tuple(float(e) for e in self.epsilons) if numbers else ()
        if not epsilons or any(not e > 0 for e in epsilons) or len(set(epsilons)) != len(epsilons):
            raise ConfigError(f"epsilons={list(self.epsilons)!r}: give distinct positive numbers (inf: no DP), "
                              "e.g. epsilons = [1.0, 8.0, inf]")
        object.__setattr__(self, "epsilons", epsilons)
        for name in ("delta", "confidence"):
            value = check_float(getattr(self, name), name=name, low=0, high=1, low_open=True, high_open=True)
            object.__setattr__(self, name, value)
        try:
            columns = [r.column for r in parse_features(self.features)]
        except ConfigError as exc:
            raise ConfigError(f"features={self.features!r}: {exc}") from None
        choices = ", ".join(["auto", *columns])
        if not isinstance(self.statistic, str) or self.statistic == "auto":
            return
        try:
            statistic = [r.column for r in parse_features(self.statistic)]
        except ConfigError:
            statistic = []
        if len(statistic) != 1 or statistic[0] not in columns:
            raise ConfigError(f"statistic={self.statistic!r} must be \"auto\" or one of the features "
                              f"(audit.features): {choices}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditExperimentConfig:
    """A privacy audit: targets fine-tuned at several epsilons on canaries and fillers.

    Attributes:
        name: the run's name (its directory ``runs/NAME``).
        base_model: the causal LM the targets fine-tune.
        data: where the filler texts come from.
        target: how each target is fine-tuned; its ``dp_epsilon`` is set from
            ``audit.epsilons`` (and ``dp_delta`` from ``audit.delta``).
        audit: the canaries, the epsilons and the bounds' settings.
        seed: the seed of the filler draw.
    """

    name: str
    base_model: str = "smollm2-135m"
    data: DataConfig
    target: FinetuneConfig = FinetuneConfig()
    audit: AuditConfig = AuditConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ConfigError(f"name={self.name!r} must be a directory name: letters, digits, '.', '_' and '-'")
        _check_str("base_model", self.base_model, allowed="a model name or path (e.g. \"smollm2-135m\")")
        _check_int("seed", self.seed, 0, _MAX_SEED)
        if self.target.dp:
            raise ConfigError("target.dp_epsilon / target.dp_noise_multiplier: an audit sets each target's "
                              "epsilon from audit.epsilons; remove them from [target]")
        if self.target.max_grad_norm is None:
            raise ConfigError("target.max_grad_norm is needed: it is the per-text clipping norm of DP training")
        if self.audit.canary_design == "random-tokens" and self.audit.canary_tokens >= self.target.max_tokens:
            raise ConfigError(f"audit.canary_tokens={self.audit.canary_tokens} must be below target.max_tokens="
                              f"{self.target.max_tokens}, or training would cut the random-token canaries; lower "
                              "audit.canary_tokens or raise target.max_tokens")
        secret = self.audit.canary_prefix_tokens + self.audit.canary_tokens
        if self.audit.canary_design == "secret-suffix" and secret > self.target.max_tokens:
            raise ConfigError(f"audit.canary_prefix_tokens + audit.canary_tokens = {secret} must be at most "
                              f"target.max_tokens={self.target.max_tokens}, or training would cut the secrets; lower "
                              "them or raise target.max_tokens")
        if self.audit.canary_design == "rare-token" and self.target.max_tokens < 3:
            raise ConfigError(f"target.max_tokens={self.target.max_tokens}: a rare-token canary needs at least 3 "
                              "tokens (a record and its rare last token)")


# ----------------------------------------------------------------------------- schema

@dataclasses.dataclass(frozen=True)
class Schema:
    """What a kind of config file holds: its dataclass, its sections (TOML tables) and the
    dataclass each builds, the required keys, and sections that default to another's values."""

    config: type
    sections: Mapping[str, type]
    required: tuple[str, ...]
    inherit: Mapping[str, str]
    comments: Mapping[str, str]

    @property
    def top_level(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config) if f.name not in self.sections]


EXPERIMENT = Schema(
    config=ExperimentConfig,
    sections={"data": DataConfig, "split": SplitConfig, "target": FinetuneConfig, "shadows": FinetuneConfig,
              "features": FeatureSettings},
    required=("name", "data", "split"),
    inherit={"shadows": "target"},  # by default the attacker copies the target's recipe
    comments={
        "data": "Where the texts come from: path = a jsonl/csv/txt/parquet file, dataset = a hub name or a "
                "save_to_disk directory (with split), or generator = \"patients\".",
        "split": "Disjoint parts of the texts: the target's members and non-members (the candidates), "
                 "the attacker's pool.",
        "target": "How the target model is fine-tuned (LoRA; any field of shadow.finetune.FinetuneConfig).",
        "shadows": "How each shadow model is fine-tuned (the attacker's guess of the target's recipe).",
        "features": "How the attack's features are computed on every model.",
    },
)
AUDIT = Schema(
    config=AuditExperimentConfig,
    sections={"data": DataConfig, "target": FinetuneConfig, "audit": AuditConfig},
    required=("name", "data", "audit"),
    inherit={},
    comments={
        "data": "Where the filler texts of the training set come from.",
        "target": "How each target is fine-tuned (its dp_epsilon comes from audit.epsilons).",
        "audit": "The canaries, the targets' epsilons and the bounds' delta and confidence.",
    },
)
_SCHEMAS = {ExperimentConfig: EXPERIMENT, AuditExperimentConfig: AUDIT}


def _file_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields of a section that a config file sets (not those marked ``config_file: False``,
    such as the neighbours' seed, which an experiment takes from its own ``seed``)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("config_file", True)]


def _fields(cls: type) -> list[str]:
    return [f.name for f in _file_fields(cls)]


def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    if cls is ExperimentConfig:
        hints["threat_model"] = str
    return hints


def _allowed_types(hint: Any) -> tuple[list[type], bool]:
    """The Python types a TOML value may have for ``hint``, and whether None is allowed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        allowed: list[type] = []
        optional = False
        for arg in typing.get_args(hint):
            if arg is type(None):
                optional = True
            else:
                allowed += _allowed_types(arg)[0]
        return allowed, optional
    if origin in (tuple, list):
        return [list], False
    return [hint], False


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list"}


def _check_type(dotted: str, value: Any, hint: Any) -> Any:
    """``value`` if it has a type ``hint`` allows (an int is a float too), else a ConfigError."""
    allowed, optional = _allowed_types(hint)
    if optional and value is None:
        return None
    if optional and str not in allowed and isinstance(value, str) and value.lower() == "none":
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is list and isinstance(value, list):
            inner = typing.get_args(hint)
            element = next((typing.get_args(a)[0] for a in inner if typing.get_origin(a) in (tuple, list)), None)
            if element is None or all(isinstance(v, element) for v in value):
                return value
        if kind in (str, bool) and type(value) is kind:
            return value
    expected = " or ".join(_TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in allowed)
    if any(k is list for k in allowed):
        expected += " (of strings)"
    if optional and str not in allowed:
        expected += ' or "none"'
    received = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict):
        received = "table"
    raise ConfigError(f"{dotted}={value!r}: expected a value of type {expected}, received a {received}")


def _prefixed(prefix: str, exc: ConfigError) -> ConfigError:
    return ConfigError(f"{prefix}{exc}")


# ----------------------------------------------------------------------------- building


def from_dict(data: Mapping[str, Any], *, source: str = "config", schema: Schema = EXPERIMENT) -> Any:
    """Build the config of ``schema`` (an :class:`ExperimentConfig` by default) from a nested
    mapping (the parsed TOML).

    Every section and key is checked against the dataclasses first, then every value's
    type, then the ranges; errors name ``source`` and the dotted key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table of settings, received {type(data).__name__}")
    sections_of, top_level = schema.sections, schema.top_level
    allowed_top = top_level + [f"[{s}]" for s in sections_of]
    # 1. names: every section and key must be known, before anything is built
    for key, value in data.items():
        if key in sections_of:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{source}: {key} must be a table ([{key}] with keys {_fields(sections_of[key])}), "
                    f"received {value!r}"
                )
            known = _fields(sections_of[key])
            for inner in value:
                if inner not in known:
                    raise ConfigError(
                        f"{source}: unknown key {key}.{inner!s}; allowed keys in [{key}]: {', '.join(known)}"
                    )
        elif key not in top_level:
            raise ConfigError(
                f"{source}: unknown key or section {key!r}; allowed top-level keys and sections: "
                f"{', '.join(allowed_top)}"
            )
    for required in schema.required:
        if required not in data:
            what = f"the [{required}] section" if required in sections_of else f"the key {required!r}"
            raise ConfigError(f"{source}: {what} is missing; it is required")
    # 2. types and 3. ranges, section by section
    kwargs: dict[str, Any] = {}
    top_hints = _hints(schema.config)
    for key, value in data.items():
        if key in sections_of:
            continue
        try:
            kwargs[key] = _check_type(key, value, top_hints[key])
        except ConfigError as exc:
            raise _prefixed(f"{source}: ", exc) from None
    sections = dict(data)
    for section, origin in schema.inherit.items():
        if section not in sections and origin in sections:
            sections[section] = sections[origin]
    for section, cls in sections_of.items():
        if section not in sections:
            continue
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for key, value in sections[section].items():
            try:
                values[key] = _check_type(f"{section}.{key}", value, hints[key])
            except ConfigError as exc:
                raise _prefixed(f"{source}: ", exc) from None
        try:
            kwargs[section] = cls(**values)
        except ConfigError as exc:
            raise _prefixed(f"{source}: {section}.", exc) from None
        except TypeError as exc:  # a required field is missing
            missing = [f.name for f in dataclasses.fields(cls)
                       if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                       and f.name not in values]
            raise ConfigError(
                f"{source}: [{section}] is missing the required key(s) {[f'{section}.{m}' for m in missing]} ({exc})"
            ) from None
    try:
        return schema.config(**kwargs)
    except ConfigError as exc:
        raise _prefixed(f"{source}: ", exc) from None


def _parse_override(item: str, source: str) -> tuple[list[str], Any]:
    """``"target.epochs=6"`` -> (["target", "epochs"], 6); the value is parsed as TOML."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(
            f"{source}: --set {item!r} must look like section.key=value (e.g. target.epochs=6) "
            "or key=value for a top-level key (e.g. n_shadows=8)"
        )
    dotted, _, text = item.partition("=")
    dotted, text = dotted.strip(), text.strip()
    parts = dotted.split(".")
    if not all(parts) or len(parts) > 2:
        raise ConfigError(
            f"{source}: --set {item!r}: {dotted!r} is not a key; write section.key (e.g. target.epochs) "
            "or a top-level key (e.g. n_shadows)"
        )
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text  # not a TOML value: a bare string such as loss,min_k
    return parts, value


def _apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str,
                      schema: Schema = EXPERIMENT) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    sections_of, top_level = schema.sections, schema.top_level
    allowed_top = top_level + [f"{s}.KEY" for s in sections_of]
    overridden: set[tuple[str, str]] = set()
    for item in overrides:
        parts, value = _parse_override(item, source)
        if len(parts) == 1:
            (key,) = parts
            if key in sections_of:
                raise ConfigError(
                    f"{source}: --set {item!r}: {key} is a section; set one of its keys with "
                    f"--set {key}.KEY=VALUE; allowed keys in [{key}]: {', '.join(_fields(sections_of[key]))}"
                )
            if key not in top_level:
                raise ConfigError(
                    f"{source}: --set {item!r}: unknown key {key!r}; allowed: {', '.join(allowed_top)}"
                )
            data[key] = value
        else:
            section, key = parts
            if section not in sections_of:
                raise ConfigError(
                    f"{source}: --set {item!r}: unknown section {section!r} in {section}.{key}; "
                    f"allowed sections: {', '.join(sections_of)}; top-level keys: {', '.join(top_level)}"
                )
            known = _fields(sections_of[section])
            if key not in known:
                raise ConfigError(
                    f"{source}: --set {item!r}: unknown key {section}.{key}; allowed keys in "
                    f"[{section}]: {', '.join(known)}"
                )
            origin = schema.inherit.get(section)
            if origin and section not in data and isinstance(data.get(origin), Mapping):
                data[section] = dict(data[origin])  # a changed shadow recipe starts from the target's
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: {section} must be a table, received {table!r}")
            table[key] = value
            overridden.add((section, key))
    if sections_of.get("data") is DataConfig and isinstance(data.get("data"), dict):
        _replace_data_source(data["data"], {key for section, key in overridden if section == "data"}, source)
    return data


def _replace_data_source(table: dict[str, Any], overridden: set[str], source: str) -> None:
    """The rule by which ``--set`` switches ``[data]`` to another file or data set.

    A ``--set`` cannot remove a key, so the source named on the command line wins: when it
    sets ``data.path`` or ``data.dataset``, the file's ``path``, ``dataset``, ``subset``,
    ``split`` and ``revision`` are dropped, except those set on the command line too
    (``--set data.dataset=DIR --set data.split=test``). ``text_field`` and ``chunk_tokens``
    stay. A generator in the file, or ``path`` and ``dataset`` both on the command line,
    stay an error of :class:`DataConfig`.
    """
    if not overridden & {"path", "dataset"}:
        return
    dropped = [key for key in ("path", "dataset", *DATASET_KEYS) if key in table and key not in overridden]
    if dropped:
        logger.info("%s: the data source given with --set replaces data.%s of the file", source,
                    ", data.".join(dropped))
    for key in dropped:
        del table[key]


def load_config(path: str | os.PathLike, *, overrides: Iterable[str] = ()) -> Any:
    """Read a TOML experiment config, apply ``--set`` overrides (``section.key=value``), validate.

    A file with an ``[audit]`` section is a privacy audit (:class:`AuditExperimentConfig`);
    any other is an :class:`ExperimentConfig`.

    Raises:
        ConfigError: the file is missing or not valid TOML (the message names the file and
            line), a section or key is unknown (naming the dotted key and the allowed ones),
            a value has the wrong type (naming the type received and the type expected) or
            is out of range, or the data file does not exist.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"config file {source} does not exist; give the path to a .toml experiment config")
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}; fix the file at that line") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc}); save the config as UTF-8") from None
    schema = AUDIT if "audit" in data else EXPERIMENT
    data = _apply_overrides(data, list(overrides), source, schema)
    return from_dict(data, source=source, schema=schema)


# ----------------------------------------------------------------------------- writing


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready nested dict of every setting that :func:`from_dict` reads back."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, FinetuneConfig):
            value = value.to_dict()
        elif dataclasses.is_dataclass(value):
            value = {f.name: getattr(value, f.name) for f in _file_fields(value)
                     if not (f.metadata.get("omit_if_none") and getattr(value, f.name) is None)}
        elif isinstance(value, ThreatModel):
            value = value.value
        out[field.name] = value
    return out


def config_hash(config: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`to_dict`: equal configs, equal hashes."""
    canonical = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                           allow_nan=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        # a JSON string is a TOML basic string, once DEL (allowed by JSON) is escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def _table_lines(cls: type, values: Mapping[str, Any]) -> list[str]:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    lines = []
    for key, value in values.items():
        if value is None:
            if defaults.get(key) is None:
                continue  # None is the default: TOML has no null
            value = "none"
        lines.append(f"{key} = {_toml_value(value)}")
    return lines


def config_toml(config: Any) -> str:
    """The config as TOML text that :func:`load_config` reads back to an equal config."""
    schema = _SCHEMAS[type(config)]
    data = to_dict(config)
    lines = [
        f"# shadowmia experiment config (sha256 of its canonical JSON: {config_hash(config)})",
        "",
        *_table_lines(schema.config, {k: data[k] for k in schema.top_level}),
    ]
    for section, cls in schema.sections.items():
        lines += ["", f"# {schema.comments[section]}", f"[{section}]", *_table_lines(cls, data[section])]
    return "\n".join(lines) + "\n"
