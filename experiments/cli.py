"""The ``shadowmia`` command line.

Every subcommand validates its arguments before loading a model, prints errors from the
:class:`~llm_features.errors.ShadowMIAError` family as one clear line (exit status 2),
and logs to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from llm_features.errors import ShadowMIAError

logger = logging.getLogger("shadowmia")

Handler = Callable[[argparse.Namespace], int]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="model weights dtype; auto = bfloat16 where the hardware runs it fast")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-tokens", type=int, default=512, help="texts longer than this are truncated")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")


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
    parser.add_argument("--neighbour-model", help="masked LM (name or path) to make neighbours instead of the reference LM")
    parser.add_argument("--seed", type=int, default=0, help="seed of the neighbour generator")
    parser.add_argument("--out", required=True, help="output .parquet file")
    _add_model_options(parser)
    parser.set_defaults(handler=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    from experiments.jobs import NeighbourOptions, feature_summary, features_job
    from llm_features.registry import parse_features

    neighbours = NeighbourOptions(n=args.neighbours, fraction=args.neighbour_fraction, seed=args.seed,
                                  masked_lm=args.neighbour_model)
    table = features_job(model=args.model, adapter=args.adapter, reference=args.reference, data=args.data,
                         text_field=args.text_field, features=args.features, neighbours=neighbours,
                         max_tokens=args.max_tokens, batch_size=args.batch_size, dtype=args.dtype,
                         device=args.device, out=args.out)
    columns = [r.column for r in parse_features(args.features)]
    summary = feature_summary(table, columns)
    print(f"{len(table)} texts -> {args.out}")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
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


PARSERS = [_features_parser, _list_features_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadowmia", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(subparsers)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    try:
        return args.handler(args)
    except ShadowMIAError as exc:
        print(f"shadowmia {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shadowmia {args.command}: interrupted; finished artifacts are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
