"""The twin attribute classifier: a small CNN for body and wing colour, its file, predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stackgan.data.imagesets import to_float_images
from stackgan.networks.stage2 import downsample
from stackgan.text.twin import COLOUR_NAMES

ATTRIBUTES = ("body", "wing")
CLASSIFIER_FORMAT = "stackgan-attribute-classifier/2"  # /2: reads at 32 px


#: how a 256 px image is reduced to the classifier's 64 px (``read_back``): the protocol's
#: ``bilinear_aa``, and two alternatives that ``bench/bench_stage2_readback.py`` compares
READ_BACKS = ("bilinear_aa", "bicubic_aa", "area")


def read_back(images: torch.Tensor, mode: str = "bilinear_aa") -> torch.Tensor:
    """Images [B, 3, S, S] in [-1, 1] reduced to [B, 3, 64, 64] as the classifier reads them.

    ``bilinear_aa`` (the evaluation protocol): antialiased bilinear; ``bicubic_aa``:
    antialiased bicubic, the filter that made the twin's 64 px images from its 256 px ones
    (PIL bicubic), clamped to [-1, 1]; ``area``: the mean of each (S/64)-pixel block, so an
    image whose blocks are constant reads back to exactly the 64 px image. 64 px images
    pass unchanged.
    """
    if mode not in READ_BACKS:
        raise ValueError(f"read-back must be one of {READ_BACKS}, got {mode!r}")
    if images.shape[-2:] == (64, 64):
        return images
    if mode == "area":
        if images.shape[-1] % 64 or images.shape[-2] != images.shape[-1]:
            raise ValueError(f"area read-back needs square multiples of 64 px, got {images.shape}")
        return F.avg_pool2d(images, images.shape[-1] // 64)
    if mode == "bilinear_aa":
        return downsample(images, 64)
    out = F.interpolate(images, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(-1, 1)


class AttributeClassifier(nn.Module):
    """Small CNN: 64x64 RGB in [-1, 1] (read at 32 px) -> logits for body and wing colour."""

    def __init__(self, num_colours: int = len(COLOUR_NAMES), width: int = 32) -> None:
        super().__init__()
        w = width
        # Colour masses are all it reads, so it works at 32 px: 2.6x faster to train than
        # at 64 px, and no less accurate on held-out real images (docs/benchmarks.md).
        self.features = nn.Sequential(
            nn.AvgPool2d(2),  # [B, 3, 32, 32]
            nn.Conv2d(3, w, 3, stride=2, padding=1),  # [B, w, 16, 16]
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),  # [B, 2w, 8, 8]
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),  # [B, 4w, 4, 4]
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.body = nn.Linear(4 * w, num_colours)
        self.wing = nn.Linear(4 * w, num_colours)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(body logits, wing logits) of images in [-1, 1]."""
        _, body, wing = self.forward_features(x)
        return body, wing

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(penultimate features [B, 4w], body logits, wing logits); 256 px input is resized."""
        h = self.features(read_back(x))
        return h, self.body(h), self.wing(h)


def centre(images: torch.Tensor) -> torch.Tensor:
    """Centre 64 px crop of uint8 76 px images, as [-1, 1] floats."""
    return to_float_images(images[:, :, 6:70, 6:70])


def save_classifier(model: AttributeClassifier, path: str | Path, meta: dict[str, Any]) -> None:
    """Write the classifier file (state, colour list, ``meta``)."""
    from stackgan.checkpoint import save

    save(
        {
            "format": CLASSIFIER_FORMAT,
            "state": model.state_dict(),
            "colours": list(COLOUR_NAMES),
            "meta": meta,
        },
        path,
    )


def load_classifier(path: str | Path) -> AttributeClassifier:
    """Read a classifier file (checks its format and colour list); in eval mode."""
    from stackgan.checkpoint import load

    payload = load(path, expected_format=CLASSIFIER_FORMAT)
    if list(payload["colours"]) != list(COLOUR_NAMES):
        raise ValueError(
            f"{path}: colour list {payload['colours']} differs from this version's "
            f"{list(COLOUR_NAMES)}"
        )
    model = AttributeClassifier()
    model.load_state_dict(payload["state"])
    return model.eval()


@torch.no_grad()
def predict(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """[N, 2] predicted (body, wing) colour indices for images in [-1, 1]."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        body, wing = model(images[start : start + batch_size].float())
        out.append(torch.stack([body.argmax(1), wing.argmax(1)], dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, 2), dtype=np.int64)


__all__ = [
    "ATTRIBUTES",
    "CLASSIFIER_FORMAT",
    "READ_BACKS",
    "AttributeClassifier",
    "centre",
    "load_classifier",
    "predict",
    "read_back",
    "save_classifier",
]
