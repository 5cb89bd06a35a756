"""Conditional accuracy on the synthetic twin: does an image show the colours its caption names?

The twin's captions state the bird's body and wing colour (``stackgan.data.twin``). A
small CNN predicts both colours from a 64 px image; for generated images the score is
how often the predicted colours equal the colours parsed from the image's caption.

The classifier is an evaluation oracle, trained by the pipeline on the twin's *real*
images of both splits (like the StackGAN Inception Score, whose classifier was fine-
tuned on the test classes), except every ``holdout``-th image, on which its real-image
accuracy is reported. Training only on the 15 training classes of a small twin lets it
memorise classes instead of colours (measured: wing accuracy ~0.4 on unseen classes).

Reported with the chance level of the same predictions: ``sum_c p_caption(c) *
p_predicted(c)`` per attribute -- the expected accuracy if images carried no
information about their captions. Real images score >= 95 %; shuffled image-caption
pairs and random images score at chance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stackgan.data.imagesets import iter_set_uint8, to_float_images
from stackgan.data.twin import COLOUR_NAMES, parse_caption_attributes

log = logging.getLogger(__name__)

ATTRIBUTES = ("body", "wing")
CLASSIFIER_FORMAT = "stackgan-attribute-classifier/1"


class AttributeClassifier(nn.Module):
    """Small CNN: 64x64 RGB in [-1, 1] -> logits for body colour and wing colour."""

    def __init__(self, num_colours: int = len(COLOUR_NAMES), width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),  # [B, w, 32, 32]
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),  # [B, 2w, 16, 16]
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),  # [B, 4w, 8, 8]
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.body = nn.Linear(4 * w, num_colours)
        self.wing = nn.Linear(4 * w, num_colours)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, body, wing = self.forward_features(x)
        return body, wing

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(penultimate features [B, 4w], body logits, wing logits); 256 px input is resized."""
        if x.shape[-1] != 64 or x.shape[-2] != 64:
            x = F.interpolate(
                x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True
            )
        h = self.features(x)
        return h, self.body(h), self.wing(h)


def attribute_labels(captions: Sequence[str]) -> np.ndarray:
    """[N, 2] colour indices (body, wing) parsed from captions; -1 where a caption names none."""
    out = np.full((len(captions), 2), -1, dtype=np.int64)
    for i, caption in enumerate(captions):
        attrs = parse_caption_attributes(caption)
        for j, name in enumerate(ATTRIBUTES):
            if name in attrs:
                out[i, j] = COLOUR_NAMES.index(attrs[name])
    return out


def load_real_set(set_dir: str | Path, index_path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """All images of a 64 px set at their 76 px load size (uint8, index order) and their
    (body, wing) labels from caption 0."""
    import h5py

    images = torch.cat(list(iter_set_uint8(set_dir, size=76)))  # [N, 3, 76, 76] uint8
    with h5py.File(index_path, "r") as h5:
        captions = [c.decode() if isinstance(c, bytes) else c for c in h5["captions"][:, 0]]
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


def centre(images: torch.Tensor) -> torch.Tensor:
    """Centre 64 px crop of uint8 76 px images, as [-1, 1] floats."""
    return to_float_images(images[:, :, 6:70, 6:70])


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


def save_classifier(model: AttributeClassifier, path: str | Path, meta: dict[str, Any]) -> None:
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


def accuracy(predicted: np.ndarray, wanted: np.ndarray) -> dict[str, float]:
    """Per-attribute and joint accuracy, with the chance level of these predictions.

    Rows whose caption names no colour for an attribute (-1) are ignored for it.
    """
    out: dict[str, float] = {}
    k = len(COLOUR_NAMES)
    valid = (wanted >= 0).all(axis=1)
    for j, name in enumerate(ATTRIBUTES):
        ok = wanted[:, j] >= 0
        out[f"{name}_accuracy"] = (
            float((predicted[ok, j] == wanted[ok, j]).mean()) if ok.any() else float("nan")
        )
        p_cap = np.bincount(wanted[ok, j], minlength=k) / max(ok.sum(), 1)
        p_pred = np.bincount(predicted[ok, j], minlength=k) / max(ok.sum(), 1)
        out[f"{name}_chance"] = float(p_cap @ p_pred)
    both = (predicted[valid] == wanted[valid]).all(axis=1)
    out["joint_accuracy"] = float(both.mean()) if valid.any() else float("nan")
    pair_cap = np.bincount(wanted[valid, 0] * k + wanted[valid, 1], minlength=k * k) / max(
        valid.sum(), 1
    )
    pair_pred = np.bincount(predicted[valid, 0] * k + predicted[valid, 1], minlength=k * k) / max(
        valid.sum(), 1
    )
    out["joint_chance"] = float(pair_cap @ pair_pred)
    out["count"] = int(valid.sum())
    return out


def real_image_scores(
    model: AttributeClassifier, images: torch.Tensor, labels: np.ndarray, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Scores on REAL held-out images: own captions, shuffled pairs, random-noise images."""
    preds = predict(model, centre(images))
    rng = np.random.default_rng(seed)
    noise = (
        torch.rand(images.shape[0], 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2
        - 1
    )
    return {
        "real": accuracy(preds, labels),
        "shuffled": accuracy(preds, labels[rng.permutation(len(labels))]),
        "random_images": accuracy(predict(model, noise), labels),
    }


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan attr-classifier``: train the twin colour classifier and score real images."""
    import argparse

    from stackgan.fileio import write_json

    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the synthetic twin's colour classifier on real images of both splits "
        "(every --holdout-th image held out) and report its accuracy on the held-out real "
        "images: own, shuffled and random pairs.",
    )
    p.add_argument(
        "--train-shards", type=Path, required=True, help="train-64 shard set of the twin"
    )
    p.add_argument("--train-index", type=Path, required=True, help="train-index.h5")
    p.add_argument("--test-shards", type=Path, required=True, help="test-64 shard set")
    p.add_argument("--test-index", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="classifier file (.pt)")
    p.add_argument("--report", type=Path, help="JSON with the held-out real-image scores")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--holdout", type=int, default=5, help="hold out every N-th image of each split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parts = [
        load_real_set(args.train_shards, args.train_index),
        load_real_set(args.test_shards, args.test_index),
    ]
    fit_x, fit_y, held_x, held_y, held_test = [], [], [], [], []
    for split, (x, y) in zip(("train", "test"), parts, strict=True):
        held = np.arange(len(y)) % args.holdout == 0
        fit_x.append(x[torch.from_numpy(~held)])
        fit_y.append(y[~held])
        held_x.append(x[torch.from_numpy(held)])
        held_y.append(y[held])
        held_test += [split == "test"] * int(held.sum())
    model = train_classifier(
        torch.cat(fit_x), np.concatenate(fit_y), epochs=args.epochs, seed=args.seed
    )
    scores = real_image_scores(model, torch.cat(held_x), np.concatenate(held_y), seed=args.seed)
    test_mask = np.array(held_test)
    scores["real_test_split"] = accuracy(
        predict(model, centre(torch.cat(held_x)[torch.from_numpy(test_mask)])),
        np.concatenate(held_y)[test_mask],
    )
    report = {
        "fit_images": int(sum(len(y) for y in fit_y)),
        "heldout_images": len(test_mask),
        "holdout_every": args.holdout,
        "scores": scores,
    }
    save_classifier(model, args.out, report)
    if args.report:
        write_json(args.report, report)
    real, shuf = scores["real"], scores["shuffled"]
    log.info(
        "held-out real images: body %.3f wing %.3f joint %.3f | "
        "shuffled body %.3f (chance %.3f) wing %.3f (chance %.3f)",
        real["body_accuracy"], real["wing_accuracy"], real["joint_accuracy"],
        shuf["body_accuracy"], shuf["body_chance"], shuf["wing_accuracy"], shuf["wing_chance"],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
