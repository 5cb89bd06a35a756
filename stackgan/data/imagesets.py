"""A shard set's images in index order, and the one uint8 <-> [-1, 1] image conversion.

Used by evaluation (real-image statistics), the twin attribute classifier and the
in-training monitor; the training stream itself is :mod:`stackgan.data.loader`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stackgan.data import format as fmt


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> float in [-1, 1] (on the tensor's device)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Float ``[B, 3, S, S]`` in [-1, 1] (clamped) -> uint8 on the CPU."""
    return images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def iter_set_uint8(
    set_dir: str | Path, size: int = 256, batch_size: int = 64
) -> Iterator[torch.Tensor]:
    """The set's images in index order, centre-cropped to ``size``, as uint8 [B, 3, S, S]."""
    import webdataset as wds

    member = fmt.read_manifest(set_dir)["image_member"]
    samples = sorted(
        wds.WebDataset(
            fmt.shard_urls(set_dir),
            shardshuffle=False,
            empty_check=False,
            nodesplitter=_every_shard,  # every rank reads the whole set (also under DDP)
        ),
        key=lambda s: s["__key__"],
    )
    batch: list[np.ndarray] = []
    for sample in samples:
        with Image.open(io.BytesIO(sample[member])) as img:
            arr = np.asarray(img.convert("RGB"))
        off_y, off_x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
        batch.append(arr[off_y : off_y + size, off_x : off_x + size])
        if len(batch) == batch_size:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def iter_real_images(
    set_dir: str | Path, size: int = 256, batch_size: int = 64
) -> Iterator[torch.Tensor]:
    """:func:`iter_set_uint8` as [-1, 1] float batches."""
    for batch in iter_set_uint8(set_dir, size, batch_size):
        yield to_float_images(batch)


def _every_shard(urls: Iterator[str]) -> Iterator[str]:
    return urls


def _stack(batch: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
