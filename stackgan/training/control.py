"""How a training run ends: signals, preemption, non-finite losses, and what it reports."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: state saved after SIGTERM/SIGUSR1; run again to resume


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite (the message names the step)."""


class Preempted(SystemExit):
    """Raised after a signal-triggered checkpoint; exits with :data:`PREEMPTED_EXIT_CODE`."""

    def __init__(self, step: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Loader-worker init: leave SIGTERM/SIGUSR1 to the training process.

    SLURM (preemption, time limit, ``scancel --signal=TERM --full``) signals every process
    of a job. PyTorch's loader-worker handler dies on SIGTERM, and the training process
    would then fail on the lost worker instead of saving its state at the signal step.
    Ignoring them, the workers keep serving batches until the training process, which
    got the same signal, checkpoints and shuts them down (they also exit if it dies).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    """Sets a flag on SIGTERM/SIGUSR1 (as forwarded by torchrun or sent by SLURM)."""

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopFlag:
        """Install the handlers (the previous ones are kept for :meth:`restore`)."""
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def raised(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None


@dataclass
class LoopResult:
    """What a finished (or stopped) run reports."""

    step: int
    epoch: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    seconds: float = 0.0
