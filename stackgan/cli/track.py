"""``stackgan track``: pipeline-level MLflow run management for the workflow rules.

Sub-commands:

* ``start-parent``  — fail-fast store check, create (or reuse) the pipeline's parent run
  and write its id atomically to ``--out``.
* ``log-params``    — log the resolved pipeline config onto the parent run as params.
* ``log-summary``   — copy numeric evaluation results onto the parent run as metrics.
* ``log-artifact``  — upload a file (the run report) onto the parent run.
* ``finish-parent`` — end the parent run with a status (and set tag ``status``); with
  ``--metrics`` / ``--artifact`` it first does what ``log-summary`` / ``log-artifact`` do,
  in the same process (one MLflow import instead of three at the end of a pipeline).
* ``check``         — the fail-fast store check alone (exit 1 with the reason).

The work is done by :mod:`stackgan.tracking.parent`; this module parses the options and
reports errors: a known error is one line on stderr and exit code 1, a missing tracking URI
exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from stackgan.cli.common import EXIT_FAILED, EXIT_USAGE, KNOWN_ERRORS, fail
from stackgan.tracking import (
    RUN_STATUSES,
    TrackingStoreError,
    check_tracking_store,
    configure_mlflow_environment,
    resolve_tracking_uri,
)

DEFAULT_PROG = "stackgan track"


def _key_values(pairs: list[str], option: str) -> dict[str, str]:
    """Parse ``["k=v", ...]``; raise ``ValueError`` naming the bad entry."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


# --------------------------------------------------------------------------- commands


def cmd_start_parent(args: argparse.Namespace) -> int:
    """Create or reuse the parent run; write its id to ``--out`` and print it."""
    from stackgan.tracking.parent import start_parent_run

    run_id = start_parent_run(
        args.tracking_uri,
        experiment=args.experiment,
        run_name=args.run_name,
        out=args.out,
        artifact_location=args.artifact_location,
        tags=_key_values(args.tag, "--tag"),
        params=_key_values(args.param, "--param"),
        config=args.config,
        timeout_s=args.timeout_s,
    )
    print(run_id)
    return 0


def cmd_log_params(args: argparse.Namespace) -> int:
    """Log the resolved pipeline config (and the stage configs' hashes) onto the parent run."""
    from stackgan.tracking.parent import log_parent_params

    hashed = {k: Path(v) for k, v in _key_values(args.hash, "--hash").items()}
    missing = [str(p) for p in [args.config, *hashed.values()] if not p.is_file()]
    if missing:
        raise ValueError(f"not found: {', '.join(missing)}")
    run_id, count = log_parent_params(
        args.tracking_uri, args.parent_run_id_file, args.config, hashed
    )
    print(f"logged {count} param(s) on run {run_id}")
    return 0


def cmd_log_summary(args: argparse.Namespace) -> int:
    """Log the numeric leaves under ``metrics`` of a results JSON onto the parent run."""
    from stackgan.tracking.parent import log_summary

    run_id, count = log_summary(
        args.tracking_uri, args.parent_run_id_file, args.metrics, args.prefix
    )
    print(f"logged {count} summary metric(s) on run {run_id}")
    return 0


def cmd_log_artifact(args: argparse.Namespace) -> int:
    """Upload ``--file`` as an artifact of the parent run."""
    from stackgan.tracking.parent import log_parent_artifact

    run_id = log_parent_artifact(args.tracking_uri, args.parent_run_id_file, args.file)
    print(f"logged artifact {args.file.name} on run {run_id}")
    return 0


def cmd_finish_parent(args: argparse.Namespace) -> int:
    """Log ``--metrics`` and ``--artifact`` files if given, then end the parent run with
    ``--status`` and set tag ``status``."""
    from stackgan.tracking.parent import finish_parent_run, log_parent_artifact

    missing = [str(p) for p in [args.metrics, *args.artifact] if p is not None and not p.is_file()]
    if missing:
        raise ValueError(f"not found: {', '.join(missing)}")
    if args.metrics is not None:
        cmd_log_summary(args)
    for path in args.artifact:
        log_parent_artifact(args.tracking_uri, args.parent_run_id_file, path)
        print(f"logged artifact {path.name}")
    run_id = finish_parent_run(args.tracking_uri, args.parent_run_id_file, args.status)
    print(f"run {run_id} {args.status}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check the store; the exit status says whether it is usable."""
    check_tracking_store(args.tracking_uri, timeout_s=args.timeout_s)
    print(f"ok: {args.tracking_uri}")
    return 0


# --------------------------------------------------------------------------- parser


def _add_start_parent(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="experiment name (created once)")
    p.add_argument("--run-name", required=True, help="name of the parent run")
    p.add_argument("--out", type=Path, required=True, help="file that receives the run id")
    p.add_argument("--artifact-location", help="artifact location for a new experiment")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="run tag")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="run param")
    p.add_argument("--config", type=Path, help="resolved config YAML: artifact + flat params")
    p.add_argument("--timeout-s", type=float, default=10.0, help="store check timeout")
    p.set_defaults(func=cmd_start_parent)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan track`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog or DEFAULT_PROG,
        description="Manage the pipeline's parent MLflow run (used by the workflow rules).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--tracking-uri",
            default=os.environ.get("MLFLOW_TRACKING_URI"),
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)",
        )
        return p

    _add_start_parent(
        add("start-parent", "check the store, create or reuse the parent run, write its id")
    )

    p = add("log-params", "log the resolved pipeline config onto the parent run as params")
    p.add_argument("--parent-run-id-file", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True, help="the resolved pipeline config YAML")
    p.add_argument(
        "--hash",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="also log param NAME.config_sha256 with FILE's sha256 (repeatable)",
    )
    p.set_defaults(func=cmd_log_params)

    p = add("log-summary", "log evaluation results onto the parent run as metrics")
    p.add_argument("--parent-run-id-file", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True, help='JSON with a "metrics" mapping')
    p.add_argument("--prefix", default="", help="metric name prefix, e.g. 'stage2.'")
    p.set_defaults(func=cmd_log_summary)

    p = add("log-artifact", "upload a file (the run report) onto the parent run")
    p.add_argument("--parent-run-id-file", type=Path, required=True)
    p.add_argument("--file", type=Path, required=True, help="the file to upload")
    p.set_defaults(func=cmd_log_artifact)

    p = add("finish-parent", "end the parent run with a status")
    p.add_argument("--parent-run-id-file", type=Path, required=True)
    p.add_argument("--status", default="FINISHED", choices=RUN_STATUSES)
    p.add_argument(
        "--metrics", type=Path, help="first log this results JSON's metrics (as log-summary)"
    )
    p.add_argument("--prefix", default="", help="metric name prefix for --metrics")
    p.add_argument(
        "--artifact",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="first upload FILE onto the parent run (as log-artifact; repeatable)",
    )
    p.set_defaults(func=cmd_finish_parent)

    p = add("check", "fail-fast check that the tracking store is usable")
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``stackgan track <command> ...``; returns the exit status."""
    prog = prog or DEFAULT_PROG
    args = build_parser(prog).parse_args(argv)
    if not args.tracking_uri:
        message = "--tracking-uri not given and MLFLOW_TRACKING_URI not set"
        return fail(prog, ValueError(message), EXIT_USAGE)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    configure_mlflow_environment()
    args.tracking_uri = resolve_tracking_uri(args.tracking_uri, Path("."))
    try:
        return int(args.func(args))
    except TrackingStoreError as err:  # the store is unusable: what `check` exists to find
        return fail(prog, err, EXIT_FAILED if args.func is cmd_check else EXIT_USAGE)
    except KNOWN_ERRORS as err:  # a bad run-id file, tag, param or metrics file
        return fail(prog, err, EXIT_USAGE)
    except Exception as err:
        if not type(err).__module__.startswith("mlflow"):
            raise
        return fail(prog, RuntimeError(f"{args.tracking_uri}: {err}"), EXIT_FAILED)


if __name__ == "__main__":
    raise SystemExit(main())
