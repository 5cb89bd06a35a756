"""The MLflow tracker's background machinery: the bounded work queue and the retry policy.

Every logging call of :class:`~stackgan.tracking.mlflow_tracker.MLflowTracker` becomes a
:class:`WorkItem` on a :class:`WorkQueue`, drained by ONE background thread; a failed item is
retried per :class:`RetryPolicy` unless :func:`is_permanent` says retrying cannot help.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from stackgan.tracking.values import MAX_METRICS_PER_BATCH

# Error codes that retrying cannot fix.
PERMANENT_ERROR_CODES = frozenset(
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


@dataclass
class WorkItem:
    """One queued logging call."""

    kind: str  # metrics | params | tags | image | artifact | dict | end
    payload: Any
    droppable: bool = False


class WorkQueue:
    """Bounded FIFO: when full, the oldest metrics batch (else image) makes room."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.dropped: dict[str, int] = {"metrics": 0, "image": 0}
        self._items: deque[WorkItem] = deque()
        self._cond = threading.Condition()
        self._woken = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: WorkItem) -> None:
        """Append ``item``; a full queue drops the oldest metrics batch (else image) first."""
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

    def _oldest(self, kind: str) -> WorkItem | None:
        return next((i for i in self._items if i.kind == kind), None)

    def get(self, linger_until: float = 0.0) -> WorkItem:
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
            return WorkItem("metrics", rows, droppable=True)

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


def is_permanent(err: BaseException) -> bool:
    """Whether retrying ``err`` cannot help (a refused request, a bad value)."""
    return getattr(err, "error_code", None) in PERMANENT_ERROR_CODES or isinstance(
        err, TypeError | ValueError
    )
