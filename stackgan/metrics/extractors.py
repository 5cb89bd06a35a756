"""Feature extractors: images in [-1, 1] → (features [N, D], logits [N, K]).

Activations are cached elsewhere (HDF5) and the metrics in :mod:`stackgan.metrics.scores`
are computed from the cache, so every extractor carries the metadata a result must name:
``name``, ``weights_sha256``, ``feature_dim``, ``num_classes`` and ``resize``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stackgan.metrics.inception import (
    CUB_NUM_CLASSES,
    FEATURE_DIM,
    FID_NUM_CLASSES,
    INPUT_SIZE,
    FIDInceptionV3,
    drop_background_logit,
    load_cub_classifier,
    load_fid_inception,
)

__all__ = [
    "TEST_EXTRACTOR_LABEL",
    "FeatureExtractor",
    "InceptionExtractor",
    "TestExtractor",
    "extract",
]

TEST_EXTRACTOR_LABEL = "TEST EXTRACTOR — numbers are not comparable to any published metric"


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images) -> (features [N, feature_dim], logits [N, num_classes])``.

    Images are float tensors ``[N, 3, H, W]`` in [-1, 1]. Subclasses set the metadata
    attributes below in ``__init__``.
    """

    name: str
    weights_sha256: str | None
    feature_dim: int
    num_classes: int
    resize: str

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Return ``(features, logits)`` for a batch of images in [-1, 1]."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """Metadata to store next to cached activations and in result JSONs."""
        return {
            "extractor": self.name,
            "weights_sha256": self.weights_sha256,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "resize": self.resize,
        }


class InceptionExtractor(FeatureExtractor):
    """FID Inception pool3 features, with ImageNet or StackGAN-CUB logits for IS.

    Args:
        fid_net: Loaded :class:`FIDInceptionV3` (1008 classes).
        fid_sha256: Full SHA-256 of its weights file.
        cub_classifier: Optional 51-class CUB classifier; when given, logits are its 50
            class logits (background logit 0 dropped), as in the StackGAN IS protocol.
        cub_sha256: SHA-256 of the CUB classifier file.
        imagenet_logits: Without a CUB classifier: ``"unbiased"`` (pool3 @ fc.weight.T,
            as improved-GAN's ImageNet IS and torch-fidelity's ``logits_unbiased``) or
            ``"biased"`` (full fc).
    """

    def __init__(
        self,
        fid_net: FIDInceptionV3,
        fid_sha256: str,
        *,
        cub_classifier: FIDInceptionV3 | None = None,
        cub_sha256: str | None = None,
        imagenet_logits: Literal["unbiased", "biased"] = "unbiased",
    ) -> None:
        super().__init__()
        if fid_net.num_classes != FID_NUM_CLASSES:
            raise ValueError(f"fid_net must have {FID_NUM_CLASSES} classes")
        if cub_classifier is not None and cub_classifier.num_classes != CUB_NUM_CLASSES:
            raise ValueError(f"cub_classifier must have {CUB_NUM_CLASSES} classes")
        if imagenet_logits not in ("unbiased", "biased"):
            raise ValueError(f"imagenet_logits must be 'unbiased' or 'biased': {imagenet_logits!r}")
        self.fid_net = fid_net.eval()
        self.cub_classifier = None if cub_classifier is None else cub_classifier.eval()
        self.imagenet_logits = imagenet_logits
        self.name = "pt_inception-2015-12-05"
        self.weights_sha256 = fid_sha256
        self.cub_sha256 = cub_sha256
        self.feature_dim = FEATURE_DIM
        self.num_classes = FID_NUM_CLASSES if cub_classifier is None else CUB_NUM_CLASSES - 1
        self.resize = f"bilinear-{INPUT_SIZE}"

    @classmethod
    def from_files(
        cls,
        fid_weights: str | os.PathLike[str],
        *,
        fid_sha256: str | None = None,
        cub_weights: str | os.PathLike[str] | None = None,
        cub_sha256: str | None = None,
        imagenet_logits: Literal["unbiased", "biased"] = "unbiased",
    ) -> InceptionExtractor:
        """Build from local weight files (hashes checked as in the loaders)."""
        fid_net, fid_digest = load_fid_inception(fid_weights, expected_sha256=fid_sha256)
        cub_net, cub_digest = None, None
        if cub_weights is not None:
            cub_net, cub_digest = load_cub_classifier(cub_weights, expected_sha256=cub_sha256)
        return cls(
            fid_net,
            fid_digest,
            cub_classifier=cub_net,
            cub_sha256=cub_digest,
            imagenet_logits=imagenet_logits,
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Return pool3 features ``[N, 2048]`` and IS logits ``[N, 50]`` or ``[N, 1008]``."""
        feats, logits = self.fid_net(images)
        if self.cub_classifier is not None:
            _, cub_logits = self.cub_classifier(images)
            return feats, drop_background_logit(cub_logits)
        if self.imagenet_logits == "unbiased":
            logits = self.fid_net.unbiased_logits(feats)
        return feats, logits

    def metadata(self) -> dict[str, Any]:
        """Base metadata plus where the logits come from."""
        meta = super().metadata()
        if self.cub_classifier is not None:
            meta["logits"] = "stackgan-cub-inception (51 logits, background logit 0 dropped)"
            meta["logits_weights_sha256"] = self.cub_sha256
        else:
            meta["logits"] = f"pt_inception-2015-12-05 fc ({self.imagenet_logits})"
            meta["logits_weights_sha256"] = self.weights_sha256
        return meta


class TestExtractor(FeatureExtractor):
    """Small random-init conv net for CPU end-to-end tests without weights.

    TEST EXTRACTOR — numbers are not comparable to any published metric. Weights come
    from a private ``torch.Generator`` seeded with ``seed`` (the global RNG is untouched);
    ``weights_sha256`` fingerprints them. Images are resized to 64x64 bilinear, then
    three stride-2 convs and a global average pool give 64-d features; a linear layer
    gives 10 logits.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        with torch.random.fork_rng(devices=[]):  # default inits draw from the global RNG
            self.convs = nn.ModuleList(
                [
                    nn.Conv2d(3, 16, 3, stride=2, padding=1),
                    nn.Conv2d(16, 32, 3, stride=2, padding=1),
                    nn.Conv2d(32, 64, 3, stride=2, padding=1),
                ]
            )
            self.fc = nn.Linear(64, 10)
        gen = torch.Generator().manual_seed(seed)
        digest = hashlib.sha256()
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
                digest.update(p.detach().numpy().tobytes())
        self.requires_grad_(False)
        self.eval()
        self.name = f"TEST-EXTRACTOR-randconv-seed{seed}"
        self.label = TEST_EXTRACTOR_LABEL
        self.weights_sha256 = digest.hexdigest()
        self.feature_dim = 64
        self.num_classes = 10
        self.resize = "bilinear-64"

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(features [N, 64], logits [N, 10])``."""
        x = F.interpolate(images.float(), size=(64, 64), mode="bilinear", align_corners=False)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        feats = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return feats, self.fc(feats)

    def metadata(self) -> dict[str, Any]:
        """Base metadata plus the explicit not-comparable warning."""
        meta = super().metadata()
        meta["warning"] = TEST_EXTRACTOR_LABEL
        meta["seed"] = self.seed
        return meta


def _check_batch(x: Tensor) -> Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W] or [3, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected float images in [-1, 1], got dtype {x.dtype}")
    if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
        raise ValueError(
            f"expected images in [-1, 1], got range [{x.min().item():.3f}, {x.max().item():.3f}]"
        )
    return x


def _rebatch(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        images = _check_batch(images)
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    pending: list[Tensor] = []
    count = 0
    for item in images:
        item = _check_batch(item)
        pending.append(item)
        count += item.shape[0]
        while count >= batch_size:
            buf = torch.cat(pending)
            yield buf[:batch_size]
            rest = buf[batch_size:]
            pending, count = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if count:
        yield torch.cat(pending)


def extract(
    extractor: FeatureExtractor,
    images: Tensor | Iterable[Tensor],
    batch_size: int = 64,
    *,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``extractor`` over images in batches (eval mode, no grad).

    Args:
        extractor: Any :class:`FeatureExtractor`.
        images: A tensor ``[N, 3, H, W]`` or an iterable of tensors ``[B, 3, H, W]`` /
            ``[3, H, W]``, float in [-1, 1]; re-batched to ``batch_size``.
        batch_size: Images per forward pass.
        device: Where to run; default: the extractor's parameter device (CPU if none).

    Returns:
        ``(features [N, feature_dim], logits [N, num_classes])`` as float32 numpy arrays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        param = next(extractor.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    extractor.eval()
    feats: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    with torch.no_grad():
        for batch in _rebatch(images, batch_size):
            f, lg = extractor(batch.to(device))
            feats.append(f.float().cpu().numpy())
            logits.append(lg.float().cpu().numpy())
    if not feats:
        return (
            np.zeros((0, extractor.feature_dim), np.float32),
            np.zeros((0, extractor.num_classes), np.float32),
        )
    return np.concatenate(feats), np.concatenate(logits)
