"""The pipeline's parent run: start (or reuse) it, log the evaluation summary, finish it.

The library side of ``stackgan track``. Everything talks to the store synchronously through
``MlflowClient`` with explicit run ids; the parent's id lives in a run-id file
(:mod:`stackgan.tracking.run_ids`) that the workflow's rules pass around.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import yaml

from stackgan.tracking.run_ids import find_run, read_run_id, write_run_id
from stackgan.tracking.store import (
    TrackingError,
    check_tracking_store,
    default_artifact_location,
    ensure_experiment,
    mlflow_client,
)
from stackgan.tracking.tags import PIPELINE_ROLE, ROLE_TAG, STATUS_TAG
from stackgan.tracking.values import MAX_METRICS_PER_BATCH, chunks, context_tags, log_params

log = logging.getLogger(__name__)


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


def start_parent_run(
    uri: str,
    *,
    experiment: str,
    run_name: str,
    out: Path,
    artifact_location: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    config: Path | None = None,
    timeout_s: float = 10.0,
) -> str:
    """Check the store, create (or reuse) the parent run, write its id to ``out``; its id.

    A run-id file ``out`` that names an active run of this store reuses that run (set back
    to RUNNING): the command is idempotent. A new run gets tag ``stackgan.role=pipeline``.
    ``tags`` are (re)set either way; ``config`` (a YAML file) is logged as artifact
    ``config/<name>`` and its flattened keys as params, under ``params``.
    """
    location = artifact_location or default_artifact_location(uri)
    check_tracking_store(uri, timeout_s=timeout_s, artifact_location=location)
    tags, params = dict(tags or {}), dict(params or {})
    experiment_id = ensure_experiment(uri, experiment, location)
    client = mlflow_client(uri)
    run = find_run(client, read_run_id(out)) if out.exists() else None
    if run is not None:
        run_id = run.info.run_id
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        log.info("reusing parent run %s", run_id)
    else:
        tags = {**tags, ROLE_TAG: PIPELINE_ROLE}
        created = client.create_run(experiment_id, tags=context_tags(tags), run_name=run_name)
        run_id = created.info.run_id
        write_run_id(out, run_id)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if config is not None:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        params = {**loaded, **params}
        client.log_artifact(run_id, str(config), "config")
    if params:
        log_params(client, run_id, params)
    return run_id


def parent_run_id(path: Path) -> str:
    """The parent run id stored in ``path``.

    Raises:
        TrackingError: ``path`` is missing or holds no run id.
    """
    run_id = read_run_id(path)
    if run_id is None:
        raise TrackingError(f"{path}: no parent run id (run `stackgan track start-parent` first)")
    return run_id


def log_parent_params(
    uri: str, parent_run_id_file: Path, config: Path, hashed: dict[str, Path] | None = None
) -> tuple[str, int]:
    """Log a resolved pipeline config onto the parent run: flattened params + artifact.

    ``hashed`` maps a name to a file (the stages' run configs) whose sha256 is logged as
    param ``<name>.config_sha256``, so two pipeline runs compare on their parameters in the
    UI and over REST. A param that an earlier attempt logged with another value keeps its
    first value (MLflow params are immutable), with a warning.

    Returns:
        The parent run id and the number of params logged.
    """
    from stackgan.fileio import sha256_file
    from stackgan.tracking.values import param_items

    run_id = parent_run_id(parent_run_id_file)
    loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError(f"{config}: expected a YAML mapping")
    params: dict[str, Any] = dict(loaded)
    for name, path in (hashed or {}).items():
        params[f"{name}.config_sha256"] = sha256_file(path)
    client = mlflow_client(uri)
    log_params(client, run_id, params)
    client.log_artifact(run_id, str(config), "config")
    return run_id, len(param_items(params))


def log_summary(
    uri: str, parent_run_id_file: Path, results: Path, prefix: str = ""
) -> tuple[str, int]:
    """Log the numeric leaves under ``metrics`` of a results JSON onto the parent run.

    Metric names are ``prefix`` + the dotted key; NaN values are skipped.

    Returns:
        The parent run id and the number of metrics logged.

    Raises:
        ValueError: ``results`` has no ``metrics`` mapping, or no numeric value in it.
    """
    from mlflow.entities import Metric

    run_id = parent_run_id(parent_run_id_file)
    data = json.loads(results.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{results}: expected a JSON object with a 'metrics' mapping")
    values = numeric_leaves(data["metrics"], prefix)
    if not values:
        raise ValueError(f"{results}: no numeric values under 'metrics'")
    now_ms = int(time.time() * 1000)
    metrics = [Metric(k, v, now_ms, 0) for k, v in values.items() if not math.isnan(v)]
    client = mlflow_client(uri)
    for batch in chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch)
    return run_id, len(metrics)


def log_parent_artifact(uri: str, parent_run_id_file: Path, path: Path) -> str:
    """Upload ``path`` (e.g. the run report) as an artifact of the parent run; its run id."""
    if not path.is_file():
        raise ValueError(f"{path}: not found (expected the file to log as an artifact)")
    run_id = parent_run_id(parent_run_id_file)
    mlflow_client(uri).log_artifact(run_id, str(path))
    return run_id


def finish_parent_run(uri: str, parent_run_id_file: Path, status: str = "FINISHED") -> str:
    """End the parent run with ``status`` (also set as its ``status`` tag); its id."""
    run_id = parent_run_id(parent_run_id_file)
    client = mlflow_client(uri)
    client.set_tag(run_id, STATUS_TAG, status)
    client.set_terminated(run_id, status=status)
    return run_id
