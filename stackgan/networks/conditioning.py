"""Conditioning Augmentation (CA) and what the discriminator is conditioned on."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from stackgan.config import CaNonlinearity, ModelConfig
from stackgan.networks.blocks import make_act

CaNoise = Literal["normal", "truncated"]


class CondAugment(nn.Module):
    """FC(text_dim -> 2*cond_dim, bias) -> nonlinearity -> (mu, logvar) -> sampled c.

    ``c = mu + exp(0.5*logvar) * eps`` is always sampled, in ``eval()`` too (like both
    references). StackGAN-Pytorch reads the second half of the FC output as logvar
    (with its ReLU: mu >= 0, logvar >= 0). The TF code reads it as log sigma
    (``log_sigma=True``); logvar = 2*log sigma is returned so one KL formula serves both.
    The TF code draws eps from a normal truncated at +-2 (``noise="truncated"``); the
    default is a plain normal, as in StackGAN-Pytorch.

    Args:
        text_dim: text embedding size.
        cond_dim: size of c (Ng).
        nonlinearity: ``"relu"`` (PT) or ``"leaky_relu"`` (TF, slope 0.2).
        log_sigma: read the second half as log sigma (TF) instead of logvar (PT).
        noise: ``"normal"`` or ``"truncated"`` (standard normal truncated to [-2, 2]).
    """

    def __init__(
        self,
        text_dim: int,
        cond_dim: int,
        nonlinearity: CaNonlinearity,
        *,
        log_sigma: bool = False,
        noise: CaNoise = "normal",
    ) -> None:
        super().__init__()
        if noise not in ("normal", "truncated"):
            raise ValueError(f"unknown CA noise {noise!r}; expected 'normal' or 'truncated'")
        self.cond_dim = cond_dim
        self.log_sigma = log_sigma
        self.noise = noise
        self.fc = nn.Linear(text_dim, 2 * cond_dim)
        self.act = make_act(nonlinearity)

    def sample_noise(self, like: torch.Tensor) -> torch.Tensor:
        """eps with the shape, dtype and device of ``like``."""
        if self.noise == "normal":
            return torch.randn_like(like)
        eps = torch.empty(like.shape, device=like.device, dtype=torch.float32)
        return nn.init.trunc_normal_(eps, 0.0, 1.0, -2.0, 2.0).to(like.dtype)

    def forward(self, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, text_dim] -> (c, mu, logvar), each [B, cond_dim]."""
        h = self.act(self.fc(text_emb))  # [B, 2*cond_dim]
        mu, second = h[:, : self.cond_dim], h[:, self.cond_dim :]
        logvar = 2.0 * second if self.log_sigma else second
        std = torch.exp(0.5 * logvar)
        c = mu + std * self.sample_noise(std)
        return c, mu, logvar


def d_condition(model_cfg: ModelConfig, text_emb: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """What D is conditioned on: the raw embedding (paper: D has its own text FC) or G's
    detached mu (pytorch)."""
    if model_cfg.arch == "paper":
        return text_emb
    return mu.detach()
