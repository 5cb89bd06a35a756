"""The MLflow tracker: logs one MLflow run from a background thread (MLflow 3.17.2).

:class:`MLflowTracker` logs through an explicit ``MlflowClient`` and run id (no fluent
active-run state, so ``MLFLOW_RUN_ID`` can never redirect it). Every logging call is put on a
bounded in-memory queue (:mod:`stackgan.tracking.worker`) drained by ONE background thread,
so the training thread never waits on the network or on SQLite.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackgan.tracking.protocol import InputRecord
from stackgan.tracking.run_ids import find_run, read_run_id, write_run_id
from stackgan.tracking.store import (
    call_with_timeout,
    configure_mlflow_environment,
    default_artifact_location,
    ensure_experiment,
    mlflow_client,
)
from stackgan.tracking.tags import ATTEMPT_TAG, PARENT_RUN_TAG, RUN_STATUSES
from stackgan.tracking.values import (
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE_LEN,
    chunks,
    context_tags,
    dataset_input,
    param_batches,
    send_param_batch,
    truncate,
)
from stackgan.tracking.worker import RetryPolicy, WorkItem, WorkQueue, is_permanent

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_IMAGE_KEY_RE = re.compile(r"^[a-zA-Z0-9_\-./ ]+$")


class MLflowTracker:
    """Logs to one MLflow run from a background thread; see the module docstring.

    Build it with :meth:`start`. Metrics are sent with ``log_batch``; when the queue is
    full the oldest metrics batch is dropped (``dropped`` counts them). Transient store
    errors are retried per :class:`RetryPolicy` and then dropped with a warning.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        queue_size: int = 1000,  # items (a metrics call or an image is one item)
        retry: RetryPolicy | None = None,
        flush_timeout_s: float = 60.0,  # close() waits at most this long for the queue
        metrics_interval_s: float = 1.0,  # send metrics at most this often (merged batches)
        monitor: Any | None = None,  # a started SystemMetricsMonitor, stopped by close()
    ) -> None:
        self.run_id: str | None = run_id
        self.failed_items = 0
        self._client = client
        self._queue = WorkQueue(queue_size)
        self._retry = retry or RetryPolicy()
        self._flush_timeout_s = flush_timeout_s
        self._metrics_interval_s = metrics_interval_s
        self._monitor = monitor
        self._abort = threading.Event()
        self._closed = False
        self._worker = threading.Thread(target=self._work, daemon=True, name="mlflow-tracker")
        self._worker.start()
        atexit.register(self._close_at_exit)

    # ----------------------------------------------------------------- construction

    @classmethod
    def start(
        cls,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        parent_run_id: str | None = None,
        run_id_file: Path | None = None,  # continue the run named here; else create + write it
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,  # default: sqlite -> <db dir>/mlartifacts
        log_system_metrics: bool = True,
        system_metrics_interval_s: float = 10.0,
        system_metrics_node_id: str | None = None,  # per-node prefix for multi-node runs
        client: MlflowClient | None = None,  # injected client (tests); default MlflowClient(uri)
        queue_size: int = 1000,
        retry: RetryPolicy | None = None,
        flush_timeout_s: float = 60.0,
        metrics_interval_s: float = 1.0,
    ) -> MLflowTracker:
        """Create a run, or continue the one recorded in ``run_id_file``.

        A new run gets ``mlflow.parentRunId`` (when ``parent_run_id`` is given) and its
        id is written atomically to ``run_id_file`` before anything else is logged. A
        continued run is set back to RUNNING and its ``stackgan.attempt`` tag is
        incremented, so a retried stage appears as one run.
        """
        configure_mlflow_environment()
        client = client or mlflow_client(tracking_uri)
        location = artifact_location or default_artifact_location(tracking_uri)
        experiment_id = ensure_experiment(tracking_uri, experiment, location)
        run_id, continued = _open_run(
            client, experiment_id, run_name, parent_run_id, run_id_file, tags
        )
        monitor = None
        if log_system_metrics:
            monitor = _start_system_metrics(
                run_id,
                tracking_uri,
                system_metrics_interval_s,
                system_metrics_node_id,
                resume=continued,
            )
        tracker = cls(
            client,
            run_id,
            queue_size=queue_size,
            retry=retry,
            flush_timeout_s=flush_timeout_s,
            metrics_interval_s=metrics_interval_s,
            monitor=monitor,
        )
        if continued and tags:
            tracker.set_tags(tags)
        return tracker

    # ----------------------------------------------------------------- Tracker API

    @property
    def dropped(self) -> dict[str, int]:
        """Items dropped because the queue was full, by kind."""
        return dict(self._queue.dropped)

    def pending(self) -> int:
        """Items waiting in the queue."""
        return len(self._queue)

    def log_params(self, params: dict[str, Any]) -> None:
        """Enqueue flattened params, 100 per ``log_batch`` (values ≤ 6000 chars)."""
        for batch in param_batches(params):
            self._put(WorkItem("params", batch))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Enqueue scalar metrics at ``step`` (never blocks; may drop when full)."""
        now_ms = int(time.time() * 1000)
        rows = [(k, float(v), now_ms, int(step)) for k, v in metrics.items()]
        if rows:
            self._put(WorkItem("metrics", rows, droppable=True))

    def log_image(self, image: np.ndarray, key: str, step: int | None = None) -> None:
        """Enqueue a copy of a uint8 HWC/HW image; PNG encoding happens in the worker."""
        import numpy as np

        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"log_image expects uint8 HW or HWC, got {image.dtype} {image.shape}")
        if not _IMAGE_KEY_RE.match(key):
            raise ValueError(f"image key {key!r} may only contain [A-Za-z0-9_-./ ]")
        self._put(WorkItem("image", (np.array(image, copy=True), key, step), droppable=True))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Enqueue an upload of a local file (it must stay in place until ``close()``)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        self._put(WorkItem("artifact", (str(path), artifact_path)))

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Enqueue a deep copy of ``data`` as a JSON/YAML artifact."""
        self._put(WorkItem("dict", (copy.deepcopy(data), artifact_file)))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Enqueue tags (values stringified, ≤ 8000 chars), 100 per ``log_batch``."""
        items = [(k, truncate(str(v), MAX_TAG_VALUE_LEN)) for k, v in tags.items()]
        for chunk in chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._put(WorkItem("tags", chunk))

    def log_input(self, data: InputRecord) -> None:
        """Enqueue a dataset input (``MlflowClient.log_inputs``)."""
        self._put(WorkItem("inputs", data))

    def log_checkpoint_path(self, path: str | Path, name: str = "checkpoint") -> None:
        """Record a checkpoint's absolute path as tag ``<name>_path``; never uploads it."""
        self.set_tags({f"{name}_path": str(Path(path).resolve())})

    def close(self, status: str = "FINISHED") -> None:
        """Stop system metrics, flush the queue (bounded), end the run with ``status``.

        Returns after at most about ``flush_timeout_s`` (+ a few seconds for the system
        metrics thread) even when the store is dead; the run then stays RUNNING in the
        store and a warning names the items that were not written.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        deadline = time.monotonic() + self._flush_timeout_s
        self._stop_monitor(min(10.0, self._flush_timeout_s))
        self._queue.put(WorkItem("end", status))
        self._queue.wake()
        self._worker.join(max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive():
            self._abort.set()
            log.warning(
                "MLflow run %s: %d item(s) not written within %.0f s; the run may stay RUNNING",
                self.run_id,
                len(self._queue) + 1,
                self._flush_timeout_s,
            )
        if any(self._queue.dropped.values()):
            log.warning("MLflow run %s: dropped %s (queue full)", self.run_id, self.dropped)

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):
            self.close("KILLED")
        else:
            self.close("FAILED")

    # ----------------------------------------------------------------- internals

    def _put(self, item: WorkItem) -> None:
        if self._closed:
            log.debug("tracker closed; ignoring %s", item.kind)
            return
        self._queue.put(item)

    def _close_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close("FAILED")

    def _stop_monitor(self, timeout_s: float) -> None:
        if self._monitor is None:
            return
        try:
            call_with_timeout(self._monitor.finish, timeout_s)
        except Exception as err:
            log.warning("system metrics monitor did not stop cleanly: %s", err)

    def _work(self) -> None:
        last_metrics = 0.0
        while not self._abort.is_set():
            item = self._queue.get(linger_until=last_metrics + self._metrics_interval_s)
            if self._abort.is_set():
                return
            if item.kind == "metrics":
                last_metrics = time.monotonic()
            self._with_retry(item, lambda item=item: self._send(item))
            if item.kind == "end":
                return

    def _send(self, item: WorkItem) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id, client = self.run_id, self._client
        if item.kind == "metrics":
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in item.payload]
            client.log_batch(run_id, metrics=metrics, synchronous=True)
        elif item.kind == "params":
            send_param_batch(client, run_id, [Param(k, v) for k, v in item.payload])
        elif item.kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in item.payload])
        elif item.kind == "image":
            image, key, step = item.payload
            client.log_image(run_id, image, key=key, step=step, synchronous=True)
        elif item.kind == "artifact":
            client.log_artifact(run_id, item.payload[0], item.payload[1])
        elif item.kind == "dict":
            client.log_dict(run_id, item.payload[0], item.payload[1])
        elif item.kind == "inputs":
            client.log_inputs(run_id, datasets=[dataset_input(item.payload)])
        elif item.kind == "end":
            client.set_terminated(run_id, status=item.payload)

    def _with_retry(self, item: WorkItem, send: Callable[[], None]) -> bool:
        policy, started, delay = self._retry, time.monotonic(), self._retry.initial_backoff_s
        for attempt in range(1, policy.max_attempts + 1):
            try:
                send()
                return True
            except Exception as err:
                log.warning(
                    "MLflow %s for run %s failed (attempt %d/%d): %s",
                    item.kind,
                    self.run_id,
                    attempt,
                    policy.max_attempts,
                    err,
                )
                late = time.monotonic() - started + delay > policy.budget_s
                if is_permanent(err) or late or attempt == policy.max_attempts:
                    break
                if self._abort.wait(delay):
                    break
                delay *= 2
        self.failed_items += 1
        log.warning("MLflow %s for run %s dropped", item.kind, self.run_id)
        return False


def _open_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    parent_run_id: str | None,
    run_id_file: Path | None,
    tags: dict[str, Any] | None,
) -> tuple[str, bool]:
    """``(run id, continued)``: the run named in ``run_id_file`` set back to RUNNING with
    its attempt counted, else a new run (tagged, its id written to ``run_id_file``).
    """
    run = find_run(client, read_run_id(run_id_file)) if run_id_file else None
    if run is not None:
        run_id = run.info.run_id
        attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, ATTEMPT_TAG, str(attempt))
        log.info("continuing MLflow run %s (attempt %d)", run_id, attempt)
        return run_id, True
    all_tags = {**(tags or {}), ATTEMPT_TAG: "1"}
    if parent_run_id:
        all_tags[PARENT_RUN_TAG] = parent_run_id
    run_id = client.create_run(
        experiment_id, tags=context_tags(all_tags), run_name=run_name
    ).info.run_id
    if run_id_file is not None:
        write_run_id(run_id_file, run_id)
    return run_id, False


def _start_system_metrics(
    run_id: str,
    tracking_uri: str,
    interval_s: float,
    node_id: str | None,
    resume: bool,
) -> Any | None:
    """Start mlflow's SystemMetricsMonitor on an explicit run id (None when unavailable).

    CPU, memory, disk and network always; GPU when ``pynvml`` (nvidia-ml-py) imports.
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` in the environment overrides ``interval_s``.
    """
    try:
        import psutil  # noqa: F401  (the monitor needs it)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=interval_s,
            resume_logging=resume,
            node_id=node_id,
            tracking_uri=tracking_uri,
        )
        monitor.start()
        return monitor
    except Exception as err:
        log.warning("system metrics disabled: %s", err)
        return None
