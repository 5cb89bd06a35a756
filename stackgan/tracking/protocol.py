"""What training and evaluation log through: the :class:`Tracker` protocol and a null tracker.

The training loop and evaluation only see :class:`Tracker`; nothing below them imports
``mlflow``. Implementations: :class:`NullTracker` (does nothing: non-zero ranks, tests,
tracking switched off) and :class:`stackgan.tracking.mlflow_tracker.MLflowTracker`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

DIGEST_LEN = 36  # MLflow's dataset digest column


@dataclass(frozen=True)
class InputRecord:
    """A run input as MLflow's Dataset column shows it.

    ``name`` (e.g. the shard set ``train-64``), ``sha256`` of what identifies its bytes (the
    manifest; MLflow shows its first 36 hex digits as the digest, the full value is input
    tag ``sha256``), ``source`` (a path), ``context`` (``training``, ``evaluation``,
    ``conditioning``) and further input ``tags`` (split, resolution, run ids).
    """

    name: str
    sha256: str
    source: str
    context: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self.sha256[:DIGEST_LEN]


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

    def log_input(self, data: InputRecord) -> None:
        """Record a dataset input of the run (shards it read, a network it built on)."""

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

    def log_input(self, data: InputRecord) -> None:
        """Do nothing."""

    def log_checkpoint_path(self, path: str | Path, name: str = "checkpoint") -> None:
        """Do nothing."""

    def close(self, status: str = "FINISHED") -> None:
        """Do nothing."""


def tracker_for_rank(rank: int, factory: Callable[[], Tracker]) -> Tracker:
    """``factory()`` on global rank 0, a :class:`NullTracker` elsewhere (factory not called)."""
    return factory() if rank == 0 else NullTracker()
