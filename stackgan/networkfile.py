"""The network file: what ``stackgan train --out`` writes, and the one reader and writer of it.

A network file (e.g. ``network-final.pt``) is a plain dict of tensors and primitives, so it
loads with ``torch.load(..., weights_only=True)``. Its keys, in this order:

* ``format``: ``"stackgan-network/1"``;
* ``stage`` (1 or 2), ``step`` (training steps behind it), ``model`` (the model config as a
  dict), ``config`` (the whole run config);
* ``G``: the trained generator's state dict; ``G_ema``: its EMA (``None`` without EMA; with
  ``ema_bn=standing`` it holds the recomputed BatchNorm statistics);
* ``provenance``: data-manifest hash, world size, ...;
* Stage-I only: ``D`` (the trained discriminator's state dict, which a Stage-II run can use
  as a frozen 64 px critic: ``loss.stage1_critic``; files written before it lack the key);
* Stage-II only: ``stage1`` (path, sha256, step of the Stage-I file it was trained from),
  ``stage1_model`` (that file's model config) and ``G1`` (the frozen Stage-I generator,
  including the reference's drifted BatchNorm statistics when that option was on).

:class:`NetworkFile` is that record, typed; :func:`write_network` and :func:`read_network`
are the only places that turn it into bytes and back (sampling, ``stackgan evaluate`` and
``generate`` and the Stage-II set-up all read through :func:`read_network`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackgan.checkpoint import load, save
from stackgan.config import ModelConfig, from_dict

NETWORK_FORMAT = "stackgan-network/1"

StateDict = dict[str, torch.Tensor]

#: the optional keys written after ``provenance``, in file order (``D``: Stage-I only; the
#: others: Stage-II only)
_OPTIONAL_KEYS = ("D", "stage1", "stage1_model", "G1")


@dataclass
class NetworkFile:
    """One network file's content (see the module docstring for each field)."""

    stage: int
    model: dict[str, Any]
    G: StateDict
    step: int | None = None
    config: dict[str, Any] | None = None
    G_ema: StateDict | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    D: StateDict | None = None
    stage1: dict[str, Any] | None = None
    stage1_model: dict[str, Any] | None = None
    G1: StateDict | None = None
    path: Path | None = None  # where it was read from (not written)

    def to_payload(self) -> dict[str, Any]:
        """The dict written to disk (key order as it has always been)."""
        payload: dict[str, Any] = {
            "format": NETWORK_FORMAT,
            "stage": self.stage,
            "step": self.step,
            "model": self.model,
            "config": self.config,
            "G": self.G,
            "G_ema": self.G_ema,
            "provenance": self.provenance,
        }
        for key in _OPTIONAL_KEYS:
            if getattr(self, key) is not None:
                payload[key] = getattr(self, key)
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path | None = None) -> NetworkFile:
        """The record of a loaded dict (older files may lack the optional keys)."""
        return cls(
            stage=payload["stage"],
            model=payload["model"],
            G=payload["G"],
            step=payload.get("step"),
            config=payload.get("config"),
            G_ema=payload.get("G_ema"),
            provenance=payload.get("provenance") or {},
            D=payload.get("D"),
            stage1=payload.get("stage1"),
            stage1_model=payload.get("stage1_model"),
            G1=payload.get("G1"),
            path=path,
        )

    def model_config(self, prefix: str = "network model") -> ModelConfig:
        """The trained generator's model config (``prefix`` names it in errors)."""
        return from_dict(ModelConfig, self.model, prefix=prefix)

    def stage1_model_config(self, prefix: str = "stage1 model") -> ModelConfig:
        """Stage-II: the frozen Stage-I generator's model config."""
        if self.stage1_model is None:
            raise KeyError("stage1_model")
        return from_dict(ModelConfig, self.stage1_model, prefix=prefix)

    def stage1_weights(self) -> StateDict:
        """Stage-II: the frozen Stage-I generator's state dict (``KeyError`` if absent)."""
        if self.G1 is None:
            raise KeyError("G1")
        return self.G1

    def discriminator_weights(self) -> StateDict:
        """Stage-I: the trained D's state dict (``KeyError`` if the file has none)."""
        if self.D is None:
            raise KeyError("D")
        return self.D

    def generator_weights(self, use_ema: bool = True) -> tuple[StateDict, str]:
        """(state dict, ``"G_ema"`` or ``"G"``): the EMA weights when asked for and present."""
        if use_ema and self.G_ema is not None:
            return self.G_ema, "G_ema"
        return self.G, "G"


def cpu_state(module: torch.nn.Module) -> StateDict:
    """``module``'s state dict, detached, on the CPU (what a network file stores)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def write_network(path: str | Path, net: NetworkFile) -> None:
    """Write ``net`` atomically (a temporary file, then a rename)."""
    save(net.to_payload(), path)


def read_network(path: str | Path) -> NetworkFile:
    """Load a network file safely (``weights_only``); ``CheckpointError`` if it is not one."""
    return NetworkFile.from_payload(load(path, expected_format=NETWORK_FORMAT), Path(path))
