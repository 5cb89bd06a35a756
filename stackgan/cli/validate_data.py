"""``stackgan validate-data``: check a CUB + birds-bundle tree and print or write a summary.

Exit codes: 0 valid, 1 inconsistent data (every problem listed), 2 a refused or corrupt
pickle or an unreadable file (one line naming the file).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
from pathlib import Path

from stackgan.cli.common import EXIT_FAILED, KNOWN_ERRORS, fail, run_command, setup_logging
from stackgan.cli.data_args import add_path_arguments, paths_from_args
from stackgan.data.cub import (
    SPLITS,
    DataPaths,
    DataValidationError,
    SplitData,
    read_dataset,
    validation_report,
)
from stackgan.fileio import write_json

log = logging.getLogger(__name__)

#: the message prefix of this command's errors
NAME = "validate-data"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan validate-data`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Validate CUB-200-2011 + the StackGAN birds bundle (or the synthetic twin): "
        "every key has an image and a bbox, counts agree, embeddings are (10, 1024) and finite, "
        "caption files hold 10 lines.",
    )
    add_path_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument(
        "--on-bad-image",
        choices=("error", "skip"),
        default="error",
        help="error (default): a missing image or bbox is fatal; skip: report and continue",
    )
    parser.add_argument("--report", type=Path, help="write the summary as JSON here (atomically)")
    return parser


def _read(paths: DataPaths, splits: list[str], on_bad_image: str) -> dict[str, SplitData]:
    """Read and validate ``splits``; under ``error`` a missing image or bbox is fatal too."""
    data = read_dataset(paths, splits)
    problems = [p.detail for d in data.values() for p in d.problems]
    if problems and on_bad_image == "error":
        raise DataValidationError([*problems, "(use --on-bad-image skip to skip these images)"])
    return data


def _validate(args: argparse.Namespace, paths: DataPaths) -> int:
    try:
        data = _read(paths, args.splits, args.on_bad_image)
    except DataValidationError as err:
        return fail(NAME, err, EXIT_FAILED)
    for split, d in data.items():
        for w in d.warnings:
            log.warning("%s", w)
        log.info(
            "%s: %d images, %d classes, %d skipped",
            split,
            len(d.samples),
            len({s.class_id for s in d.samples}),
            len(d.problems),
        )
    summary = validation_report(paths, data)
    if args.report:
        write_json(args.report, summary)
    else:
        print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan validate-data``: check the raw data; returns the exit code (0, 1 or 2)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_logging()
    paths = paths_from_args(args, parser)
    # a refused or corrupt pickle, an unreadable file: one line, exit code 2
    errors = (*KNOWN_ERRORS, pickle.UnpicklingError)
    return run_command(NAME, lambda: _validate(args, paths), errors=errors)


if __name__ == "__main__":
    raise SystemExit(main())
