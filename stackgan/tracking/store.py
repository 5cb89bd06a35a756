"""The tracking store: URI resolution, sqlite helpers, experiments and the fail-fast check.

Stores: ``sqlite:///<results_dir>/mlflow.db`` with artifacts in ``<results_dir>/mlartifacts``
(the embedded default) or a shared ``mlflow server`` over HTTP. See docs/tracking.md. The
workflow (``pipeline/settings.py``) resolves its URI here too.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackgan.errors import StackGANError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


# Client-side HTTP defaults for MLflow REST calls, applied only when the user has not set
# them: mlflow's own defaults (7 retries, 120 s timeout) would let one call hang for
# minutes; retries are done by the tracker instead (``RetryPolicy``).
_HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


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
    """An ``MlflowClient`` for ``uri``, after :func:`configure_mlflow_environment`."""
    configure_mlflow_environment()
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:") or uri in _INITIALISED:
        return MlflowClient(tracking_uri=uri)
    with _sqlite_init_lock(uri):
        client = MlflowClient(tracking_uri=uri)  # opens the store: tables, migrations
    _INITIALISED.add(uri)
    return client


_INITIALISED: set[str] = set()


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a sqlite store's database file, while a client opens it.

    MLflow's tracking store creates and migrates the tables of an empty database without a
    lock, so jobs that open a fresh store at the same moment (two pipeline runs, or the
    seeds of a benchmark) race, and the losers fail ("duplicate column name"). The lock
    sits next to the database, so it also holds across the nodes of a shared file system.
    """
    import fcntl

    db = _sqlite_db_path(uri)
    if db is None or not db.parent.is_dir():
        yield  # in-memory, or a missing directory that MLflow reports itself
        return
    with open(db.with_name(db.name + ".init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- store helpers


def _sqlite_db_path(uri: str) -> Path | None:
    """Database path of a ``sqlite:///`` URI (``None`` for in-memory)."""
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest)


def absolute_sqlite_uri(uri: str) -> str:
    """``uri`` with an absolute database path when it is a file-backed sqlite URI."""
    if not uri.startswith("sqlite:"):
        return uri
    db = _sqlite_db_path(uri)
    if db is None:
        return uri
    query = uri.split("?", 1)[1] if "?" in uri else ""
    absolute = f"sqlite:///{db.expanduser().resolve().as_posix()}"
    return f"{absolute}?{query}" if query else absolute


def resolve_tracking_uri(configured: str | None, results_dir: str | Path) -> str:
    """Pick the tracking URI: config value > ``MLFLOW_TRACKING_URI`` > embedded sqlite.

    The one resolver, also used by the workflow: the default store is shared by every run
    under one results directory, so two pipeline runs (``--config run=a`` / ``run=b``) land
    side by side in the same MLflow experiment.

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
    return absolute_sqlite_uri(uri)


def default_artifact_location(uri: str) -> str | None:
    """``<db dir>/mlartifacts`` as a file URI for sqlite stores; ``None`` otherwise.

    For an HTTP server ``None`` leaves the location to the server's
    ``--artifacts-destination``.
    """
    if not uri.startswith("sqlite:"):
        return None
    db = _sqlite_db_path(absolute_sqlite_uri(uri))
    return None if db is None else (db.parent / "mlartifacts").as_uri()


def require_existing_sqlite_db(uri: str) -> None:
    """Raise ``ValueError`` unless a ``sqlite:///`` URI names an existing database file.

    A read-only command (``stackgan runs``) must not create an empty sqlite database.
    """
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not db.is_file():
            raise ValueError(f"no MLflow database at {db}")


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3 UI: the model-training view


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Return the id of experiment ``name``, creating it once with ``artifact_location``.

    Safe when several processes race: a losing ``create_experiment`` ("already exists")
    re-reads the experiment. The experiment carries ``mlflow.experimentKind =
    custom_model_development`` (set on first use of an older one too), so MLflow 3's UI
    opens it in the training-runs view instead of the GenAI one.

    Raises:
        TrackingError: The experiment exists but is deleted.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
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
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if artifact_location and exp.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
        log.warning(
            "experiment %r keeps its artifact location %s (requested %s)",
            name,
            exp.artifact_location,
            artifact_location,
        )
    return exp.experiment_id


def call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
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


SQLITE_TIMEOUT_S = 60.0  # the least time a local sqlite store gets to open and migrate


def check_tracking_store(
    uri: str,
    timeout_s: float = 10.0,
    artifact_location: str | None = None,
) -> None:
    """Fail fast, before any compute, when the tracking store cannot be used.

    * sqlite: the database directory must exist and accept a new file, and the
      database must open (and migrate) within ``max(timeout_s, SQLITE_TIMEOUT_S)``: a
      local file fails at once when it is unusable, and only a busy machine makes it slow
      (creating a fresh store took over 10 s while other jobs shared 2 cores).
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
            call_with_timeout(
                lambda: mlflow_client(uri).search_experiments(max_results=1),
                max(timeout_s, SQLITE_TIMEOUT_S),
            )
            artifact_location = artifact_location or default_artifact_location(uri)
        elif scheme in ("http", "https"):
            call_with_timeout(lambda: _check_http(uri, timeout_s), timeout_s + 1.0)
        elif scheme == "file" or scheme == "":
            raise OSError(
                "the file store is refused by mlflow 3.17.2 (maintenance mode); use "
                "sqlite:///<dir>/mlflow.db or an http:// server"
            )
        else:
            call_with_timeout(
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
