"""Run-id files: how a job finds the run it continues, and a child finds its parent."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackgan.fileio import atomic_open

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


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
