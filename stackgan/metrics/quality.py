"""Sample-quality measures on classifier features: twin-FID, diversity, stage consistency.

All functions are pure (arrays in, numbers out) so that the in-training monitor
(:mod:`stackgan.monitor`) and the tests use the same math.

* **twin-FID**: the Frechet distance between Gaussian fits of real and generated
  features in the twin attribute classifier's penultimate layer, computed with
  torchmetrics exactly like the Inception FID (:func:`stackgan.metrics.scores.frechet_distance`).
* **diversity**: the mean pairwise L2 feature distance between samples of the same
  caption (different noise), divided by the same quantity for real images of the same
  class. 1.0 means "as varied as the real birds of a species"; 0 is mode collapse.
* **stage consistency** (Stage-II): does the 256 px image keep what the 64 px Stage-I
  image decided? Attribute agreement (same predicted colours) and the Pearson
  correlation of the two images' low-frequency content (8x8 block means at 64 px).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stackgan.metrics.scores import frechet_distance


def twin_fid(real_feats: np.ndarray, fake_feats: np.ndarray) -> float:
    """Frechet distance of real vs generated classifier features ([N, F] each)."""
    return frechet_distance(real_feats, fake_feats)


def mean_pairwise_distance(feats: np.ndarray) -> float:
    """Mean L2 distance over all unordered pairs of rows of ``feats`` [K, F] (K >= 2)."""
    x = torch.as_tensor(np.asarray(feats, dtype=np.float64))
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 rows for pairwise distances, got {x.shape[0]}")
    d = torch.cdist(x, x)
    k = x.shape[0]
    return float(d.sum() / (k * (k - 1)))


def grouped_pairwise_distance(feats: np.ndarray, groups: np.ndarray) -> float:
    """Mean over groups (with >= 2 members) of the mean pairwise distance within the group."""
    groups = np.asarray(groups)
    values = [
        mean_pairwise_distance(feats[groups == g])
        for g in np.unique(groups)
        if int((groups == g).sum()) >= 2
    ]
    if not values:
        raise ValueError("no group has two or more members")
    return float(np.mean(values))


def diversity(fake_feats: np.ndarray, caption_ids: np.ndarray, real_within_class: float) -> float:
    """Within-caption spread of generated features relative to the real within-class spread."""
    if real_within_class <= 0:
        raise ValueError(f"real within-class distance must be > 0, got {real_within_class}")
    return grouped_pairwise_distance(fake_feats, caption_ids) / real_within_class


def low_frequency(images: torch.Tensor, size: int = 64, blocks: int = 8) -> torch.Tensor:
    """[N, 3*blocks*blocks] block means of images resized (antialiased) to ``size`` px."""
    x = images.float()
    if x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return F.adaptive_avg_pool2d(x, blocks).flatten(1)


def low_frequency_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image Pearson correlation of the low-frequency content of image batches ``a``, ``b``."""
    la, lb = low_frequency(a).double(), low_frequency(b).double()
    la = la - la.mean(1, keepdim=True)
    lb = lb - lb.mean(1, keepdim=True)
    denom = (la.norm(dim=1) * lb.norm(dim=1)).clamp_min(1e-12)
    return ((la * lb).sum(1) / denom).numpy()


def attribute_agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, float]:
    """Share of images whose predicted attributes agree: per column (body, wing), mean and joint."""
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    same = pred_a == pred_b  # [N, A]
    return {
        "body": float(same[:, 0].mean()),
        "wing": float(same[:, 1].mean()),
        "attributes": float(same.mean()),
        "joint": float(same.all(axis=1).mean()),
    }


__all__ = [
    "attribute_agreement",
    "diversity",
    "grouped_pairwise_distance",
    "low_frequency",
    "low_frequency_correlation",
    "mean_pairwise_distance",
    "twin_fid",
]
