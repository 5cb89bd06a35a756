"""The evaluation protocol: which (test image, caption) pairs are generated, and how.

Protocol (StackGAN-v2 / StackGAN++ style): every caption of every test image yields one
image -- 2,933 x 10 = 29,330 for CUB -- in image-major order, from a network file in
eval mode with fixed seeds (chunked as in :mod:`stackgan.sampling`, so any number of
ranks gives the same images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stackgan.config import EvalConfig
from stackgan.data.index import SplitIndex


@dataclass(frozen=True)
class Protocol:
    """What determines the generated evaluation set."""

    captions_per_image: int = EvalConfig.captions_per_image
    max_images: int | None = None  # None: every test image
    batch_size: int = EvalConfig.batch_size
    seed: int = EvalConfig.seed
    use_ema: bool = EvalConfig.use_ema
    channels_last: bool = EvalConfig.channels_last  # generators' memory layout


@dataclass
class Requests:
    """The (test image, caption) pairs to generate, image-major."""

    embeddings: torch.Tensor  # [N, text_dim]
    image_index: np.ndarray  # [N] row in the test index
    caption_index: np.ndarray  # [N]
    captions: list[str]  # [N] ("" when the index has none)
    keys: list[str]  # [N] CUB key of the test image

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def load_requests(index_path: str | Path, protocol: Protocol) -> Requests:
    """Requests for ``captions_per_image`` captions of the first ``max_images`` test images."""
    k = protocol.captions_per_image
    with SplitIndex(index_path) as idx:
        n_images = (
            idx.num_images
            if protocol.max_images is None
            else min(protocol.max_images, idx.num_images)
        )
        n_caps = idx.captions_per_image
        if k > n_caps:
            raise ValueError(f"{index_path}: {n_caps} captions per image, protocol wants {k}")
        emb = idx.embeddings(slice(None, n_images), slice(None, k))  # [n, k, D]
        captions = idx.captions(slice(None, n_images), slice(None, k))
        keys = idx.keys(limit=n_images)
    return Requests(
        embeddings=torch.from_numpy(
            np.ascontiguousarray(emb.reshape(n_images * k, -1), dtype=np.float32)
        ),
        image_index=np.repeat(np.arange(n_images), k),
        caption_index=np.tile(np.arange(k), n_images),
        captions=[str(c) for c in captions.reshape(-1)],
        keys=[key for key in keys for _ in range(k)],
    )


__all__ = ["Protocol", "Requests", "load_requests"]
