"""``stackgan track``: pipeline-level MLflow run management for the workflow rules.

Sub-commands:

* ``start-parent``  — fail-fast store check, create (or reuse) the pipeline's parent run
  and write its id atomically to ``--out``.
* ``log-summary``   — copy numeric evaluation results onto the parent run as metrics.
* ``finish-parent`` — end the parent run with a status (and set tag ``status``).
* ``check``         — the fail-fast store check alone (exit 1 with the reason).

All talk to the store synchronously through ``MlflowClient`` with explicit run ids.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from stackgan.tracking import (
    RUN_STATUSES,
    TrackingError,
    check_tracking_store,
    configure_mlflow_environment,
    context_tags,
    default_artifact_location,
    ensure_experiment,
    find_run,
    mlflow_client,
    param_items,
    read_run_id,
    resolve_tracking_uri,
    write_run_id,
)

log = logging.getLogger(__name__)
PIPELINE_ROLE_TAG = "stackgan.role"


def _key_values(pairs: list[str], option: str) -> dict[str, str]:
    """Parse ``["k=v", ...]``; raise ``ValueError`` naming the bad entry."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def numeric_leaves(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested mappings as ``{prefix + dotted.key: float}`` (bools skipped)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                out.update(numeric_leaves(value, dotted + "."))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[dotted] = float(value)
    return out


def _log_params_tolerant(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches of 100; a batch that conflicts is retried one by one."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    items = [Param(k, v) for k, v in param_items(params)]
    for start in range(0, len(items), 100):
        batch = items[start : start + 100]
        try:
            client.log_batch(run_id, params=batch)
        except MlflowException:
            for param in batch:
                try:
                    client.log_param(run_id, param.key, param.value)
                except MlflowException as err:
                    log.warning("param %s not logged: %s", param.key, err)


# --------------------------------------------------------------------------- commands


def cmd_start_parent(args: argparse.Namespace) -> int:
    """Create or reuse the parent run; write its id to ``--out``."""
    uri = args.tracking_uri
    location = args.artifact_location or default_artifact_location(uri)
    check_tracking_store(uri, timeout_s=args.timeout_s, artifact_location=location)
    tags = _key_values(args.tag, "--tag")
    params = _key_values(args.param, "--param")
    experiment_id = ensure_experiment(uri, args.experiment, location)
    client = mlflow_client(uri)
    run = find_run(client, read_run_id(args.out)) if args.out.exists() else None
    if run is not None:
        run_id = run.info.run_id
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        log.info("reusing parent run %s", run_id)
    else:
        tags = {**tags, PIPELINE_ROLE_TAG: "pipeline"}
        created = client.create_run(experiment_id, tags=context_tags(tags), run_name=args.run_name)
        run_id = created.info.run_id
        write_run_id(args.out, run_id)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if args.config is not None:
        config = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        params = {**config, **params}
        client.log_artifact(run_id, str(args.config), "config")
    if params:
        _log_params_tolerant(client, run_id, params)
    print(run_id)
    return 0


def cmd_log_summary(args: argparse.Namespace) -> int:
    """Log the numeric leaves under ``metrics`` of a results JSON onto the parent run."""
    from mlflow.entities import Metric

    run_id = _parent_id(args.parent_run_id_file)
    data = json.loads(args.metrics.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{args.metrics}: expected a JSON object with a 'metrics' mapping")
    values = numeric_leaves(data["metrics"], args.prefix)
    if not values:
        raise ValueError(f"{args.metrics}: no numeric values under 'metrics'")
    now_ms = int(time.time() * 1000)
    metrics = [Metric(k, v, now_ms, 0) for k, v in values.items() if not math.isnan(v)]
    client = mlflow_client(args.tracking_uri)
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    print(f"logged {len(metrics)} summary metric(s) on run {run_id}")
    return 0


def cmd_finish_parent(args: argparse.Namespace) -> int:
    """End the parent run with ``--status`` and set tag ``status``."""
    run_id = _parent_id(args.parent_run_id_file)
    client = mlflow_client(args.tracking_uri)
    client.set_tag(run_id, "status", args.status)
    client.set_terminated(run_id, status=args.status)
    print(f"run {run_id} {args.status}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check the store; the exit status says whether it is usable."""
    check_tracking_store(args.tracking_uri, timeout_s=args.timeout_s)
    print(f"ok: {args.tracking_uri}")
    return 0


def _parent_id(path: Path) -> str:
    run_id = read_run_id(path)
    if run_id is None:
        raise TrackingError(f"{path}: no parent run id (run `stackgan track start-parent` first)")
    return run_id


# --------------------------------------------------------------------------- parser


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan track`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog or "stackgan track",
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

    p = add("start-parent", "check the store, create or reuse the parent run, write its id")
    p.add_argument("--experiment", required=True, help="experiment name (created once)")
    p.add_argument("--run-name", required=True, help="name of the parent run")
    p.add_argument("--out", type=Path, required=True, help="file that receives the run id")
    p.add_argument("--artifact-location", help="artifact location for a new experiment")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="run tag")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="run param")
    p.add_argument("--config", type=Path, help="resolved config YAML: artifact + flat params")
    p.add_argument("--timeout-s", type=float, default=10.0, help="store check timeout")
    p.set_defaults(func=cmd_start_parent)

    p = add("log-summary", "log evaluation results onto the parent run as metrics")
    p.add_argument("--parent-run-id-file", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True, help='JSON with a "metrics" mapping')
    p.add_argument("--prefix", default="", help="metric name prefix, e.g. 'stage2.'")
    p.set_defaults(func=cmd_log_summary)

    p = add("finish-parent", "end the parent run with a status")
    p.add_argument("--parent-run-id-file", type=Path, required=True)
    p.add_argument("--status", default="FINISHED", choices=RUN_STATUSES)
    p.set_defaults(func=cmd_finish_parent)

    p = add("check", "fail-fast check that the tracking store is usable")
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``stackgan track <command> ...``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    if not args.tracking_uri:
        print("error: --tracking-uri not given and MLFLOW_TRACKING_URI not set", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    configure_mlflow_environment()
    args.tracking_uri = resolve_tracking_uri(args.tracking_uri, Path("."))
    try:
        return int(args.func(args))
    except (TrackingError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if not type(err).__module__.startswith("mlflow"):
            raise
        print(f"error: {args.tracking_uri}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
