"""What differs between Stage-I and Stage-II, as data: networks and how fakes are made.

The training loop is written once; it receives a :class:`Stage` and calls
``stage.generate(G, emb, z)``. Stage-II owns a *frozen* Stage-I generator that is never
wrapped in DDP, never optimised and runs under ``no_grad``; its output is detached
before it reaches the Stage-II generator. :class:`StackedGenerator` is that composition,
the one place it is written (training, sampling and the FLOP count use it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stackgan.checkpoint import CheckpointError
from stackgan.config import ConfigError, ModelConfig, RunConfig, to_dict
from stackgan.fileio import sha256_file
from stackgan.networkfile import cpu_state, read_network
from stackgan.networks import build_networks

log = logging.getLogger(__name__)

GenOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (fake, mu, logvar)


class StackedGenerator(nn.Module):
    """Stage-II generation: the frozen Stage-I ``g1`` under ``no_grad``, then ``g2``.

    ``forward(emb, z)`` returns what ``g2`` returns, ``(fake, mu, logvar)``;
    :meth:`forward_with_input` also returns the detached Stage-I image [B, 3, 64, 64].
    """

    def __init__(self, g1: nn.Module, g2: nn.Module) -> None:
        super().__init__()
        self.g1, self.g2 = g1, g2

    def stage1(self, emb: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The Stage-I image, without gradient."""
        with torch.no_grad():
            low, _, _ = self.g1(emb, z)  # [B, 3, 64, 64]
        return low.detach()

    def forward_with_input(self, emb: torch.Tensor, z: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """(what ``g2`` returns, the Stage-I image it was made from)."""
        low = self.stage1(emb, z)
        return self.g2(low, emb), low

    def forward(self, emb: torch.Tensor, z: torch.Tensor) -> Any:
        """What ``g2`` returns for the Stage-I image of ``(emb, z)``."""
        return self.forward_with_input(emb, z)[0]


@dataclass
class Stage:
    """One training stage: trainable G and D plus (for Stage-II) the frozen Stage-I generator."""

    number: int
    G: nn.Module
    D: nn.Module
    frozen_g1: nn.Module | None = None
    frozen_bn_train: bool = False  # reproduce the reference's train-mode BN drift of Stage-I
    critic: nn.Module | None = None  # Stage-II: the frozen Stage-I D (loss.stage1_critic)
    extra_payload: dict[str, Any] = field(default_factory=dict)  # saved into the network file

    def generate(self, G: nn.Module, emb: torch.Tensor, z: torch.Tensor) -> GenOut:
        """Fakes at this stage's resolution from text embeddings and noise."""
        fake, mu, logvar, _ = self.generate_with_input(G, emb, z)
        return fake, mu, logvar

    def generate_with_input(
        self, G: nn.Module, emb: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(fake, mu, logvar, Stage-I image the fake was made from; None for Stage-I)."""
        if self.frozen_g1 is None:
            return (*G(emb, z), None)
        out, low = StackedGenerator(self.frozen_g1, G).forward_with_input(emb, z)
        return (*out, low)

    def to(
        self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
    ) -> Stage:
        """Move every network to ``device`` (in ``memory_format``); returns the stage."""
        self.G.to(device=device, memory_format=memory_format)
        self.D.to(device=device, memory_format=memory_format)
        for frozen in (self.frozen_g1, self.critic):
            if frozen is not None:
                frozen.to(device=device, memory_format=memory_format)
        return self

    def network_payload(self) -> dict[str, Any]:
        """Extra entries for the network file: Stage-I stores its D (a later Stage-II's
        ``loss.stage1_critic``), Stage-II its (possibly drifted) Stage-I G."""
        payload = dict(self.extra_payload)
        if self.number == 1:
            payload["D"] = cpu_state(self.D)
        if self.frozen_g1 is not None:
            payload["G1"] = cpu_state(self.frozen_g1)
        return payload

    def set_frozen_mode(self) -> None:
        """Frozen Stage-I G in eval mode (default) or train mode (reference BN drift)."""
        if self.frozen_g1 is not None:
            self.frozen_g1.train(self.frozen_bn_train)


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` on every parameter; returns the module."""
    module.requires_grad_(False)
    return module


def load_stage1_generator(
    path: str | Path, model: ModelConfig, use_ema: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Load Stage-I G from its network file and check it fits ``model``.

    ``use_ema``: take the file's EMA weights (``G_ema``) when it has them, else ``G``.

    Raises:
        ConfigError: the file is missing, is not a Stage-I network, or its sizes disagree.
    """
    path = Path(path)
    try:
        net = read_network(path)
    except CheckpointError as err:
        raise ConfigError(f"stage1_generator: {err}") from err
    if net.stage != 1:
        raise ConfigError(
            f"stage1_generator: {path} is a Stage-{net.stage} network, expected Stage-I"
        )
    g1_cfg = net.model_config(prefix="stage1 network model")
    for key in ("text_dim", "z_dim"):
        if getattr(g1_cfg, key) != getattr(model, key):
            raise ConfigError(
                f"stage1_generator: {path} has model.{key}={getattr(g1_cfg, key)}, "
                f"run config has {getattr(model, key)}"
            )
    g1, _ = build_networks(g1_cfg, 1)
    weights, which = net.generator_weights(use_ema)
    g1.load_state_dict(weights)
    info = {
        "path": str(path),
        "sha256": sha256_file(path),
        "step": net.step,
        "weights": which,
        "model": to_dict(g1_cfg),
    }
    return freeze(g1), info


def load_stage1_critic(path: str | Path) -> nn.Module:
    """The trained Stage-I D of a Stage-I network file, frozen and in eval mode (its BatchNorm
    uses the running statistics of its training): ``loss.stage1_critic``.

    Raises:
        ConfigError: the file has no D (written before Stage-I files kept it), or its D
            is conditioned on G's mu rather than on the text embedding.
    """
    path = Path(path)
    try:
        net = read_network(path)
        weights = net.discriminator_weights()
    except CheckpointError as err:
        raise ConfigError(f"stage1_generator: {err}") from err
    except KeyError:
        raise ConfigError(
            f"loss.stage1_critic: {path} has no Stage-I discriminator (a file written before "
            "Stage-I network files kept their D): retrain Stage-I, or set loss.stage1_critic: 0"
        ) from None
    model = net.model_config(prefix="stage1 network model")
    if model.arch != "paper":
        raise ConfigError(
            f"loss.stage1_critic: {path} is a '{model.arch}' Stage-I whose D is conditioned on "
            "its generator's mu; the critic needs a 'paper' Stage-I (D conditioned on the text "
            "embedding), or loss.stage1_critic: 0"
        )
    _, d1 = build_networks(model, 1)
    d1.load_state_dict(weights)
    return freeze(d1).eval()


def build_stage(cfg: RunConfig, stage1_generator: str | Path | None = None) -> Stage:
    """Build the networks of ``cfg.stage``; Stage-II requires the Stage-I network file."""
    G, D = build_networks(cfg.model, cfg.stage)
    if cfg.stage == 1:
        if stage1_generator is not None:
            raise ConfigError("stage1_generator: only Stage-II takes a Stage-I generator")
        return Stage(1, G, D)
    if stage1_generator is None:
        raise ConfigError(
            "stage1_generator: Stage-II needs the Stage-I generator file (train Stage-I first)"
        )
    g1, info = load_stage1_generator(stage1_generator, cfg.model, cfg.train.stage1_ema)
    return Stage(
        2,
        G,
        D,
        frozen_g1=g1,
        frozen_bn_train=cfg.train.frozen_stage1_bn == "train",
        critic=load_stage1_critic(stage1_generator) if cfg.loss.stage1_critic > 0 else None,
        extra_payload={
            "stage1": {k: v for k, v in info.items() if k != "model"},
            "stage1_model": info["model"],
        },
    )
