"""Conditional accuracy on the synthetic twin: does an image show the colours its caption names?

The twin's captions state the bird's body and wing colour (``stackgan.data.twin``). A
small CNN, trained by the pipeline on the twin's *real* training images, predicts both
colours from a 64 px image. For generated images, the score is how often the predicted
colours equal the colours parsed from the image's caption.

Reported with the chance level of the same predictions: ``sum_c p_caption(c) *
p_predicted(c)`` per attribute -- the expected accuracy if images carried no information
about their captions. Real images score ~100 %; shuffled image-caption pairs score at
chance; a generator that learned the conditioning lands clearly above chance.
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

from stackgan.data.twin import COLOUR_NAMES, parse_caption_attributes

log = logging.getLogger(__name__)

ATTRIBUTES = ("body", "wing")
CLASSIFIER_FORMAT = "stackgan-attribute-classifier/1"


class AttributeClassifier(nn.Module):
    """Tiny CNN: 64x64 RGB in [-1, 1] -> logits for body colour and wing colour."""

    def __init__(self, num_colours: int = len(COLOUR_NAMES), width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),  # 32x32
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),  # 16x16
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),  # 8x8
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.body = nn.Linear(4 * w, num_colours)
        self.wing = nn.Linear(4 * w, num_colours)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != 64 or x.shape[-2] != 64:
            x = F.interpolate(
                x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True
            )
        h = self.features(x)
        return self.body(h), self.wing(h)


def attribute_labels(captions: Sequence[str]) -> np.ndarray:
    """[N, 2] colour indices (body, wing) parsed from captions; -1 where a caption names none."""
    out = np.full((len(captions), 2), -1, dtype=np.int64)
    for i, caption in enumerate(captions):
        attrs = parse_caption_attributes(caption)
        for j, name in enumerate(ATTRIBUTES):
            if name in attrs:
                out[i, j] = COLOUR_NAMES.index(attrs[name])
    return out


def class_attributes(index_path: str | Path) -> dict[int, tuple[int, int]]:
    """class id -> (body, wing) colour indices, from caption 0 of each image of an HDF5 index."""
    import h5py

    with h5py.File(index_path, "r") as h5:
        class_ids = h5["class_ids"][:]
        captions = [c.decode() if isinstance(c, bytes) else c for c in h5["captions"][:, 0]]
    labels = attribute_labels(captions)
    table: dict[int, tuple[int, int]] = {}
    for cid, (body, wing) in zip(class_ids.tolist(), labels.tolist(), strict=True):
        if body < 0 or wing < 0:
            raise ValueError(
                f"{index_path}: a caption of class {cid} names no body/wing colour (not a twin index?)"
            )
        table.setdefault(int(cid), (body, wing))
    return table


def train_classifier(
    shard_dir: str | Path,
    index_path: str | Path,
    *,
    epochs: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Train the attribute classifier on real twin images of a 64 px shard set."""
    from stackgan.data.loader import spec_from_set, to_float_images, train_loader

    torch.manual_seed(seed)
    table = class_attributes(index_path)
    import json

    count = json.loads((Path(shard_dir) / "manifest.json").read_text())["num_samples"]
    spec = spec_from_set(shard_dir, batch_size=min(batch_size, count), seed=seed, num_workers=0)
    steps = epochs * spec.steps_per_epoch
    model = AttributeClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = train_loader(spec, 0)
    t0 = time.perf_counter()
    correct = total = 0
    for step in range(steps):
        batch = next(data)
        x = to_float_images(batch["image"])
        y = torch.tensor([table[int(c)] for c in batch["class_id"]])
        body, wing = model(x)
        loss = F.cross_entropy(body, y[:, 0]) + F.cross_entropy(wing, y[:, 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - spec.steps_per_epoch:  # accuracy over the last epoch
            correct += int((body.argmax(1) == y[:, 0]).sum() + (wing.argmax(1) == y[:, 1]).sum())
            total += 2 * len(y)
    model.eval()
    report = {
        "steps": steps,
        "train_accuracy_last_epoch": correct / max(total, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info(
        "attribute classifier: %d steps, train accuracy %.3f",
        steps,
        report["train_accuracy_last_epoch"],
    )
    return model, report


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
            f"{path}: colour list {payload['colours']} differs from this version's {list(COLOUR_NAMES)}"
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
    model: AttributeClassifier, shard_dir: str | Path, index_path: str | Path, seed: int = 0
) -> dict[str, Any]:
    """Conditional accuracy of REAL images of a 64 px set: own captions, shuffled, random images.

    Own captions should score ~100 %; shuffled pairs and random-noise images should sit at
    their chance level.
    """
    import h5py

    from stackgan.evaluation import iter_real_images

    images = torch.cat(list(iter_real_images(shard_dir, size=64)))
    preds = predict(model, images)
    with h5py.File(index_path, "r") as h5:
        captions = [c.decode() if isinstance(c, bytes) else c for c in h5["captions"][:, 0]]
    wanted = attribute_labels(captions)
    rng = np.random.default_rng(seed)
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return {
        "real": accuracy(preds, wanted),
        "shuffled": accuracy(preds, wanted[rng.permutation(len(wanted))]),
        "random_images": accuracy(predict(model, noise), wanted),
    }


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan attr-classifier``: train the twin attribute classifier and score real images."""
    import argparse

    from stackgan.fileio import write_json

    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the synthetic twin's colour classifier on real training images; "
        "report its conditional accuracy on real test images (own, shuffled and random pairs).",
    )
    p.add_argument(
        "--train-shards", type=Path, required=True, help="train-64 shard set of the twin"
    )
    p.add_argument(
        "--train-index", type=Path, required=True, help="train-index.h5 (captions give the labels)"
    )
    p.add_argument("--test-shards", type=Path, required=True, help="test-64 shard set")
    p.add_argument("--test-index", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="classifier file (.pt)")
    p.add_argument("--report", type=Path, help="JSON with the real-image scores")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, report = train_classifier(
        args.train_shards, args.train_index, epochs=args.epochs, seed=args.seed
    )
    scores = real_image_scores(model, args.test_shards, args.test_index, seed=args.seed)
    report["test"] = scores
    save_classifier(model, args.out, report)
    if args.report:
        write_json(args.report, report)
    real = scores["real"]
    log.info(
        "real test images: body %.3f wing %.3f (chance %.3f / %.3f); shuffled body %.3f (chance %.3f)",
        real["body_accuracy"], real["wing_accuracy"], real["body_chance"], real["wing_chance"],
        scores["shuffled"]["body_accuracy"], scores["shuffled"]["body_chance"],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
