"""``stackgan make-twin``: write a synthetic CUB twin (:mod:`stackgan.data.twin`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stackgan.cli.common import run_command, setup_logging
from stackgan.cli.data_args import add_worker_arguments
from stackgan.data.twin import TwinSpec, write_twin

log = logging.getLogger(__name__)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan make-twin`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write a synthetic CUB-200-2011 + birds-bundle twin (same layout and "
        "byte formats) whose captions state body colour, wing colour and size of the drawn bird.",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output data root (CUB_200_2011/, train/, test/, text_c10/)",
    )
    p.add_argument(
        "--classes",
        type=int,
        default=TwinSpec.num_classes,
        help="number of classes (3:1 train/test)",
    )
    p.add_argument("--images-per-class", type=int, default=TwinSpec.images_per_class)
    p.add_argument("--seed", type=int, default=TwinSpec.seed)
    p.add_argument(
        "--min-side", type=int, default=TwinSpec.min_side, help="smallest image side in pixels"
    )
    p.add_argument(
        "--max-side", type=int, default=TwinSpec.max_side, help="largest image side in pixels"
    )
    p.add_argument("--grayscale-frac", type=float, default=TwinSpec.grayscale_frac)
    p.add_argument("--cmyk-frac", type=float, default=TwinSpec.cmyk_frac)
    p.add_argument(
        "--border-frac",
        type=float,
        default=TwinSpec.border_frac,
        help="share of boxes touching a border",
    )
    add_worker_arguments(p, "processes used to draw images")
    return p


def _spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TwinSpec:
    """The :class:`TwinSpec` of the arguments; an invalid one is a usage error (exit 2)."""
    try:
        return TwinSpec(
            num_classes=args.classes,
            images_per_class=args.images_per_class,
            seed=args.seed,
            min_side=args.min_side,
            max_side=args.max_side,
            grayscale_frac=args.grayscale_frac,
            cmyk_frac=args.cmyk_frac,
            border_frac=args.border_frac,
        )
    except ValueError as err:
        parser.error(str(err))


def _write(spec: TwinSpec, args: argparse.Namespace) -> int:
    summary = write_twin(spec, args.out, workers=args.workers, progress=not args.quiet)
    log.info(
        "twin written to %s: %d images (%d train / %d test), modes %s, %.1f s",
        args.out,
        summary["images"],
        summary["splits"]["train"],
        summary["splits"]["test"],
        summary["modes"],
        summary["seconds"],
    )
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan make-twin``: write a synthetic CUB twin; returns the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_logging()
    spec = _spec(args, parser)
    return run_command(parser.prog, lambda: _write(spec, args))


if __name__ == "__main__":
    raise SystemExit(main())
