"""The one reader of a split's HDF5 index (written by :func:`stackgan.data.shards.write_index`).

The index holds, per image in shard order: ``keys``, ``indices``, ``image_ids``,
``class_ids``, ``embeddings`` [N, captions, D] float32 and ``captions`` [N, captions] text.
Every consumer (evaluation, the in-training monitor, the attribute classifier, training
grids, ``stackgan generate``) reads it through :class:`SplitIndex`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SplitIndex:
    """An open HDF5 index; use as a context manager (``with SplitIndex(path) as idx``)."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise OSError(f"{self.path}: cannot read the HDF5 index ({err})") from err
        for name in ("keys", "class_ids", "embeddings", "captions"):
            if name not in self._h5:
                self._h5.close()
                raise ValueError(f"{self.path}: not a split index (no dataset {name!r})")

    def __enter__(self) -> SplitIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._h5.close()

    @property
    def num_images(self) -> int:
        """Rows (images) in the index."""
        return int(self._h5["embeddings"].shape[0])

    @property
    def captions_per_image(self) -> int:
        """Captions (and embeddings) per image."""
        return int(self._h5["embeddings"].shape[1])

    def embeddings(
        self, rows: int | slice | Sequence[int] = slice(None), cols: int | slice = slice(None)
    ) -> np.ndarray:
        """``embeddings[rows, cols]``: [n, captions, D] float32 (int axes are dropped)."""
        return self._h5["embeddings"][_rows(rows), cols]

    def embedding_pairs(self, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
        """One embedding per (row, caption) pair: [len(rows), D]."""
        data = self._h5["embeddings"]
        return np.stack([data[int(r), int(c)] for r, c in zip(rows, cols, strict=True)])

    def captions(
        self, rows: int | slice | Sequence[int] = slice(None), cols: int | slice = slice(None)
    ) -> np.ndarray:
        """``captions[rows, cols]`` decoded to ``str`` (an object array of that shape)."""
        raw = np.asarray(self._h5["captions"][_rows(rows), cols], dtype=object)
        return np.vectorize(_text, otypes=[object])(raw) if raw.size else raw

    def caption_pairs(self, rows: Sequence[int], cols: Sequence[int]) -> list[str]:
        """One caption per (row, caption) pair."""
        data = self._h5["captions"]
        return [_text(data[int(r), int(c)]) for r, c in zip(rows, cols, strict=True)]

    def keys(self, limit: int | None = None) -> list[str]:
        """Image keys in index order (the first ``limit`` when given)."""
        return [_text(k) for k in self._h5["keys"][: self.num_images if limit is None else limit]]

    def class_ids(self) -> np.ndarray:
        """Class id of each row: [N] int64."""
        return self._h5["class_ids"][:]


def _rows(rows: int | slice | Sequence[int]) -> int | slice | list[int]:
    if isinstance(rows, (int, np.integer)):
        return int(rows)
    if isinstance(rows, slice):
        return rows
    return [int(r) for r in rows]


def evenly_spaced_rows(num_images: int, count: int, *, rounded: bool = True) -> np.ndarray:
    """``count`` distinct rows spread evenly over ``num_images`` (the index is in class order,
    so its first rows would be one species). ``rounded=False`` truncates instead of rounding
    (what the standing-statistics captions have always used)."""
    points = np.linspace(0, num_images - 1, min(count, num_images))
    return np.unique((points.round() if rounded else points).astype(int))
