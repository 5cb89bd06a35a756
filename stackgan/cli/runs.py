"""``stackgan runs``: compare MLflow runs in a table (params × final metrics), or diff two.

Rows are runs, columns are run id (short in the table), run name, status, start time,
duration, stage tag, the chosen params and the chosen metrics (latest value of each; by
default the few key metrics present); ``--all`` shows every param and metric. ``--diff A B``
prints only what differs between two runs (ids or names), and between the children of two
pipeline runs; see :mod:`stackgan.tracking.compare`. An unknown experiment or run, a
missing sqlite database or a bad ``--sort`` key is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import os

from stackgan.cli.common import EXIT_FAILED, EXIT_USAGE, fail
from stackgan.tracking import configure_mlflow_environment
from stackgan.tracking.compare import FORMATS, diff_runs, fetch_rows, render, split_list
from stackgan.tracking.store import require_existing_sqlite_db

DEFAULT_PROG = "stackgan runs"
DEFAULT_URI = "sqlite:///results/mlflow.db"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan runs`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog or DEFAULT_PROG,
        description="Compare MLflow runs: rows = runs, columns = chosen params x final metrics.",
    )
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI,
        help=f"tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})",
    )
    p.add_argument(
        "--experiment",
        action="append",
        help="experiment name; repeatable or comma list (default: all)",
    )
    p.add_argument("--params", action="append", help="param columns, comma list")
    p.add_argument(
        "--metrics", action="append", help="metric columns, comma list (default: key metrics)"
    )
    p.add_argument("--all", action="store_true", help="every param and metric column")
    p.add_argument(
        "--diff",
        nargs=2,
        metavar=("A", "B"),
        help="print only the params and metrics that differ between runs A and B (ids or "
        "names), and between their children for pipeline runs",
    )
    p.add_argument(
        "--filter", default="", help="MLflow filter string, e.g. \"params.arch = 'paper'\""
    )
    p.add_argument("--sort", help="metrics.X | params.Y | start_time | run_name (default: newest)")
    p.add_argument("--desc", action="store_true", help="sort descending")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--parents-only", action="store_true", help="only runs without a parent")
    group.add_argument("--children-of", metavar="RUN_ID", help="only children of this run")
    p.add_argument("--limit", type=int, default=None, help="show at most N rows")
    p.add_argument("--format", choices=FORMATS, default="table")
    return p


def _print_table(args: argparse.Namespace) -> None:
    from mlflow import MlflowClient

    require_existing_sqlite_db(args.tracking_uri)
    client = MlflowClient(tracking_uri=args.tracking_uri)
    if args.diff:
        print(diff_runs(client, *args.diff, split_list(args.experiment)))
        return
    rows = fetch_rows(
        client,
        split_list(args.experiment),
        args.filter,
        children_of=args.children_of,
        parents_only=args.parents_only,
    )
    text = render(
        rows,
        sort=args.sort,
        descending=args.desc,
        limit=args.limit,
        params=split_list(args.params),
        metrics=split_list(args.metrics),
        fmt=args.format,
        everything=args.all,
    )
    print(text)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Print the comparison table; returns the exit status."""
    prog = prog or DEFAULT_PROG
    args = build_parser(prog).parse_args(argv)
    configure_mlflow_environment()
    from mlflow.exceptions import MlflowException

    try:
        _print_table(args)
    except ValueError as err:  # unknown experiment or sort key, no such store
        return fail(prog, ValueError(f"{args.tracking_uri}: {err}"), EXIT_USAGE)
    except MlflowException as err:  # the store failed to answer
        return fail(prog, RuntimeError(f"{args.tracking_uri}: {err}"), EXIT_FAILED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
