"""``stackgan evaluate``: IS / FID / KID, conditional accuracy and captioned grids for one
generator.

    stackgan evaluate --network results/demo/stage2/network-final.pt \\
        --index shards/test-index.h5 --out results/demo/eval/stage2 \\
        [--inception-weights pt_inception-2015-12-05-6726825d.pth --real-stats real-test-256.h5] \\
        [--cub-classifier cub_inception.pth] [--attribute-classifier attr.pt]

    stackgan evaluate real-stats --shards shards/test-256 --out real-test-256.h5 \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth

Writes ``metrics.json`` (values, sample count, implementation, weight hashes, reference
set), ``grid.png`` and ``activations.h5`` (cached features/logits/attribute predictions
of this generator; reused when the generator file and protocol are unchanged).

Without Inception weights, IS/FID/KID are skipped and the JSON says why;
``--require-metrics`` turns that into an error. ``--test-extractor`` uses a small
random network instead -- for tests only, its numbers mean nothing. Runs on one
process or under torchrun (generation is sharded; rank 0 writes the results).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stackgan.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_tracking_arguments,
    parser_for,
    run_command,
    setup_logging,
)
from stackgan.config import EvalConfig

if TYPE_CHECKING:
    from stackgan.evaluation.reference import ExtractorSpec

#: the message prefix of this command's errors (also when run as ``python -m``)
NAME = "stackgan evaluate"

log = logging.getLogger("stackgan.evaluate")


#: protocol defaults (the paper protocol), shared with the pipeline's eval section
_DEFAULTS = EvalConfig()


def _extractor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("feature extractor")
    g.add_argument(
        "--inception-weights",
        type=Path,
        help="local pt_inception-2015-12-05-6726825d.pth (FID/KID/IS)",
    )
    g.add_argument(
        "--inception-sha256", help="expected full SHA-256 (default: check the 6726825d prefix)"
    )
    g.add_argument(
        "--cub-classifier",
        type=Path,
        help="CUB-fine-tuned Inception state dict for the StackGAN IS",
    )
    g.add_argument(
        "--test-extractor",
        action="store_true",
        help="TEST ONLY: small random network, meaningless numbers",
    )


def _extractor_spec(args: argparse.Namespace) -> ExtractorSpec:
    """The feature extractor the arguments name."""
    from stackgan.evaluation.reference import ExtractorSpec

    return ExtractorSpec(
        inception_weights=args.inception_weights,
        inception_sha256=args.inception_sha256,
        cub_classifier=args.cub_classifier,
        test_extractor=args.test_extractor,
    )


# --------------------------------------------------------------------------- real-stats


def build_real_stats_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan evaluate real-stats`` argument parser."""
    p = argparse.ArgumentParser(
        prog=f"{prog} real-stats" if prog else None,
        description="Features, mu and Sigma of the real test images at 256 px (HDF5).",
    )
    p.add_argument("--shards", type=Path, required=True, help="the test-256 shard set")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    p.add_argument(
        "--skip-ok",
        action="store_true",
        help="without weights: write nothing and exit 0 (the evaluation then skips FID/KID)",
    )
    _extractor_args(p)
    return p


def _real_stats(args: argparse.Namespace, name: str) -> int:
    from stackgan.evaluation.reference import NO_WEIGHTS_REASON, build_extractor, write_real_stats

    extractor = build_extractor(_extractor_spec(args))
    if extractor is None:
        print(f"{name}: {NO_WEIGHTS_REASON}", file=sys.stderr)
        return EXIT_OK if args.skip_ok else EXIT_USAGE
    t0 = time.perf_counter()
    meta = write_real_stats(args.out, args.shards, extractor, args.batch_size)
    log.info(
        "wrote %s: %d real images, extractor %s (%.0f s)",
        args.out,
        meta["count"],
        meta["extractor"],
        time.perf_counter() - t0,
    )
    return EXIT_OK


def real_stats_main(argv: list[str], prog: str | None = None) -> int:
    """``stackgan evaluate real-stats ...``: write the real-image statistics; the exit code."""
    args = build_real_stats_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    name = f"{prog} real-stats" if prog else "real-stats"
    return run_command(name, lambda: _real_stats(args, name))


# --------------------------------------------------------------------------- evaluate


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan evaluate`` argument parser."""
    p = parser_for(prog, __doc__)
    p.add_argument("--network", type=Path, required=True, help="Stage-I or Stage-II network file")
    p.add_argument(
        "--index",
        type=Path,
        required=True,
        help="HDF5 index of the test split (embeddings, captions)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--real-stats",
        type=Path,
        help="real-image statistics (stackgan evaluate real-stats) for FID/KID",
    )
    p.add_argument(
        "--attribute-classifier", type=Path, help="twin attribute classifier (conditional accuracy)"
    )
    p.add_argument(
        "--require-metrics", action="store_true", help="missing weights or real stats are errors"
    )
    p.add_argument("--recompute", action="store_true", help="ignore an existing activation cache")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--captions-per-image", type=int, default=_DEFAULTS.captions_per_image)
    proto.add_argument("--max-images", type=int, help="only the first N test images")
    proto.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    proto.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    proto.add_argument(
        "--no-ema", action="store_true", help="use G even when the file holds an EMA G"
    )
    proto.add_argument(
        "--channels-last",
        action="store_true",
        help="generate in the channels_last layout (faster on CPU; other float rounding)",
    )
    proto.add_argument("--is-splits", type=int, default=_DEFAULTS.is_splits)
    proto.add_argument("--kid-subsets", type=int, default=_DEFAULTS.kid_subsets)
    proto.add_argument("--kid-subset-size", type=int, default=_DEFAULTS.kid_subset_size)
    proto.add_argument("--grid-captions", type=int, default=_DEFAULTS.grid_captions)
    proto.add_argument("--grid-samples", type=int, default=_DEFAULTS.grid_samples)
    _extractor_args(p)
    add_tracking_arguments(
        p,
        system_metrics_help="(accepted for symmetry; evaluation logs none)",
        dataset_help="tag: dataset name (default: unknown)",
        run_name_help="MLflow run name (default: eval-stage<N>)",
    )
    return p


def _evaluate(args: argparse.Namespace) -> int:
    from stackgan.evaluation.protocol import Protocol
    from stackgan.evaluation.run import EvalOptions, TrackingOptions, evaluate

    protocol = Protocol(
        args.captions_per_image,
        args.max_images,
        args.batch_size,
        args.seed,
        not args.no_ema,
        args.channels_last,
    )
    options = EvalOptions(
        real_stats=args.real_stats,
        attribute_classifier=args.attribute_classifier,
        require_metrics=args.require_metrics,
        recompute=args.recompute,
        is_splits=args.is_splits,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        grid_captions=args.grid_captions,
        grid_samples=args.grid_samples,
    )
    tracking = TrackingOptions(
        tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        experiment=args.experiment,
        run_name=args.run_name,
        parent_run_id_file=args.parent_run_id_file,
        preset=args.preset,
        dataset_name=args.dataset_name,
    )
    evaluate(args.network, args.index, args.out, protocol, options, _extractor_spec(args), tracking)
    return EXIT_OK


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan evaluate [real-stats] ...``: the exit code (2: bad input, one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "real-stats":
        return real_stats_main(argv[1:], prog)
    args = build_parser(prog).parse_args(argv)
    from stackgan import distributed as dist_utils
    from stackgan.runtime import tune_allocator

    tune_allocator()
    setup_logging(dist_utils.env_ranks()[0], with_time=True)
    return run_command(NAME, lambda: _evaluate(args))


if __name__ == "__main__":
    raise SystemExit(main())
