"""shadowmia: shadow-model membership inference for fine-tuned language models.

Every subcommand validates its arguments before loading a model, prints errors from the
:class:`~llm_features.errors.ShadowMIAError` family as one clear line (exit status 2) and
operating-system errors (disk full, permission denied, a path that is a directory) as one
line naming the path (exit status 1), and logs to stderr (``-vv`` adds the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from llm_features.errors import ConfigError, ShadowMIAError

if TYPE_CHECKING:
    from experiments.studies.config import AuditExperimentConfig
    from llm_features.settings import FeatureSettings
    from shadow.finetune import FinetuneConfig
    from shadow.ray_backend import RayOptions

logger = logging.getLogger("shadowmia")

Handler = Callable[[argparse.Namespace], int]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="model weights dtype; auto = bfloat16 where the hardware runs it fast")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-tokens", type=int, default=512, help="texts longer than this are truncated")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (32 was fastest on a 2-core CPU)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with a hub repository (it runs with your privileges)")


def _features_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features", help="extract membership features of a model on texts",
        description="Score texts with a model once and write one row per text with every feature.")
    parser.add_argument("--model", required=True, help="built-in name (smollm2-135m), directory, .gguf file or hub id")
    parser.add_argument("--adapter", help="peft adapter directory applied on top of --model")
    parser.add_argument("--reference", help="reference model for the reference feature (default: --model without --adapter)")
    parser.add_argument("--data", required=True, help=".jsonl, .json, .csv, .txt or .parquet file of texts")
    parser.add_argument("--text-field", default="text", help="name of the field holding the text")
    parser.add_argument("--features", default="all",
                        help="comma-separated feature names with optional hyperparameters, e.g. loss,min_k:k=0.1")
    parser.add_argument("--neighbours", type=int, default=5, help="neighbours per text for neighbour_gap")
    parser.add_argument("--neighbour-fraction", type=float, default=0.15, help="fraction of tokens resampled")
    parser.add_argument("--neighbour-top-k", type=int, default=20, help="neighbours resample among the top-k tokens")
    parser.add_argument("--neighbour-model", help="masked LM (name or path) to make neighbours instead of the reference LM")
    parser.add_argument("--seed", type=int, default=0, help="seed of the neighbour generator")
    parser.add_argument("--out", required=True, help="output .parquet file")
    parser.add_argument("--chunk-size", type=int, metavar="N",
                        help="texts scored and written at a time (default 4096): memory holds one chunk's scores, "
                             "whatever the number of texts")
    _add_model_options(parser)
    parser.set_defaults(handler=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    from experiments.jobs.features import feature_summary, features_job, read_feature_columns
    from llm_features.extract import DEFAULT_CHUNK_SIZE
    from llm_features.registry import parse_features

    out = features_job(model=args.model, adapter=args.adapter, reference=args.reference, data=args.data,
                       text_field=args.text_field, settings=_feature_settings(args), dtype=args.dtype,
                       device=args.device, out=args.out, trust_remote_code=args.trust_remote_code,
                       chunk_size=DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size)
    columns = [r.column for r in parse_features(args.features)]
    table = read_feature_columns(out, columns)
    summary = feature_summary(table, columns)
    print(f"{len(table)} texts -> {args.out}")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _add_finetune_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA fine-tuning")
    group.add_argument("--epochs", type=int, default=3)
    group.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW")
    group.add_argument("--lora-rank", type=int, default=8)
    group.add_argument("--lora-alpha", type=float, default=16.0)
    group.add_argument("--lora-dropout", type=float, default=0.0)
    group.add_argument("--max-tokens", type=int, default=128, help="training texts are truncated to this")
    group.add_argument("--batch-size", type=int, default=8, help="texts per optimiser step")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    def optional_float(text: str) -> float | None:
        if text.strip().lower() == "none":
            return None
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None

    group.add_argument("--max-grad-norm", type=optional_float, default=1.0, metavar="C",
                       help="gradient clipping norm ('none': no clipping); with DP, the per-text clipping norm")
    private = parser.add_argument_group("differential privacy (DP-SGD with opacus on the LoRA parameters)")
    private.add_argument("--dp-epsilon", type=float, metavar="E",
                         help="train with DP to this epsilon (the noise multiplier is computed from it)")
    private.add_argument("--dp-delta", type=float, metavar="D",
                         help="delta of the (epsilon, delta) guarantee (default 1e-5; keep it below 1/texts)")
    private.add_argument("--dp-noise-multiplier", type=float, metavar="S",
                         help="train with DP at this noise multiplier instead of a target epsilon")
    private.add_argument("--dp-accountant", choices=("rdp", "prv"), default="rdp",
                         help="privacy accountant (default: rdp)")


def _finetune_config(args: argparse.Namespace) -> "FinetuneConfig":
    from shadow.finetune import FinetuneConfig

    return FinetuneConfig(epochs=args.epochs, lr=args.lr, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                          lora_dropout=args.lora_dropout, max_tokens=args.max_tokens, batch_size=args.batch_size,
                          seed=args.seed, max_grad_norm=args.max_grad_norm, dp_epsilon=args.dp_epsilon,
                          dp_delta=args.dp_delta, dp_noise_multiplier=args.dp_noise_multiplier,
                          dp_accountant=args.dp_accountant)


def _finetune_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("finetune", help="LoRA fine-tune a model on texts (e.g. a target for experiments)")
    parser.add_argument("--base", required=True, help="base model: built-in name, directory, .gguf or hub id")
    parser.add_argument("--data", required=True, help="training texts")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--out", required=True, help="adapter directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing adapter directory")
    _add_finetune_options(parser)
    parser.set_defaults(handler=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from experiments.jobs.finetune import finetune_job

    manifest = finetune_job(base=args.base, data=args.data, out=args.out, config=_finetune_config(args),
                            text_field=args.text_field, device=args.device, overwrite=args.overwrite)
    print(f"adapter -> {args.out}")
    print(f"  texts {manifest['n_texts']}, steps {manifest['steps']}, tokens {manifest['tokens_trained']}, "
          f"{manifest['tokens_per_s']:.0f} tokens/s, wall {manifest['wall_time_s']:.1f} s")
    curve = manifest["loss_curve"]
    print(f"  training loss: {curve[0]:.4f} (first step) -> {curve[-1]:.4f} (last step)")
    privacy = manifest.get("dp")
    if privacy:
        print(f"  DP-SGD: epsilon {privacy['epsilon']:.3f} at delta {privacy['delta']:g} ({privacy['accountant']}), "
              f"noise multiplier {privacy['noise_multiplier']:.4f}, clipping norm {privacy['max_grad_norm']:g}, "
              f"Poisson sampling rate {privacy['sample_rate']:.4g}, {privacy['steps']} steps")
    return 0


def _add_feature_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("features")
    group.add_argument("--features", default="all", help="comma-separated feature names (default: all)")
    group.add_argument("--neighbours", type=int, default=5, help="neighbours per text for neighbour_gap")
    group.add_argument("--neighbour-fraction", type=float, default=0.15, help="fraction of tokens resampled")
    group.add_argument("--neighbour-top-k", type=int, default=20, help="neighbours resample among the top-k tokens")
    group.add_argument("--neighbour-model", help="masked LM for neighbours instead of the base LM")
    group.add_argument("--feature-max-tokens", type=int, default=512, help="texts are scored up to this many tokens")
    group.add_argument("--feature-batch-size", type=int, default=32, help="texts per scoring pass")
    group.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))


def _train_shadows_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-shadows", help="train K shadow LoRA models and extract their features",
                                   description="Each pool text is IN for exactly half of the K shadows. "
                                               "Resumable: verified shadows and feature tables are skipped.")
    parser.add_argument("--base", required=True, help="the base model the target was fine-tuned from")
    parser.add_argument("--data", required=True, help="the attacker's pool of texts")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--n-shadows", type=int, required=True, help="K, even and >= 2")
    parser.add_argument("--out", required=True, help="shadow directory (created, or resumed)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="ray: each shadow (fine-tune + features) is one Ray task; no shared filesystem needed")
    parser.add_argument("--workers", type=int, help="Ray: CPUs of the local Ray instance (default 2)")
    parser.add_argument("--ray-address", help="Ray: address of an existing cluster (shadowmia installed on its nodes)")
    parser.add_argument("--cpus-per-shadow", type=int, default=1, help="Ray: CPUs per shadow task (its torch threads)")
    parser.add_argument("--gpus-per-shadow", type=float, default=0.0,
                        help="Ray: GPUs per shadow task, fractions allowed (0.5: two shadows per GPU); > 0 runs on cuda")
    parser.add_argument("--ray-max-retries", type=int, default=3,
                        help="Ray: reruns of a shadow task whose worker died (default 3)")
    parser.add_argument("--ray-working-dir", action="store_true",
                        help="Ray: ship this checkout to the workers instead of using the shadowmia installed there")
    parser.add_argument("--force", action="store_true", help="replace shadows made with another config")
    _add_finetune_options(parser)
    _add_feature_settings(parser)
    parser.set_defaults(handler=_run_train_shadows)


#: The flag of each FeatureSettings field, by command (train-shadows prefixes the scoring
#: sizes with "feature-": its --max-tokens and --batch-size are the fine-tune's).
_SETTINGS_FLAGS = {"features": "--features", "neighbours": "--neighbours", "neighbour_fraction": "--neighbour-fraction",
                   "neighbour_top_k": "--neighbour-top-k", "masked_lm": "--neighbour-model", "neighbour_seed": "--seed"}


def _feature_settings(args: argparse.Namespace, *, prefix: str = "") -> "FeatureSettings":
    """The one :class:`~llm_features.settings.FeatureSettings` of a command's flags; a bad value
    is reported under the flag the user typed."""
    from llm_features.settings import FeatureSettings, SettingsError

    sizes = {"max_tokens": getattr(args, f"{prefix}max_tokens"), "batch_size": getattr(args, f"{prefix}batch_size")}
    flags = {**_SETTINGS_FLAGS, "max_tokens": f"--{prefix.replace('_', '-')}max-tokens",
             "batch_size": f"--{prefix.replace('_', '-')}batch-size"}
    try:
        return FeatureSettings(features=args.features, neighbours=args.neighbours,
                               neighbour_fraction=args.neighbour_fraction, neighbour_top_k=args.neighbour_top_k,
                               masked_lm=args.neighbour_model, neighbour_seed=args.seed, **sizes)
    except SettingsError as exc:
        raise ConfigError(f"{flags[exc.field]} {exc.value!r}: {exc.reason}") from None


def _run_train_shadows(args: argparse.Namespace) -> int:
    from experiments.jobs.shadows import train_shadows_job

    settings = _feature_settings(args, prefix="feature_")
    table = train_shadows_job(base=args.base, data=args.data, out=args.out, n_shadows=args.n_shadows,
                              config=_finetune_config(args), seed=args.seed, settings=settings,
                              text_field=args.text_field, backend=args.backend, ray=_ray_options(args),
                              dtype=args.dtype, device=args.device, force=args.force)
    print(f"{args.n_shadows} shadows, {table['id'].nunique()} texts -> {args.out}")
    return 0


def _ray_options(args: argparse.Namespace) -> "RayOptions | None":
    """The Ray flags of ``train-shadows`` (None with the local backend, which ignores them)."""
    from shadow.ray_backend import RayOptions

    if args.backend != "ray":
        return None
    return RayOptions(address=args.ray_address, workers=args.workers, cpus_per_shadow=args.cpus_per_shadow,
                      gpus_per_shadow=args.gpus_per_shadow, max_retries=args.ray_max_retries,
                      working_dir=args.ray_working_dir)


def _fit_attack_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fit-attack", help="fit the attack classifier on the shadows' features",
                                   description="Compares classifiers by leave-one-shadow-out and keeps the best "
                                               "(or the one named).")
    parser.add_argument("--shadows", required=True, help="directory written by train-shadows")
    parser.add_argument("--out", required=True, help="attack directory to write")
    parser.add_argument("--classifier", default="auto",
                        help="auto, threshold, logistic, random_forest, xgboost or mlp")
    parser.add_argument("--features", help="subset of the shadows' features (default: all of them)")
    parser.add_argument("--calibrated", nargs="?", const="online", default="offline",
                        choices=("none", "offline", "online"),
                        help="per-text calibrated inputs against the shadows, besides the raw features: offline "
                             "(default: LiRA offline of the loss and the calibrated view cal_<feature> of every "
                             "feature; any candidate can be scored), online (LiRA online too; candidates must be in "
                             "the shadow pool) or none; --calibrated alone means online")
    parser.add_argument("--reference-draws", type=int, default=None,
                        help="score a candidate outside the shadow pool against this many subsets of the shadows, "
                             "sized like the training rows' references, and average the classifier's probability "
                             "(matched-reference scoring; default 64, 0: once against all shadows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it holds something other than an attack (an existing attack "
                             "is always replaced, once the new one is complete)")
    parser.set_defaults(handler=_run_fit_attack)


def _run_fit_attack(args: argparse.Namespace) -> int:
    from experiments.jobs.attack import fit_attack_job

    result = fit_attack_job(shadows=args.shadows, out=args.out, classifier=args.classifier,
                            features=args.features, calibration=args.calibrated, seed=args.seed,
                            overwrite=args.overwrite,
                            **({} if args.reference_draws is None else {"reference_draws": args.reference_draws}))
    print("leave-one-shadow-out:")
    print(result["results"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"selected: {result['selected']} -> {args.out}")
    return 0


def _score_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help="membership probability of each candidate text under a target")
    parser.add_argument("--attack", required=True, help="directory written by fit-attack")
    parser.add_argument("--model", required=True, help="target model (the base when --adapter is given)")
    parser.add_argument("--adapter", help="the target's peft adapter directory")
    parser.add_argument("--data", required=True, help="candidate texts (a label field gives metrics)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--out", required=True, help="output .csv")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.add_argument("--no-calibration", dest="calibration", action="store_false",
                        help="skip LiRA/RMIA; for candidates outside the shadow pool they cost one forward pass "
                             "per shadow over the candidates")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with the target's hub repository")
    parser.set_defaults(handler=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from experiments.jobs.score import score_job

    summary = score_job(attack=args.attack, model=args.model, adapter=args.adapter, data=args.data, out=args.out,
                        text_field=args.text_field, dtype=args.dtype, device=args.device, seed=args.seed,
                        trust_remote_code=args.trust_remote_code, calibration=args.calibration)
    print(f"{summary['n']} candidates -> {summary['out']}")
    for name, metrics in summary.get("metrics", {}).items():
        print(f"{name:>14}: ROC AUC {metrics['auc']:.4f} [{metrics['auc_ci_low']:.4f}, {metrics['auc_ci_high']:.4f}]"
              f"  TPR@0.1%FPR {metrics['tpr_at_0.1%fpr']:.4f}  TPR@1%FPR {metrics['tpr_at_1%fpr']:.4f}"
              f"  TPR@10%FPR {metrics['tpr_at_10%fpr']:.4f}")
    return 0


DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.toml"


def _add_experiment_options(parser: argparse.ArgumentParser, *, example: str) -> None:
    """CONFIG, --out, --set and --force: the options of every command that runs an experiment config."""
    parser.add_argument("config", help=f"experiment config (.toml), e.g. {example}")
    parser.add_argument("--out", help="run directory (default: runs/NAME)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set target.epochs=6 (repeatable)")
    parser.add_argument("--force", action="store_true", help="continue a run directory made with another config")


def _run_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="an experiment with known truth, end to end, with a report",
                                   description="Trains the target and the shadows, fits the attack, scores the "
                                               "candidates and writes report/ (resumable).")
    _add_experiment_options(parser, example="experiments/configs/demo.toml")
    parser.set_defaults(handler=_run_run)


def _demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the end-to-end demo on synthetic patient records (make demo)",
                                   description=f"shadowmia run {DEMO_CONFIG.name}: was this patient's record in "
                                               "the fine-tuning data?")
    parser.add_argument("--out", default=None, help="run directory (default: runs/demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--force", action="store_true")
    parser.set_defaults(handler=_run_run, config=str(DEMO_CONFIG))


def _print_attack_table(rows: list[tuple[str, dict]], *, width: int = 34) -> None:
    """One line per attack: ROC AUC with its 95% interval, TPR at 1% and 10% FPR."""
    print(f"{'attack':<{width}}{'ROC AUC':>8}  {'95% CI':<16}{'TPR@1%FPR':>10}{'TPR@10%FPR':>11}")
    for name, m in rows:
        print(f"{name:<{width}}{m['auc']:>8.3f}  [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]"
              f"{m['tpr_at_1%fpr']:>10.3f}{m['tpr_at_10%fpr']:>11.3f}")


def _run_run(args: argparse.Namespace) -> int:
    from experiments.studies.config import AuditExperimentConfig, load_config
    from experiments.studies.run import run_experiment

    config = load_config(args.config, overrides=args.overrides)
    out = Path(args.out) if args.out else Path("runs") / config.name
    if isinstance(config, AuditExperimentConfig):
        return _print_audit_experiment(config, out, force=args.force)
    report = run_experiment(config, out=out, force=args.force)
    rows = sorted(report["attacks"].items(), key=lambda item: -item[1]["auc"])
    print()
    print(f"{config.name}: {config.base_model}, {config.threat_model.value} threat model, "
          f"{config.split.target_members} members vs {config.split.target_non_members} non-members, "
          f"{config.n_shadows} shadows")
    _print_attack_table(rows)
    wall = report["setting"]["wall_time_s"]["total_s"]
    print(f"\nreport: {out / 'report' / 'report.md'}  (ROC: {out / 'report' / 'roc.png'})  wall time {wall / 60:.1f} min")
    return 0


def _transfer_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transfer", help="how much each attack loses when the target is trained unlike the shadows",
        description="Runs CONFIG (a target trained as the shadows are), then targets with twice the epochs, "
                    "twice the LoRA rank, twice the learning rate, all three, and half the epochs, rank or "
                    "learning rate, each scored by the same attack; writes OUT/transfer/report.md (resumable).")
    _add_experiment_options(parser, example="experiments/configs/agnews.toml")
    parser.add_argument("--variants", help="comma-separated subset of epochs_x2, rank_x2, lr_x2, all_x2, "
                                           "epochs_x0.5, rank_x0.5, lr_x0.5 "
                                           "(default: all)")
    parser.set_defaults(handler=_run_transfer)


def _run_transfer(args: argparse.Namespace) -> int:
    from experiments.studies.config import load_config
    from experiments.studies.transfer import HEADLINE_METRICS, MATCHED, parse_variants, run_transfer, transfer_table

    variants = parse_variants(args.variants)
    config = load_config(args.config, overrides=args.overrides)
    out = Path(args.out) if args.out else Path("runs") / config.name
    report = run_transfer(config, out=out, variants=variants, force=args.force)
    for metric in HEADLINE_METRICS:
        table = transfer_table(report, metric)
        print(f"\n{metric} (matched, then the change for each variant)")
        print(f"{'attack':<34}" + "".join(f"{c:>12}" for c in table.columns))
        for attack, row in table.iterrows():
            print(f"{attack:<34}{row[MATCHED]:>12.3f}"
                  + "".join(f"{row[c] - row[MATCHED]:>+12.3f}" for c in table.columns if c != MATCHED))
    print(f"\nreport: {out / 'transfer' / 'report.md'}")
    return 0


def _print_audit_experiment(config: "AuditExperimentConfig", out: Path, *, force: bool) -> int:
    from experiments.studies.audit import audit_table, run_audit_experiment

    report = run_audit_experiment(config, out=out, force=force)
    print()
    print(audit_table(report).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nreport: {out / 'report' / 'audit.md'}  (plot: {out / 'report' / 'epsilon.png'})")
    return 0


def _list_features_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list-features", help="list the registered features")
    parser.set_defaults(handler=_run_list_features)


def _run_list_features(args: argparse.Namespace) -> int:
    from llm_features.registry import FEATURES, known_features

    for name in known_features():
        feature = FEATURES[name]
        params = ", ".join(f"{k}={v}" for k, v in feature.defaults.items())
        needs = f" [needs {', '.join(sorted(feature.needs))}]" if feature.needs else ""
        print(f"{name}{'(' + params + ')' if params else ''}{needs}: {feature.summary}")
    return 0


def _pretraining_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretraining", help="pretraining-data detection on labelled texts (e.g. WikiMIA), beside a blind baseline",
        description="Scores labelled texts (label 1 = in the model's pretraining data) with the model, reports "
                    "every feature as an attack on its own, and a bag-of-words classifier that never sees the "
                    "model (cross-validated): an attack that does not beat it does not show membership.")
    parser.add_argument("--model", required=True, help="built-in name (smollm2-135m), directory, .gguf file or hub id")
    parser.add_argument("--data", required=True,
                        help="labelled texts (.jsonl, .json, .csv, .parquet) with a label field")
    parser.add_argument("--out", required=True, help="output directory (report.md, report.json, roc.png, "
                                                     "histogram.png, features.parquet, config.json)")
    parser.add_argument("--reference", help="reference model for the reference feature (another model with the same "
                                            "tokenizer); without it the reference feature is left out")
    parser.add_argument("--text-field", default="text", help="name of the field holding the text")
    parser.add_argument("--features", default="all",
                        help="comma-separated feature names with optional hyperparameters (default: all)")
    parser.add_argument("--neighbours", type=int, default=5, help="neighbours per text for neighbour_gap")
    parser.add_argument("--neighbour-fraction", type=float, default=0.15, help="fraction of tokens resampled")
    parser.add_argument("--neighbour-top-k", type=int, default=20, help="neighbours resample among the top-k tokens")
    parser.add_argument("--neighbour-model", help="masked LM (name or path) to make neighbours instead of an LM")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the blind baseline")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the blind baseline's folds, the bootstrap intervals and the neighbours")
    _add_model_options(parser)
    parser.set_defaults(handler=_run_pretraining)


def _run_pretraining(args: argparse.Namespace) -> int:
    from experiments.studies.pretraining import blind_baseline_name, run_pretraining_detection

    report = run_pretraining_detection(
        model=args.model, data=args.data, out=args.out, reference=args.reference, text_field=args.text_field,
        settings=_feature_settings(args), dtype=args.dtype, device=args.device, seed=args.seed, folds=args.folds,
        trust_remote_code=args.trust_remote_code)
    setting = report["setting"]
    rows = sorted(report["attacks"].items(), key=lambda item: -item[1]["auc"])
    width = max(34, *(len(name) + 2 for name, _ in rows))
    blind = blind_baseline_name(args.folds)
    blind_auc = report["attacks"][blind]["auc"]
    above = [name for name, m in rows if name != blind and m["auc"] > blind_auc]
    out = Path(args.out)
    print()
    print(f"pretraining-data detection: {setting['model']} on {setting['data']}, "
          f"{setting['n_members']} members vs {setting['n_nonmembers']} non-members")
    _print_attack_table(rows, width=width)
    print(f"\nblind baseline (never sees the model): ROC AUC {blind_auc:.3f}; attacks above it: "
          f"{', '.join(above) if above else 'none'}")
    wall = setting["wall_time_s"]["total_s"]
    print(f"report: {out / 'report.md'}  (ROC: {out / 'roc.png'})  wall time {wall / 60:.1f} min")
    return 0


def _audit_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit", help="epsilon lower bounds (DP auditing) from membership scores of canaries",
        description="Turns membership scores of canaries with known labels into statistically valid lower bounds "
                    "on the epsilon of (epsilon, delta)-DP: the classic bound (Jagielski et al. 2020) and the "
                    "one-run bound (Steinke, Nasr & Jagielski 2023); with --method f-dp or all also the f-DP "
                    "one-run bound (Mahloujifar, Melis & Chaudhuri 2025): the largest mu of Gaussian DP that the "
                    "guesses reject, and the epsilon at --delta that this mu implies (valid for mechanisms with a "
                    "Gaussian privacy curve, such as DP-SGD).")
    parser.add_argument("--scores", required=True, help=".csv of scores, e.g. written by shadowmia score")
    parser.add_argument("--score-column", default="membership_probability", help="higher = more likely a member")
    parser.add_argument("--labels", help=".csv or .jsonl with id and label (1 member, 0 non-member), matched on id")
    parser.add_argument("--label-column", default="label", help="label column of --scores when --labels is not given")
    parser.add_argument("--delta", type=float, default=1e-5, help="delta of the (epsilon, delta)-DP being audited")
    parser.add_argument("--confidence", type=float, default=0.95, help="probability that the bounds hold")
    # experiments.jobs.audit.METHOD_CHOICES, written out so that building the parser imports no scipy
    # (tests/test_audit_cli.py checks that the two agree)
    parser.add_argument("--method", choices=("classic", "one-run", "f-dp", "both", "all"), default="both",
                        help="both: classic and one-run; all: also f-dp")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classic bound's split and of tie-breaking")
    parser.add_argument("--out", help="write the result to this .json file")
    parser.set_defaults(handler=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from experiments.jobs.audit import audit_job

    report = audit_job(scores=args.scores, score_column=args.score_column, labels=args.labels,
                       label_column=args.label_column, delta=args.delta, confidence=args.confidence,
                       method=args.method, seed=args.seed, out=args.out)
    inputs = report["inputs"]
    print(f"{inputs['n_members']} members, {inputs['n_nonmembers']} non-members; delta {args.delta:g}, "
          f"confidence {args.confidence:g}")
    print(f"{'method':<10}{'epsilon_LB':>11}  details")
    for name, r in report["results"].items():
        if not r.get("counts", True) or r.get("r", 1) == 0:  # too few canaries: the note says why
            details = "-"
        elif name == "classic":
            c = r["counts"]
            details = (f"score >= {r['threshold']:.6g}: TP {c['tp']}/{c['tp'] + c['fn']}, FP {c['fp']}/{c['fp'] + c['tn']}"
                       f" ({r['n_evaluation']} canaries evaluated, {r['n_selection']} chose the threshold)")
        else:
            details = (f"{r['v']} of {r['r']} guesses right (k+ {r['k_plus']}, k- {r['k_minus']}, m {r['m']}; "
                       f"best of {r['n_hypotheses']} pairs)")
            if name == "f-dp":
                details = f"mu_LB {r['mu_lb']:.4f} (Gaussian DP); " + details
        print(f"{name:<10}{r['epsilon_lb']:>11.4f}  {details}")
        if r["note"]:
            print(f"{'':<23}note: {r['note']}")
    if args.out:
        print(f"-> {args.out}")
    return 0


def _cache_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cache", help="report or empty the score cache (token scores of every forward pass)",
                                   description="The score cache keeps the per-token arrays of every text scored by "
                                               "every model, so no forward pass is computed twice "
                                               "(llm_features.cache).")
    parser.add_argument("action", choices=("info", "clear"))
    parser.set_defaults(handler=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from llm_features.cache import default_score_cache

    cache = default_score_cache()
    if cache is None:
        print("the score cache is off")
        return 0
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.directory}")
        return 0
    info = cache.info()
    print(f"{info['directory']}: {info['entries']} texts scored by {info['models']} models, "
          f"{info['bytes'] / 2**20:.1f} MiB")
    return 0


PARSERS = [_features_parser, _finetune_parser, _train_shadows_parser, _fit_attack_parser, _score_parser,
           _run_parser, _demo_parser, _transfer_parser, _list_features_parser, _cache_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadowmia", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--score-cache", metavar="DIR",
                       help="where the token scores of every forward pass are kept (default: $SHADOWMIA_SCORE_CACHE, "
                            "else scores/ in the shadowmia cache directory)")
    cache.add_argument("--no-score-cache", action="store_true", help="compute every forward pass, keep nothing")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(subparsers)
    _pretraining_parser(subparsers)
    _audit_parser(subparsers)
    return parser


def configure_logging(*, verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if verbose < 2:
        for noisy in ("transformers", "peft", "accelerate", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # deprecation notices that transformers raises about its own internals, once per model load
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    if args.no_score_cache or args.score_cache:
        from llm_features.cache import CACHE_ENV

        os.environ[CACHE_ENV] = "off" if args.no_score_cache else args.score_cache
    return run_reporting_errors(f"shadowmia {args.command}", lambda: args.handler(args))


def run_reporting_errors(command: str, run: Callable[[], int]) -> int:
    """``run()``, its errors said as the module docstring says, each one line prefixed by
    ``command`` (also the entry point of the studies run as modules)."""
    try:
        return run()
    except ShadowMIAError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, a path that is not what it should be
        from llm_features.io import describe_os_error

        logger.debug("operating-system error", exc_info=True)
        print(f"{command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted; finished artifacts are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
