"""Differentiable augmentation of D's inputs (DiffAugment; not in StackGAN).

Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training" (NeurIPS 2020):
D sees every image, real or fake, through the same random transformation, and G's
gradient flows through it, so D cannot memorise the few real images of a small training
set. Only geometric policies are offered: a text-to-image D must still read the colours
that the caption states, so DiffAugment's colour policy (brightness, saturation,
contrast) would corrupt the condition it is asked to check.

* ``translation``: shift each image by up to ``1/8`` of its side in x and y (whole
  pixels), filling with zeros (mid-grey in [-1, 1]).
* ``cutout``: zero one square of half the side at a random position in each image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

AugmentPolicy = Literal["translation", "cutout"]
POLICIES: tuple[str, ...] = ("translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _offsets(
    n: int, limit: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``n`` integer offsets uniform in [-limit, limit], shaped [n, 1, 1]."""
    return torch.randint(-limit, limit + 1, (n, 1, 1), generator=generator, device=device)


def translate(
    x: torch.Tensor, ratio: float = TRANSLATION_RATIO, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image of ``x`` [B, C, H, W] by whole pixels, up to ``ratio`` of its side.

    ``out[b, :, i, j] = x[b, :, i + dy_b, j + dx_b]`` where that pixel exists, else 0.
    """
    b, _, h, w = x.shape
    dy = _offsets(b, int(h * ratio + 0.5), generator, x.device)
    dx = _offsets(b, int(w * ratio + 0.5), generator, x.device)
    rows = torch.arange(h, device=x.device)[None, :, None] + dy  # [B, H, 1]
    cols = torch.arange(w, device=x.device)[None, None, :] + dx  # [B, 1, W]
    # A one-pixel zero border; indices outside the image land on it.
    padded = F.pad(x, (1, 1, 1, 1))  # [B, C, H+2, W+2]
    rows = (rows + 1).clamp(0, h + 1).expand(b, h, w)
    cols = (cols + 1).clamp(0, w + 1).expand(b, h, w)
    flat = (rows * (w + 2) + cols).reshape(b, 1, h * w)  # [B, 1, H*W]
    picked = padded.reshape(b, x.shape[1], -1).gather(2, flat.expand(-1, x.shape[1], -1))
    return picked.reshape(x.shape).contiguous(memory_format=_format_of(x))


def cutout(
    x: torch.Tensor, ratio: float = CUTOUT_RATIO, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero a ``ratio``-sided square (clipped at the border) at a random centre in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (
        (rows >= cy - ch // 2)
        & (rows < cy - ch // 2 + ch)
        & (cols >= cx - cw // 2)
        & (cols < cx - cw // 2 + cw)
    )  # [B, H, W]
    return x * (~inside).to(x.dtype)[:, None]


def diff_augment(
    x: torch.Tensor, policy: Sequence[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply the policies in order (an empty policy returns ``x`` itself)."""
    for name in policy:
        if name == "translation":
            x = translate(x, generator=generator)
        elif name == "cutout":
            x = cutout(x, generator=generator)
        else:
            raise ValueError(f"unknown augmentation {name!r}; expected one of {POLICIES}")
    return x


def _format_of(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 4 and channels_last and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
