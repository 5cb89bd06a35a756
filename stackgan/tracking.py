"""Experiment tracking behind a small ``Tracker`` protocol (MLflow 3.17.2 backend).

The training loop and evaluation only see :class:`Tracker`; nothing below them imports
``mlflow``. Two implementations:

* :class:`NullTracker` — does nothing (non-zero ranks, tests, tracking switched off).
* :class:`MLflowTracker` — logs to one MLflow run through an explicit ``MlflowClient``
  and run id (no fluent active-run state, so ``MLFLOW_RUN_ID`` can never redirect it).
  Every logging call is put on a bounded in-memory queue drained by ONE background
  thread, so the training thread never waits on the network or on SQLite.

Stores: ``sqlite:///<results_dir>/mlflow.db`` with artifacts in
``<results_dir>/mlartifacts`` (embedded default) or a shared ``mlflow server`` over
HTTP. See docs/tracking.md.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from stackgan.config import flatten
from stackgan.errors import StackGANError
from stackgan.fileio import atomic_open

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# MLflow limits (mlflow/utils/validation.py in 3.17.2).
MAX_PARAM_VALUE_LEN = 6000
MAX_TAG_VALUE_LEN = 8000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
TRUNCATION_MARKER = "...[truncated]"

PARENT_RUN_TAG = "mlflow.parentRunId"
# what a run is: "1"/"2" (a training stage), "eval1"/"eval2" (its evaluation), "pipeline"
STAGE_TAG = "stage"
ATTEMPT_TAG = "stackgan.attempt"  # 1 for a new run, +1 each time it is continued
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

# Client-side HTTP defaults for MLflow REST calls, applied only when the user has not set
# them: mlflow's own defaults (7 retries, 120 s timeout) would let one call hang for
# minutes; retries are done here instead (RetryPolicy).
_HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# Error codes that retrying cannot fix.
_PERMANENT_ERROR_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "BAD_REQUEST",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "ENDPOINT_NOT_FOUND",
    }
)
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_IMAGE_KEY_RE = re.compile(r"^[a-zA-Z0-9_\-./ ]+$")


class TrackingError(StackGANError, RuntimeError):
    """A tracking operation cannot go ahead (bad run-id file, deleted experiment, ...)."""


class TrackingStoreError(TrackingError):
    """The tracking store is unreachable or unwritable (the message names URI and reason)."""


# --------------------------------------------------------------------------- environment


def configure_mlflow_environment() -> None:
    """Prepare this process for MLflow; every entry point calls it before using mlflow.

    * Telemetry off: ``MLFLOW_DISABLE_TELEMETRY=true`` and ``DO_NOT_TRACK=true`` (the two
      switches ``mlflow.telemetry.utils.is_telemetry_disabled`` reads). ``import mlflow``
      creates its telemetry client at import time, so if mlflow is already imported the
      client is re-initialised (to ``None``).
    * ``MLFLOW_RUN_ID`` is removed from ``os.environ`` (with a warning): the fluent
      ``mlflow.start_run`` would resume that run instead of creating ours, and child
      processes would inherit it. Our code never reads it.
    * HTTP client defaults (no internal retries, 10 s timeout) unless already set.
    """
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    for key, value in _HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    stray = os.environ.pop("MLFLOW_RUN_ID", None)
    if stray:
        log.warning("ignoring and unsetting MLFLOW_RUN_ID=%s (runs are chosen explicitly)", stray)
    if "mlflow.telemetry.client" in sys.modules:
        sys.modules["mlflow.telemetry.client"].set_telemetry_client()


def mlflow_client(uri: str) -> MlflowClient:
    configure_mlflow_environment()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --------------------------------------------------------------------------- store helpers


def _sqlite_db_path(uri: str) -> Path | None:
    """Database path of a ``sqlite:///`` URI (``None`` for in-memory)."""
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest)


def _absolute_sqlite_uri(uri: str) -> str:
    if not uri.startswith("sqlite:"):
        return uri
    db = _sqlite_db_path(uri)
    if db is None:
        return uri
    query = uri.split("?", 1)[1] if "?" in uri else ""
    absolute = f"sqlite:///{db.expanduser().resolve().as_posix()}"
    return f"{absolute}?{query}" if query else absolute


def resolve_tracking_uri(configured: str | None, results_dir: Path) -> str:
    """Pick the tracking URI: config value > ``MLFLOW_TRACKING_URI`` > embedded sqlite.

    Args:
        configured: URI from the run configuration (empty/None = not configured).
        results_dir: Directory that holds ``mlflow.db`` for the embedded default.

    Returns:
        The URI; sqlite URIs always carry an absolute path, so jobs that run in other
        working directories reach the same database.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        uri = f"sqlite:///{(Path(results_dir) / 'mlflow.db').as_posix()}"
    return _absolute_sqlite_uri(uri)


def default_artifact_location(uri: str) -> str | None:
    """``<db dir>/mlartifacts`` as a file URI for sqlite stores; ``None`` otherwise.

    For an HTTP server ``None`` leaves the location to the server's
    ``--artifacts-destination``.
    """
    if not uri.startswith("sqlite:"):
        return None
    db = _sqlite_db_path(_absolute_sqlite_uri(uri))
    return None if db is None else (db.parent / "mlartifacts").as_uri()


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Return the id of experiment ``name``, creating it once with ``artifact_location``.

    Safe when several processes race: a losing ``create_experiment`` ("already exists")
    re-reads the experiment.

    Raises:
        TrackingError: The experiment exists but is deleted.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(err):
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"experiment {name!r} in {uri} is deleted; restore it in the UI or purge it "
            "with `mlflow gc`"
        )
    if artifact_location and exp.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
        log.warning(
            "experiment %r keeps its artifact location %s (requested %s)",
            name,
            exp.artifact_location,
            artifact_location,
        )
    return exp.experiment_id


def _call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run ``fn`` in a daemon thread; raise ``TimeoutError`` if it takes longer."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="tracking-probe")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _probe_writable_dir(directory: Path, create: bool) -> None:
    """Raise ``OSError`` unless a file can be created in ``directory``."""
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {directory} does not exist")
    fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
    os.close(fd)
    os.unlink(name)


def _local_artifact_dir(location: str | None) -> Path | None:
    if not location:
        return None
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a drive letter)
        return Path(location)
    return None  # remote artifact store: checked by whoever serves it


def _check_http(uri: str, timeout_s: float) -> None:
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    request = urllib.request.Request(
        url,
        data=b'{"max_results": 1}',
        headers={"Content-Type": "application/json", **_auth_headers()},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if not 200 <= response.status < 300:
            raise OSError(f"HTTP {response.status} from {url}")


def _auth_headers() -> dict[str, str]:
    import base64

    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    user, password = (
        os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    )
    if user and password:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }
    return {}


def check_tracking_store(
    uri: str,
    timeout_s: float = 10.0,
    artifact_location: str | None = None,
) -> None:
    """Fail fast, before any compute, when the tracking store cannot be used.

    * sqlite: the database directory must exist and accept a new file, and the
      database must open (and migrate) within ``timeout_s``.
    * http(s): a cheap REST call (``experiments/search``) must answer 2xx within
      ``timeout_s`` (connection refused, timeouts and errors fail).
    * local artifact location (given, or the sqlite default): must be writable.

    Raises:
        TrackingStoreError: Naming the URI and the reason.
    """
    configure_mlflow_environment()
    try:
        scheme = urllib.parse.urlparse(uri).scheme
        if scheme == "sqlite":
            db = _sqlite_db_path(uri)
            if db is not None:
                _probe_writable_dir(db.parent, create=False)
            _call_with_timeout(
                lambda: mlflow_client(uri).search_experiments(max_results=1), timeout_s
            )
            artifact_location = artifact_location or default_artifact_location(uri)
        elif scheme in ("http", "https"):
            _call_with_timeout(lambda: _check_http(uri, timeout_s), timeout_s + 1.0)
        elif scheme == "file" or scheme == "":
            raise OSError(
                "the file store is refused by mlflow 3.17.2 (maintenance mode); use "
                "sqlite:///<dir>/mlflow.db or an http:// server"
            )
        else:
            _call_with_timeout(
                lambda: mlflow_client(uri).search_experiments(max_results=1), timeout_s
            )
        artifact_dir = _local_artifact_dir(artifact_location)
        if artifact_dir is not None:
            _probe_writable_dir(artifact_dir, create=True)
    except TrackingStoreError:
        raise
    except Exception as err:
        raise TrackingStoreError(f"tracking store {uri} is not usable: {_reason(err)}") from err


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return f"{type(err).__name__}: {err}"


# --------------------------------------------------------------------------- the protocol


@runtime_checkable
class Tracker(Protocol):
    """What training and evaluation log through (rank 0 only)."""

    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None:
        """Log (nested) params: flattened, stringified, truncated to MLflow's limits."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at ``step``."""

    def log_image(self, image: np.ndarray, key: str, step: int | None = None) -> None:
        """Log a uint8 HWC (or HW) image as a step-indexed image under ``key``."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file (it must stay in place until ``close()``)."""

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Store ``data`` as a JSON/YAML artifact (by the file's suffix)."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags (values stringified)."""

    def log_checkpoint_path(self, path: str | Path, name: str = "checkpoint") -> None:
        """Record where a checkpoint lives (tag ``<name>_path``); never uploads it."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run with FINISHED, FAILED or KILLED."""


class NullTracker:
    """A tracker that records nothing (non-zero ranks, tests, tracking disabled)."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        """Do nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Do nothing."""

    def log_image(self, image: np.ndarray, key: str, step: int | None = None) -> None:
        """Do nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Do nothing."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Do nothing."""

    def log_checkpoint_path(self, path: str | Path, name: str = "checkpoint") -> None:
        """Do nothing."""

    def close(self, status: str = "FINISHED") -> None:
        """Do nothing."""


def tracker_for_rank(rank: int, factory: Callable[[], Tracker]) -> Tracker:
    """``factory()`` on global rank 0, a :class:`NullTracker` elsewhere (factory not called)."""
    return factory() if rank == 0 else NullTracker()


# --------------------------------------------------------------------------- value helpers


def _truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def param_items(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Flatten nested params to ``[(dotted.key, str value)]`` within MLflow's value limit."""
    return [(k, _truncate(str(v), MAX_PARAM_VALUE_LEN)) for k, v in flatten(params).items()]


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_run_id(path: Path) -> str | None:
    """The run id stored in ``path`` (``None`` when missing, empty or malformed)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not _RUN_ID_RE.match(text):
        log.warning("ignoring run-id file %s: %r is not an MLflow run id", path, text[:80])
        return None
    return text


def write_run_id(path: Path, run_id: str) -> None:
    """Atomically write ``run_id`` to ``path``."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(run_id + "\n")


def find_run(client: MlflowClient, run_id: str | None) -> Any | None:
    """The active (not deleted) run ``run_id`` in the client's store, else ``None``."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return run if run.info.lifecycle_stage == "active" else None


def context_tags(tags: dict[str, Any]) -> dict[str, str]:
    """``tags`` plus MLflow's standard source/user/git tags (as ``mlflow.start_run`` adds)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        resolved = resolve_tags(dict(tags))
    except Exception as err:  # context providers are best effort
        log.debug("run context tags unavailable: %s", err)
        resolved = dict(tags)
    return {k: _truncate(str(v), MAX_TAG_VALUE_LEN) for k, v in resolved.items()}


# --------------------------------------------------------------------------- work queue


@dataclass
class _Item:
    kind: str  # metrics | params | tags | image | artifact | dict | end
    payload: Any
    droppable: bool = False


class _WorkQueue:
    """Bounded FIFO: when full, the oldest metrics batch (else image) makes room."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.dropped: dict[str, int] = {"metrics": 0, "image": 0}
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._woken = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: _Item) -> None:
        with self._cond:
            if len(self._items) >= self.max_items and item.droppable:
                victim = self._oldest("metrics") or self._oldest("image")
                if victim is None:  # only essential items queued: drop the new one
                    self.dropped[item.kind] += 1
                    return
                self._items.remove(victim)
                self.dropped[victim.kind] += 1
            self._items.append(item)
            self._cond.notify()

    def _oldest(self, kind: str) -> _Item | None:
        return next((i for i in self._items if i.kind == kind), None)

    def get(self, linger_until: float = 0.0) -> _Item:
        """Next item; consecutive metrics batches are merged (≤ MAX_METRICS_PER_BATCH).

        When the next item is a metrics batch, wait until ``linger_until`` (monotonic
        time) for more to merge, unless something else is queued behind it, the queue is
        half full or :meth:`wake` was called.
        """
        with self._cond:
            while not self._items:
                self._cond.wait()
            while (
                self._items[0].kind == "metrics"
                and self._items[-1].kind == "metrics"
                and len(self._items) < self.max_items // 2
                and not self._woken
                and (remaining := linger_until - time.monotonic()) > 0
            ):
                self._cond.wait(remaining)
            item = self._items.popleft()
            if item.kind != "metrics":
                return item
            rows = list(item.payload)
            while (
                self._items
                and self._items[0].kind == "metrics"
                and len(rows) + len(self._items[0].payload) <= MAX_METRICS_PER_BATCH
            ):
                rows.extend(self._items.popleft().payload)
            return _Item("metrics", rows, droppable=True)

    def wake(self) -> None:
        """Stop lingering for good (close() is flushing)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one queued item in the background worker."""

    max_attempts: int = 3  # attempts per item, the first included
    initial_backoff_s: float = 1.0  # wait after the first failure; doubles each time
    budget_s: float = 20.0  # no new attempt starts later than this after the first


def _is_permanent(err: BaseException) -> bool:
    return getattr(err, "error_code", None) in _PERMANENT_ERROR_CODES or isinstance(
        err, TypeError | ValueError
    )


# --------------------------------------------------------------------------- MLflow tracker


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
        self._queue = _WorkQueue(queue_size)
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
        run = find_run(client, read_run_id(run_id_file)) if run_id_file else None
        if run is not None:
            run_id = run.info.run_id
            attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, ATTEMPT_TAG, str(attempt))
            log.info("continuing MLflow run %s (attempt %d)", run_id, attempt)
        else:
            all_tags = {**(tags or {}), ATTEMPT_TAG: "1"}
            if parent_run_id:
                all_tags[PARENT_RUN_TAG] = parent_run_id
            run_id = client.create_run(
                experiment_id, tags=context_tags(all_tags), run_name=run_name
            ).info.run_id
            if run_id_file is not None:
                write_run_id(run_id_file, run_id)
        monitor = None
        if log_system_metrics:
            monitor = _start_system_metrics(
                run_id,
                tracking_uri,
                system_metrics_interval_s,
                system_metrics_node_id,
                resume=run is not None,
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
        if run is not None and tags:
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
        for chunk in _chunks(param_items(params), MAX_PARAMS_TAGS_PER_BATCH):
            self._put(_Item("params", chunk))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Enqueue scalar metrics at ``step`` (never blocks; may drop when full)."""
        now_ms = int(time.time() * 1000)
        rows = [(k, float(v), now_ms, int(step)) for k, v in metrics.items()]
        if rows:
            self._put(_Item("metrics", rows, droppable=True))

    def log_image(self, image: np.ndarray, key: str, step: int | None = None) -> None:
        """Enqueue a copy of a uint8 HWC/HW image; PNG encoding happens in the worker."""
        import numpy as np

        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"log_image expects uint8 HW or HWC, got {image.dtype} {image.shape}")
        if not _IMAGE_KEY_RE.match(key):
            raise ValueError(f"image key {key!r} may only contain [A-Za-z0-9_-./ ]")
        self._put(_Item("image", (np.array(image, copy=True), key, step), droppable=True))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Enqueue an upload of a local file (it must stay in place until ``close()``)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        self._put(_Item("artifact", (str(path), artifact_path)))

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Enqueue a deep copy of ``data`` as a JSON/YAML artifact."""
        self._put(_Item("dict", (copy.deepcopy(data), artifact_file)))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Enqueue tags (values stringified, ≤ 8000 chars), 100 per ``log_batch``."""
        items = [(k, _truncate(str(v), MAX_TAG_VALUE_LEN)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._put(_Item("tags", chunk))

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
        self._queue.put(_Item("end", status))
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

    def _put(self, item: _Item) -> None:
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
            _call_with_timeout(self._monitor.finish, timeout_s)
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

    def _send(self, item: _Item) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id, client = self.run_id, self._client
        if item.kind == "metrics":
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in item.payload]
            client.log_batch(run_id, metrics=metrics, synchronous=True)
        elif item.kind == "params":
            self._send_params([Param(k, v) for k, v in item.payload])
        elif item.kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in item.payload])
        elif item.kind == "image":
            image, key, step = item.payload
            client.log_image(run_id, image, key=key, step=step, synchronous=True)
        elif item.kind == "artifact":
            client.log_artifact(run_id, item.payload[0], item.payload[1])
        elif item.kind == "dict":
            client.log_dict(run_id, item.payload[0], item.payload[1])
        elif item.kind == "end":
            client.set_terminated(run_id, status=item.payload)

    def _send_params(self, params: list[Any]) -> None:
        """``log_batch`` the params; on a value conflict, log them one by one.

        A continued run may re-log a param with a new value (e.g. another git commit);
        MLflow refuses the whole batch then. The first value is kept, the others land.
        """
        from mlflow.exceptions import MlflowException

        try:
            self._client.log_batch(self.run_id, params=params)
        except MlflowException as err:
            if err.error_code != "INVALID_PARAMETER_VALUE" or len(params) == 1:
                raise
            for param in params:
                try:
                    self._client.log_param(self.run_id, param.key, param.value)
                except MlflowException as one_err:
                    if one_err.error_code != "INVALID_PARAMETER_VALUE":
                        raise
                    log.warning("param %s kept its first value: %s", param.key, one_err)

    def _with_retry(self, item: _Item, send: Callable[[], None]) -> bool:
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
                if _is_permanent(err) or late or attempt == policy.max_attempts:
                    break
                if self._abort.wait(delay):
                    break
                delay *= 2
        self.failed_items += 1
        log.warning("MLflow %s for run %s dropped", item.kind, self.run_id)
        return False


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


__all__ = [
    "ATTEMPT_TAG",
    "PARENT_RUN_TAG",
    "STAGE_TAG",
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
