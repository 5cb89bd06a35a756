"""Training-state checkpoints (for resume) and network files (for sampling, evaluation, Stage-II).

Two kinds of files, both plain dicts of tensors and primitives so they load with
``torch.load(..., weights_only=True)``:

* ``training-state-<step>.pt`` in the stage's work directory: G, D, EMA, both optimizers,
  grad scalers, step, epoch, learning rates, the RNG states of every rank (torch,
  CUDA, numpy, python, the noise generator) and the data-stream position. Written by
  rank 0 to a temporary file and renamed; only the newest ``keep`` are kept. On start,
  :func:`find_latest` returns the newest file that loads; a truncated or corrupt newest
  file is skipped with a warning and the previous one is used.
* the network file (the stage's declared output, e.g. ``network-final.pt``): the
  generator weights (and the frozen Stage-I generator for Stage-II), the EMA weights
  if any, the model config and provenance.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stackgan.errors import StackGANError
from stackgan.fileio import atomic_path

log = logging.getLogger(__name__)

STATE_FORMAT = "stackgan-training-state/1"
NETWORK_FORMAT = "stackgan-network/1"
_STATE_RE = re.compile(r"^training-state-(\d{8})\.pt$")


class CheckpointError(StackGANError, RuntimeError):
    """A checkpoint or network file is missing, corrupt or of the wrong kind."""


def state_path(workdir: Path, step: int) -> Path:
    """Path of the training state at ``step``."""
    return Path(workdir) / f"training-state-{step:08d}.pt"


def save(obj: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename (never a half-written file)."""
    with atomic_path(path) as tmp:
        torch.save(dict(obj), tmp)


def load(path: str | Path, *, expected_format: str) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its format tag."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, unsafe globals, ...
        raise CheckpointError(f"{path}: cannot be loaded ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a {expected_format!r} file, got {got!r}")
    return obj


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


# --------------------------------------------------------------------------- network files


def save_network(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write a network file (adds the format tag)."""
    save({"format": NETWORK_FORMAT, **payload}, path)


def load_network(path: str | Path) -> dict[str, Any]:
    """Load a network file written by :func:`save_network`."""
    return load(path, expected_format=NETWORK_FORMAT)
