"""The shard and index format shared by the writer (:mod:`stackgan.data.shards`) and readers.

A shard set is a directory ``<split>-<res>/`` of tar files ``<split>-<res>-NNNNNN.tar``
plus ``manifest.json`` (written last: a set without it is incomplete). Each sample has:

=============  ==========================================================================
member         content
=============  ==========================================================================
``png``        64 set: the 76x76 RGB crop, PNG. 256 set with ``hr_format: png``: 304x304 PNG
``jpg``        256 set (default): the 304x304 RGB crop, JPEG (quality in the manifest)
``emb.npy``    all 10 caption embeddings, float32 (10, 1024), ``numpy.save`` format
``cls``        class id as decimal text
``json``       key, index, image_id, class_id, split, captions, bbox, crop box, sizes
=============  ==========================================================================

``__key__`` is ``s<index>`` with the zero-padded position in ``filenames.pickle`` (no
dots or slashes, which WebDataset would split on).

The HDF5 index ``<split>-index.h5`` holds, in ``filenames.pickle`` order (skipped
images excluded): ``keys``, ``indices``, ``image_ids``, ``class_ids``, ``embeddings``
(N, 10, 1024) float32 and ``captions`` (N, 10) UTF-8 strings (empty when absent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
RESOLUTIONS = (64, 256)
LOAD_SIZES = {64: 76, 256: 304}
MANIFEST = "manifest.json"

KEY_PNG = "png"
KEY_JPG = "jpg"
KEY_EMB = "emb.npy"
KEY_CLS = "cls"
KEY_JSON = "json"


def set_name(split: str, resolution: int) -> str:
    """Directory name of a shard set, e.g. ``train-64``."""
    return f"{split}-{resolution}"


def shard_name(split: str, resolution: int, number: int) -> str:
    """File name of one shard."""
    return f"{set_name(split, resolution)}-{number:06d}.tar"


def sample_key(index: int) -> str:
    """WebDataset ``__key__`` of the sample at ``index`` in filenames.pickle order."""
    return f"s{index:06d}"


def index_name(split: str) -> str:
    """File name of a split's HDF5 index."""
    return f"{split}-index.h5"


def read_manifest(set_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete shard set.

    Raises:
        FileNotFoundError: no manifest (the set is missing or incomplete).
        ValueError: the manifest is not a JSON object.
    """
    path = Path(set_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest, so the shard set is missing or incomplete")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON manifest ({err})") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def shard_urls(set_dir: str | Path) -> list[str]:
    """Shard paths of a complete set (read from its manifest, in order)."""
    return [str(Path(set_dir) / s["name"]) for s in read_manifest(set_dir)["shards"]]
