"""Image grids: plain sample grids and captioned evaluation grids, as uint8 arrays and PNGs.

Written here because torchvision (``make_grid``/``save_image``) is not available on
CPU machines; images are float tensors in [-1, 1], shaped [N, 3, H, W].
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from stackgan.data.imagesets import to_uint8_images
from stackgan.fileio import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [N, 3, H, W] -> uint8 [N, H, W, 3] (rounded, clipped)."""
    x = to_uint8_images(images)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, ncol: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile ``images`` row-major into a uint8 HWC grid with ``ncol`` columns."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    n, _, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    tiles = to_uint8(images)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = tiles[i]
    return grid


def save_png(grid: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 HWC array as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow without sized default font
        return ImageFont.load_default()


def captioned_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    captions: Sequence[str],
    *,
    tile: int = 128,
    pad: int = 4,
    caption_width: int = 90,
    font_size: int = 12,
) -> np.ndarray:
    """One row per caption: the row's image groups side by side, the caption text underneath.

    Args:
        rows: per caption, a list of image batches ``[k, 3, H, W]`` shown left to right
            (e.g. Stage-I samples upsampled, then Stage-II samples); every image is
            resized to ``tile`` x ``tile`` (bilinear) so 64 px and 256 px sit side by side.
        captions: the text rendered under each row (wrapped).
    """
    if len(rows) != len(captions):
        raise ValueError(f"{len(rows)} rows but {len(captions)} captions")
    font = _font(font_size)
    row_arrays = []
    for groups in rows:
        imgs = [
            F.interpolate(g.float(), size=(tile, tile), mode="bilinear", align_corners=False)
            for g in groups
        ]
        row = torch.cat(imgs, dim=0)
        row_arrays.append(make_grid(row, ncol=row.shape[0], pad=pad))
    width = max(a.shape[1] for a in row_arrays)
    line_h = font_size + 4
    blocks = []
    for arr, caption in zip(row_arrays, captions, strict=True):
        lines = textwrap.wrap(caption, width=caption_width) or [""]
        text = Image.new("RGB", (width, len(lines) * line_h + pad), (255, 255, 255))
        draw = ImageDraw.Draw(text)
        for i, line in enumerate(lines):
            draw.text((pad, i * line_h), line, fill=(0, 0, 0), font=font)
        padded = np.full((arr.shape[0], width, 3), 255, dtype=np.uint8)
        padded[:, : arr.shape[1]] = arr
        blocks += [padded, np.asarray(text)]
    return np.concatenate(blocks, axis=0)
