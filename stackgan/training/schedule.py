"""The run's arithmetic and its preconditions: steps, learning rates, Adam, EMA, device checks."""

from __future__ import annotations

import torch
from torch import nn

from stackgan.config import ConfigError, RunConfig


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """Steps of the whole run: epochs x steps per epoch, capped by ``max_steps``."""
    steps = cfg.train.epochs * steps_per_epoch
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def learning_rates(cfg: RunConfig, epoch: int) -> tuple[float, float]:
    """Step decay at epoch starts: ``lr x factor^(epoch // lr_decay_epochs)``
    (the references' rule).
    """
    t = cfg.train
    k = epoch // t.lr_decay_epochs if t.lr_decay_epochs > 0 else 0
    return t.lr_g * t.lr_decay_factor**k, t.lr_d * t.lr_decay_factor**k


def make_adam(
    params: list[nn.Parameter], lr: float, betas: tuple[float, float]
) -> torch.optim.Adam:
    """Adam with the fused kernel (CPU and CUDA; ~3x faster steps on CPU), same update rule."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def check_runtime_config(cfg: RunConfig, device: torch.device) -> None:
    """Fail before any compute on combinations the hardware cannot run."""
    if cfg.train.bn == "sync" and device.type != "cuda":
        raise ConfigError(
            "train.bn: 'sync' (SyncBatchNorm) needs CUDA devices; use 'per_rank' on CPU"
        )


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema = beta * ema + (1 - beta) * model`` for parameters; buffers copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
