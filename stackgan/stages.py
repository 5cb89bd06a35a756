"""What differs between Stage-I and Stage-II, as data: networks and how fakes are made.

The training loop is written once; it receives a :class:`Stage` and calls
``stage.generate(G, emb, z)``. Stage-II owns a *frozen* Stage-I generator that is never
wrapped in DDP, never optimised and runs under ``no_grad``; its output is detached
before it reaches the Stage-II generator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stackgan.checkpoint import CheckpointError, load_network
from stackgan.config import ConfigError, ModelConfig, RunConfig, from_dict, to_dict
from stackgan.fileio import sha256_file
from stackgan.networks import build_networks

log = logging.getLogger(__name__)

GenOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (fake, mu, logvar)


@dataclass
class Stage:
    """One training stage: trainable G and D plus (for Stage-II) the frozen Stage-I generator."""

    number: int
    G: nn.Module
    D: nn.Module
    frozen_g1: nn.Module | None = None
    frozen_bn_train: bool = False  # reproduce the reference's train-mode BN drift of Stage-I
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
        with torch.no_grad():
            low, _, _ = self.frozen_g1(emb, z)  # [B, 3, 64, 64]
        low = low.detach()
        return (*G(low, emb), low)

    def to(
        self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
    ) -> Stage:
        self.G.to(device=device, memory_format=memory_format)
        self.D.to(device=device, memory_format=memory_format)
        if self.frozen_g1 is not None:
            self.frozen_g1.to(device=device, memory_format=memory_format)
        return self

    def network_payload(self) -> dict[str, Any]:
        """Extra entries for the network file: Stage-II stores its (possibly drifted) Stage-I G."""
        payload = dict(self.extra_payload)
        if self.frozen_g1 is not None:
            payload["G1"] = {k: v.detach().cpu() for k, v in self.frozen_g1.state_dict().items()}
        return payload

    def set_frozen_mode(self) -> None:
        """Frozen Stage-I G in eval mode (default) or train mode (reference BN drift)."""
        if self.frozen_g1 is not None:
            self.frozen_g1.train(self.frozen_bn_train)


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` on every parameter; returns the module."""
    module.requires_grad_(False)
    return module


def load_stage1_generator(path: str | Path, model: ModelConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Load Stage-I G from its network file and check it fits ``model``.

    Raises:
        ConfigError: the file is missing, is not a Stage-I network, or its sizes disagree.
    """
    path = Path(path)
    try:
        payload = load_network(path)
    except CheckpointError as err:
        raise ConfigError(f"stage1_generator: {err}") from err
    if payload.get("stage") != 1:
        raise ConfigError(
            f"stage1_generator: {path} is a Stage-{payload.get('stage')} network, expected Stage-I"
        )
    g1_cfg = from_dict(ModelConfig, payload["model"], prefix="stage1 network model")
    for key in ("text_dim", "z_dim"):
        if getattr(g1_cfg, key) != getattr(model, key):
            raise ConfigError(
                f"stage1_generator: {path} has model.{key}={getattr(g1_cfg, key)}, "
                f"run config has {getattr(model, key)}"
            )
    g1, _ = build_networks(g1_cfg, 1)
    g1.load_state_dict(payload["G"])
    info = {
        "path": str(path),
        "sha256": sha256_file(path),
        "step": payload.get("step"),
        "model": to_dict(g1_cfg),
    }
    return freeze(g1), info


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
    g1, info = load_stage1_generator(stage1_generator, cfg.model)
    return Stage(
        2,
        G,
        D,
        frozen_g1=g1,
        frozen_bn_train=cfg.train.frozen_stage1_bn == "train",
        extra_payload={
            "stage1": {k: v for k, v in info.items() if k != "model"},
            "stage1_model": info["model"],
        },
    )
