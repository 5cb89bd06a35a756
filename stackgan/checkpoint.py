"""Safe ``torch`` file I/O shared by every file the project writes with ``torch.save``.

:func:`save` writes atomically (a temporary file, then a rename); :func:`load` loads with
``weights_only=True`` and checks the file's ``format`` tag, raising :class:`CheckpointError`
for a missing, truncated, unsafe or wrong-kind file. The two kinds of files built on them
live elsewhere: training states (:mod:`stackgan.training.state`) and network files
(:mod:`stackgan.networkfile`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from stackgan.errors import StackGANError
from stackgan.fileio import atomic_path


class CheckpointError(StackGANError, RuntimeError):
    """A checkpoint or network file is missing, corrupt or of the wrong kind."""


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
