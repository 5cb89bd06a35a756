"""Experiment tracking behind a small ``Tracker`` protocol (MLflow 3.17.2 backend).

The training loop and evaluation only see :class:`Tracker`; nothing below them imports
``mlflow``. The package:

* :mod:`~stackgan.tracking.protocol` — :class:`Tracker`, :class:`NullTracker`,
  :func:`tracker_for_rank`.
* :mod:`~stackgan.tracking.store` — the URI resolver, sqlite helpers, ``ensure_experiment``, the
  fail-fast store check (also used by the workflow), the MLflow process environment.
* :mod:`~stackgan.tracking.run_ids` — run-id files and ``find_run``.
* :mod:`~stackgan.tracking.tags` — the tag names and the values each writer uses.
* :mod:`~stackgan.tracking.values` — MLflow's limits, param flattening, the tolerant param batches.
* :mod:`~stackgan.tracking.worker` — the tracker's bounded work queue and retry policy.
* :mod:`~stackgan.tracking.mlflow_tracker` — :class:`MLflowTracker` (one background thread).
* :mod:`~stackgan.tracking.parent` — the pipeline's parent run (``stackgan track``).
* :mod:`~stackgan.tracking.compare` — run comparison tables (``stackgan runs``).

See docs/tracking.md.
"""

from __future__ import annotations

from stackgan.tracking.mlflow_tracker import MLflowTracker
from stackgan.tracking.protocol import InputRecord, NullTracker, Tracker, tracker_for_rank
from stackgan.tracking.run_ids import find_run, read_run_id, write_run_id
from stackgan.tracking.store import (
    TrackingError,
    TrackingStoreError,
    check_tracking_store,
    configure_mlflow_environment,
    default_artifact_location,
    ensure_experiment,
    mlflow_client,
    resolve_tracking_uri,
)
from stackgan.tracking.tags import ATTEMPT_TAG, PARENT_RUN_TAG, RUN_STATUSES, STAGE_TAG
from stackgan.tracking.values import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE_LEN,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE_LEN,
    TRUNCATION_MARKER,
    context_tags,
    param_items,
)
from stackgan.tracking.worker import RetryPolicy

__all__ = [
    "ATTEMPT_TAG",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VALUE_LEN",
    "MAX_TAG_VALUE_LEN",
    "PARENT_RUN_TAG",
    "RUN_STATUSES",
    "STAGE_TAG",
    "TRUNCATION_MARKER",
    "InputRecord",
    "MLflowTracker",
    "NullTracker",
    "RetryPolicy",
    "Tracker",
    "TrackingError",
    "TrackingStoreError",
    "check_tracking_store",
    "configure_mlflow_environment",
    "context_tags",
    "default_artifact_location",
    "ensure_experiment",
    "find_run",
    "mlflow_client",
    "param_items",
    "read_run_id",
    "resolve_tracking_uri",
    "tracker_for_rank",
    "write_run_id",
]
