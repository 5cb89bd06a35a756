"""Conditional-accuracy scores: caption labels, accuracy with chance levels, real-image checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stackgan.evaluation.attributes.model import ATTRIBUTES, AttributeClassifier, centre, predict
from stackgan.text.twin import COLOUR_NAMES, parse_caption_attributes


def attribute_labels(captions: Sequence[str]) -> np.ndarray:
    """[N, 2] colour indices (body, wing) parsed from captions; -1 where a caption names none."""
    out = np.full((len(captions), 2), -1, dtype=np.int64)
    for i, caption in enumerate(captions):
        attrs = parse_caption_attributes(caption)
        for j, name in enumerate(ATTRIBUTES):
            if name in attrs:
                out[i, j] = COLOUR_NAMES.index(attrs[name])
    return out


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


__all__ = ["accuracy", "attribute_labels", "real_image_scores"]
