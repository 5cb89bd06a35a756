"""Arguments shared by the data commands: data paths (``validate-data``, ``build-shards``) and
worker processes with a progress bar (``make-twin``, ``build-shards``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stackgan.data.cub import DataPaths


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    """``--root`` or ``--cub-dir``/``--bundle-dir`` (shared by data commands)."""
    parser.add_argument(
        "--root",
        type=Path,
        help="StackGAN data root holding CUB_200_2011/, train/, test/, text_c10/",
    )
    parser.add_argument(
        "--cub-dir", type=Path, help="CUB_200_2011 directory (default: <root>/CUB_200_2011)"
    )
    parser.add_argument("--bundle-dir", type=Path, help="birds bundle directory (default: <root>)")


def paths_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> DataPaths:
    """Resolve :class:`DataPaths` from parsed CLI arguments (a usage error if incomplete)."""
    if args.root is None and (args.cub_dir is None or args.bundle_dir is None):
        parser.error("give --root, or both --cub-dir and --bundle-dir")
    base = DataPaths.from_root(args.root) if args.root is not None else None
    return DataPaths(
        cub_dir=args.cub_dir or base.cub_dir,  # type: ignore[union-attr]
        bundle_dir=args.bundle_dir or base.bundle_dir,  # type: ignore[union-attr]
    )


def add_worker_arguments(parser: argparse.ArgumentParser, workers_help: str) -> None:
    """``--workers`` (default: up to 2 processes) and ``--quiet`` (no progress bar)."""
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help=workers_help
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
