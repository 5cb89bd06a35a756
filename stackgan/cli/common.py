"""What every ``stackgan`` command shares: exit codes, error printing, logging, tracking flags.

A command module parses its arguments, calls library functions, and wraps the call in
:func:`run_command`, which turns the project's known errors (:class:`StackGANError` and
its subclasses, unreadable files, bad values) into one line ``<prog>: <message>`` on stderr
with exit code :data:`EXIT_USAGE`. Nothing here imports torch, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from stackgan.errors import StackGANError

EXIT_OK = 0
#: the work ran and found a problem (e.g. validate-data found inconsistent data)
EXIT_FAILED = 1
#: bad input: a config key, a file, a line or a value the command cannot use
EXIT_USAGE = 2

#: errors that are the user's input, not a bug: reported in one line, exit code 2
KNOWN_ERRORS: tuple[type[BaseException], ...] = (StackGANError, OSError, ValueError, KeyError)


def error_line(prog: str, err: BaseException) -> str:
    """``<prog>: <message>`` (a KeyError's quotes are dropped)."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    return f"{prog}: {message}"


def fail(prog: str, err: BaseException, code: int = EXIT_USAGE) -> int:
    """Print ``err`` as a user error and return ``code``."""
    print(error_line(prog, err), file=sys.stderr)
    return code


def run_command(
    prog: str,
    fn: Callable[[], int | None],
    errors: tuple[type[BaseException], ...] = KNOWN_ERRORS,
) -> int:
    """Run ``fn``; a known error becomes one line on stderr and exit code 2."""
    try:
        return int(fn() or EXIT_OK)
    except errors as err:
        return fail(prog, err)


def setup_logging(rank: int = 0, *, with_time: bool = False) -> None:
    """INFO on rank 0, WARNING elsewhere; the rank is in every line of a multi-process job."""
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = (
        f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"
        if with_time
        else "%(levelname)s %(message)s"
    )
    handler = logging.StreamHandler(_CurrentStderr())  # type: ignore[arg-type]
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time, so a command run in-process (tests,
    notebooks) never logs into a stream that has since been replaced or closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def add_tracking_arguments(
    parser: argparse.ArgumentParser,
    *,
    system_metrics_help: str | None = None,
    dataset_help: str | None = None,
    run_name_help: str | None = None,
) -> argparse._ArgumentGroup:
    """The MLflow flag group shared by ``train`` and ``evaluate`` (help texts overridable)."""
    track = parser.add_argument_group("tracking (MLflow)")
    track.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none = no tracking)",
    )
    track.add_argument("--experiment", default="stackgan", help="MLflow experiment name")
    track.add_argument(
        "--run-name", help=run_name_help or "MLflow run name (default: stage1 / stage2)"
    )
    track.add_argument(
        "--parent-run-id-file", type=Path, help="file holding the pipeline's parent run id"
    )
    track.add_argument(
        "--dataset-name", help=dataset_help or "tag: dataset name (default: from the shard set)"
    )
    track.add_argument(
        "--preset", help="tag: the pipeline preset this run belongs to (e.g. paper, demo)"
    )
    track.add_argument(
        "--no-system-metrics",
        action="store_true",
        help=system_metrics_help or "do not log CPU/GPU/memory metrics",
    )
    return track


def parser_for(prog: str | None, description: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` that keeps the module docstring's layout in ``--help``."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
