"""``stackgan build-shards``: raw CUB (or twin) -> WebDataset shards + HDF5 index.

Exit codes: 0 written, 1 inconsistent data or a bad image (every problem listed), 2 bad
options, a refused or corrupt pickle or an unreadable file (one line).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from stackgan.cli.common import EXIT_FAILED, KNOWN_ERRORS, fail, run_command, setup_logging
from stackgan.cli.data_args import add_path_arguments, add_worker_arguments, paths_from_args
from stackgan.data.crop import RESIZE_MODES
from stackgan.data.cub import SPLITS, DataPaths, DataValidationError
from stackgan.data.shards import ShardOptions, build_shards

#: the message prefix of this command's errors
NAME = "build-shards"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan build-shards`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Bbox-crop, resize to the reference load sizes (76 and 304) and write "
        "per-split WebDataset shard sets (<split>-64/, <split>-256/) with embeddings, an HDF5 "
        "index and manifests.",
    )
    add_path_arguments(p)
    p.add_argument(
        "--out", type=Path, required=True, help="output directory for shard sets and indexes"
    )
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument(
        "--resize", choices=RESIZE_MODES, default=ShardOptions.resize, help="see stackgan.data.crop"
    )
    p.add_argument("--hr-format", choices=("jpeg", "png"), default=ShardOptions.hr_format)
    p.add_argument("--jpeg-quality", type=int, default=ShardOptions.jpeg_quality)
    p.add_argument("--min-shards", type=int, default=ShardOptions.min_shards)
    p.add_argument("--max-per-shard", type=int, default=ShardOptions.max_per_shard)
    p.add_argument("--shuffle-seed", type=int, default=ShardOptions.shuffle_seed)
    p.add_argument("--on-bad-image", choices=("error", "skip"), default=ShardOptions.on_bad_image)
    p.add_argument(
        "--text-encoder",
        metavar="SPEC",
        help="embed the text_c10 captions with this encoder (twin | char-cnn-rnn:PATH) instead "
        "of using the bundle's char-CNN-RNN-embeddings.pickle (the default)",
    )
    add_worker_arguments(p, "image processes")
    return p


def _options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ShardOptions:
    """The :class:`ShardOptions` of the arguments; invalid ones are a usage error (exit 2)."""
    try:
        return ShardOptions(
            resize=args.resize,
            hr_format=args.hr_format,
            jpeg_quality=args.jpeg_quality,
            min_shards=args.min_shards,
            max_per_shard=args.max_per_shard,
            shuffle_seed=args.shuffle_seed,
            on_bad_image=args.on_bad_image,
            workers=args.workers,
            text_encoder=args.text_encoder,
        )
    except ValueError as err:
        parser.error(str(err))


def _build(args: argparse.Namespace, paths: DataPaths, opts: ShardOptions) -> int:
    try:
        build_shards(paths, args.out, opts, args.splits, progress=not args.quiet)
    except DataValidationError as err:
        return fail(NAME, err, EXIT_FAILED)
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan build-shards``: write shard sets, indexes and manifests; the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_logging()
    paths = paths_from_args(args, parser)
    opts = _options(args, parser)
    # a refused or corrupt pickle, an unreadable file: one line, exit code 2
    errors = (*KNOWN_ERRORS, pickle.UnpicklingError)
    return run_command(NAME, lambda: _build(args, paths, opts), errors=errors)


if __name__ == "__main__":
    raise SystemExit(main())
