"""Training the twin attribute classifier on real images, with held-out images for its report."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stackgan.data.imagesets import iter_set_uint8, to_float_images
from stackgan.data.index import SplitIndex
from stackgan.evaluation.attributes.model import AttributeClassifier, centre, predict
from stackgan.evaluation.attributes.score import accuracy, attribute_labels, real_image_scores

log = logging.getLogger(__name__)


def load_real_set(set_dir: str | Path, index_path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """All images of a 64 px set at their 76 px load size (uint8, index order) and their
    (body, wing) labels from caption 0."""
    images = torch.cat(list(iter_set_uint8(set_dir, size=76)))  # [N, 3, 76, 76] uint8
    with SplitIndex(index_path) as idx:
        captions = list(idx.captions(slice(None), 0))
    labels = attribute_labels(captions)
    if (labels < 0).any():
        raise ValueError(
            f"{index_path}: some captions name no body/wing colour (not a synthetic twin index?)"
        )
    return images, labels


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur of [B, 3, H, W] with standard deviations ``sigma`` [B]."""
    radius = 6
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))  # [B, 2r+1]
    k = k / k.sum(1, keepdim=True)
    b, c, h, w = x.shape
    flat = x.reshape(1, b * c, h, w)
    kc = k.repeat_interleave(c, 0)  # [B*C, 2r+1]
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kc[:, None, None, :], groups=b * c
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="replicate"), kc[:, None, :, None], groups=b * c
    )
    return flat.reshape(b, c, h, w)


def _augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 64 px crop from 76, horizontal flip and (for half the batch) a Gaussian blur.

    The blur (sigma up to 3 px) teaches the classifier to read colour masses rather than
    fine shape, so it also judges the blurry birds of a briefly trained generator.
    """
    out = torch.empty(batch.shape[0], 3, 64, 64)
    offsets = torch.randint(0, 13, (batch.shape[0], 2), generator=gen)
    flips = torch.rand(batch.shape[0], generator=gen) < 0.5
    for i, img in enumerate(batch):
        y, x = offsets[i].tolist()
        crop = img[:, y : y + 64, x : x + 64]
        out[i] = (crop.flip(-1) if flips[i] else crop).float()
    out = to_float_images(out)
    sigma = torch.rand(batch.shape[0], generator=gen) * 3.0
    sigma[torch.rand(batch.shape[0], generator=gen) < 0.5] = 0.0
    blurred = _blur(out, sigma)
    return torch.where((sigma > 0)[:, None, None, None], blurred, out)


def train_classifier(
    images: torch.Tensor,
    labels: np.ndarray,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
) -> AttributeClassifier:
    """Train on uint8 76 px images [N, 3, 76, 76] with (body, wing) labels [N, 2]."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = AttributeClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y_all = torch.from_numpy(labels)
    n = images.shape[0]
    steps = max(1, epochs * n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    report_every = max(1, steps // 10)
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        body, wing = model(_augment(images[idx], gen))
        y = y_all[idx]
        loss = F.cross_entropy(body, y[:, 0]) + F.cross_entropy(wing, y[:, 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % report_every == 0 and step < steps:
            elapsed = time.perf_counter() - t0
            log.info(
                "attribute classifier: step %d/%d, loss %.3f, %.0f s, eta %.0f s",
                step,
                steps,
                loss.item(),
                elapsed,
                elapsed * (steps - step) / step,
            )
    log.info(
        "attribute classifier: %d steps on %d images, %.0f s", steps, n, time.perf_counter() - t0
    )
    return model.eval()


def fit_with_holdout(
    parts: dict[str, tuple[torch.Tensor, np.ndarray]],
    *,
    holdout: int = 5,
    epochs: int = 100,
    seed: int = 0,
) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Train on the real images of every split (``split -> (images, labels)``, the train split
    first) except every ``holdout``-th one; score the held-out images.

    Returns the model and its report: fit and held-out counts and the held-out scores (own,
    shuffled and random pairs, and own pairs of the test split's held-out images).
    """
    fit_x, fit_y, held_x, held_y, held_test = [], [], [], [], []
    for split, (x, y) in parts.items():
        held = np.arange(len(y)) % holdout == 0
        fit_x.append(x[torch.from_numpy(~held)])
        fit_y.append(y[~held])
        held_x.append(x[torch.from_numpy(held)])
        held_y.append(y[held])
        held_test += [split == "test"] * int(held.sum())
    model = train_classifier(torch.cat(fit_x), np.concatenate(fit_y), epochs=epochs, seed=seed)
    scores = real_image_scores(model, torch.cat(held_x), np.concatenate(held_y), seed=seed)
    test_mask = np.array(held_test)
    scores["real_test_split"] = accuracy(
        predict(model, centre(torch.cat(held_x)[torch.from_numpy(test_mask)])),
        np.concatenate(held_y)[test_mask],
    )
    report = {
        "fit_images": int(sum(len(y) for y in fit_y)),
        "heldout_images": len(test_mask),
        "holdout_every": holdout,
        "scores": scores,
    }
    return model, report


__all__ = ["fit_with_holdout", "load_real_set", "train_classifier"]
