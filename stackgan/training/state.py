"""Training states: everything that determines the rest of a run, captured and restored.

A training state ``training-state-<step>.pt`` in the stage's work directory is a plain dict
(``torch.load(..., weights_only=True)``) with the keys ``format``, ``step``, ``epoch``,
``steps_per_epoch``, ``world_size``, ``config``, ``G``, ``D``, ``G_ema`` (BatchNorm buffers
averaged across ranks), ``opt_g``, ``opt_d``, ``scaler_g``, ``scaler_d``, ``rng`` (per rank:
torch, CUDA, numpy, python and the noise generator, plus the mismatch generator),
``rank_buffers`` (per rank: each network's own BatchNorm buffers, the frozen Stage-I G
included) and ``data`` (the data-stream position).

Rank 0 writes it to a temporary file and renames it; only the newest ``keep`` are kept. On
start, :func:`find_latest` returns the newest file that loads; a truncated or corrupt newest
file is skipped with a warning and the previous one is used. :class:`TrainState` holds the
live objects and does the (collective) save and the restore.
"""

from __future__ import annotations

import logging
import random
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stackgan import distributed as dist_utils
from stackgan.checkpoint import CheckpointError, load, save
from stackgan.config import ConfigError, RunConfig, to_dict
from stackgan.errors import StackGANError

log = logging.getLogger(__name__)

STATE_FORMAT = "stackgan-training-state/1"
_STATE_RE = re.compile(r"^training-state-(\d{8})\.pt$")


# --------------------------------------------------------------------------- state files


def state_path(workdir: Path, step: int) -> Path:
    """Path of the training state at ``step``."""
    return Path(workdir) / f"training-state-{step:08d}.pt"


def list_states(workdir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of training states in ``workdir``, newest first."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in workdir.iterdir() if (m := _STATE_RE.match(p.name))]
    return sorted(found, reverse=True)


def find_latest(workdir: str | Path) -> dict[str, Any] | None:
    """The newest training state that loads, or ``None``; corrupt files are skipped
    with a warning.
    """
    for step, path in list_states(workdir):
        try:
            state = load(path, expected_format=STATE_FORMAT)
        except CheckpointError as err:
            log.warning("skipping unusable checkpoint (step %d): %s", step, err)
            continue
        state["_path"] = str(path)
        return state
    return None


def prune(workdir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` training states."""
    for _, path in list_states(workdir)[keep:]:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- RNG state


def capture_rng(noise: torch.Generator | None = None) -> dict[str, Any]:
    """RNG states of this process as tensors and primitives (weights_only-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "noise": noise.get_state() if noise is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], noise: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if noise is not None and state.get("noise") is not None:
        noise.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- buffers


def averaged_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: CPU state dict whose float buffers are averaged across ranks
    (parameters are equal already)."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for name, _ in module.named_buffers():  # same order on every rank
            t = state[name]
            if t.is_floating_point():
                torch.distributed.all_reduce(t)
                t.div_(world)
    return {k: v.cpu() for k, v in state.items()}


def own_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's own buffers (BatchNorm statistics), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.named_buffers()}


# --------------------------------------------------------------------------- the live state


@dataclass
class TrainState:
    """The live objects of one rank whose state decides the rest of the run.

    ``G1`` is the frozen Stage-I G of Stage-II (its buffers drift in the reference's
    train-mode BN), ``noise`` draws z, ``mismatch`` the mismatched captions, ``augment``
    the augmentation of D's inputs.
    """

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module | None
    G1: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    noise: torch.Generator
    mismatch: torch.Generator
    augment: torch.Generator | None = None

    def nets(self) -> dict[str, nn.Module | None]:
        """ "G", "D", "G_ema", "G1" -> module or None (the state file's order)."""
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema, "G1": self.G1}

    def save(
        self,
        workdir: Path,
        step: int,
        steps_per_epoch: int,
        cfg: RunConfig,
        info: dist_utils.DistInfo,
    ) -> None:
        """Collective: every rank contributes its RNG and BN buffers; rank 0 writes
        atomically and prunes to ``train.keep_checkpoints``."""
        nets = self.nets()
        rng = dist_utils.all_gather_object(
            {
                "rng": capture_rng(self.noise),
                "mismatch": self.mismatch.get_state(),
                "augment": None if self.augment is None else self.augment.get_state(),
            }
        )
        buffers = dist_utils.all_gather_object(
            {k: own_buffers(m) if m is not None else None for k, m in nets.items()}
        )
        averaged = {
            k: averaged_state(m) if m is not None else None for k, m in nets.items() if k != "G1"
        }
        if info.is_main:
            state = {
                "format": STATE_FORMAT,
                "step": step,
                "epoch": step // steps_per_epoch,
                "steps_per_epoch": steps_per_epoch,
                "world_size": info.world_size,
                "config": to_dict(cfg),
                **averaged,
                "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(),
                "scaler_d": self.scaler_d.state_dict(),
                "rng": rng,
                "rank_buffers": buffers,
                "data": {
                    "seed": cfg.train.seed,
                    "next_step": step,
                    "num_workers": cfg.train.num_workers,
                },
            }
            save(state, state_path(workdir, step))
            prune(workdir, cfg.train.keep_checkpoints)
        dist_utils.barrier()

    def restore(self, state: dict[str, Any], info: dist_utils.DistInfo, cfg: RunConfig) -> None:
        """Load a training state into the live objects of this rank."""
        if state.get("config", {}).get("model") != to_dict(cfg.model):
            raise ConfigError(
                f"{state['_path']}: the checkpoint was trained with another model config; "
                "use a fresh work directory or restore the original config"
            )
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            ema = state["G_ema"] if state.get("G_ema") is not None else self.G.state_dict()
            self.G_ema.load_state_dict(ema)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        if int(state.get("world_size", 1)) == info.world_size:
            self._restore_own(state, info.rank)
        else:
            log.warning(
                "checkpoint was written with world size %s, now %d: RNG streams restart from "
                "the seed (training continues, but not bit-identically)",
                state.get("world_size"),
                info.world_size,
            )
        if int(state["data"].get("num_workers", cfg.train.num_workers)) != cfg.train.num_workers:
            log.warning(
                "num_workers changed since the checkpoint: "
                "the data stream differs from an uninterrupted run"
            )

    def _restore_own(self, state: dict[str, Any], rank: int) -> None:
        """This rank's RNG streams and BatchNorm buffers."""
        mine = state["rng"][rank]
        restore_rng(mine["rng"], self.noise)
        self.mismatch.set_state(mine["mismatch"])
        if self.augment is not None and mine.get("augment") is not None:
            self.augment.set_state(mine["augment"])
        own = state["rank_buffers"][rank]
        for key, module in self.nets().items():
            if module is not None and own.get(key) is not None:
                for name, buf in module.named_buffers():
                    buf.copy_(own[key][name])

    def resume(self, workdir: Path, info: dist_utils.DistInfo, cfg: RunConfig) -> int | None:
        """Restore the newest usable state in ``workdir``; its step, or None if there is none."""
        state = find_latest(workdir)
        if state is None:
            if info.is_main:
                log.info("no checkpoint in %s: starting at step 0", workdir)
            return None
        self.restore(state, info, cfg)
        step = int(state["step"])
        log.info("resumed from %s at step %d", state["_path"], step)
        return step


class ResumeMismatchError(StackGANError):
    """The ranks of one job found different newest states (e.g. shared-filesystem lag)."""


def agree_on_resume(step: int | None, info: dist_utils.DistInfo) -> int | None:
    """Check that every rank resumed from the same step (or all start afresh); log where.

    Ranks that restored different states would train different models from then on, so
    this fails at once (every rank raises) instead."""
    steps = dist_utils.all_gather_object((socket.gethostname(), step))
    if len({s for _, s in steps}) > 1:
        where = ", ".join(f"rank {r} on {h}: {s}" for r, (h, s) in enumerate(steps))
        raise ResumeMismatchError(
            "ranks resumed from different training states (" + where + "); "
            "is the working directory on a filesystem all nodes see the same way?"
        )
    if step is not None and info.enabled and info.is_main:
        hosts = ", ".join(sorted({h for h, _ in steps}))
        log.info("all %d ranks resumed at step %d (hosts %s)", info.world_size, step, hosts)
    return step
