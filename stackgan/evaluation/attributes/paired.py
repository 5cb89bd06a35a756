"""Paired comparison of two evaluations on the same captions and noise (Stage-II vs Stage-I).

Two accuracies a few thousandths apart say little by themselves. On the same captions and
noise, the images whose attribute turned from right to wrong (``lost``) and from wrong to
right (``won``) tell whether the second generator changed the first one's colours for the
better, and an exact sign test says whether the difference is more than chance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from stackgan.evaluation.attributes.model import ATTRIBUTES
from stackgan.evaluation.attributes.score import attribute_labels


def sign_test_p(won: int, lost: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | changes go either way 50:50)."""
    if won < 0 or lost < 0:
        raise ValueError(f"counts must be >= 0, got won={won}, lost={lost}")
    n = won + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(won, lost) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_changes(before: np.ndarray, after: np.ndarray, wanted: np.ndarray) -> dict[str, float]:
    """Per attribute: ``{a}_lost`` (right before, wrong after), ``{a}_won`` and ``{a}_sign_p``.

    ``before`` / ``after``: predicted (body, wing) [N, 2] of the same N requests; ``wanted``:
    the captions' labels [N, 2] (-1 where a caption names none; those rows are left out).
    """
    if not before.shape == after.shape == wanted.shape or before.ndim != 2:
        raise ValueError(
            f"paired predictions need equal [N, 2] shapes, got {before.shape}, {after.shape}, "
            f"{wanted.shape}"
        )
    out: dict[str, float] = {}
    for j, name in enumerate(ATTRIBUTES):
        ok = wanted[:, j] >= 0
        right_before = before[ok, j] == wanted[ok, j]
        right_after = after[ok, j] == wanted[ok, j]
        lost = int((right_before & ~right_after).sum())
        won = int((~right_before & right_after).sum())
        out[f"{name}_lost"] = float(lost)
        out[f"{name}_won"] = float(won)
        out[f"{name}_sign_p"] = sign_test_p(won, lost)
    return out


@dataclass(frozen=True)
class Predictions:
    """The attribute predictions of one evaluation, and what they were made on."""

    attributes: np.ndarray  # [N, 2] predicted (body, wing)
    image_index: np.ndarray  # [N] test-index row of each request
    caption_index: np.ndarray  # [N] caption of that row
    protocol: dict  # the evaluation protocol (captions, noise seed, EMA)


def read_predictions(cache: Path) -> Predictions | None:
    """The predictions in an evaluation's ``activations.h5``; None when it holds none (the
    evaluation ran without the attribute classifier)."""
    if not cache.is_file():
        raise FileNotFoundError(f"{cache}: no activation cache (run the evaluation first)")
    with h5py.File(cache, "r") as h5:
        if "attributes" not in h5:
            return None
        missing = [k for k in ("image_index", "caption_index") if k not in h5]
        if missing or "meta" not in h5.attrs:
            raise ValueError(
                f"{cache}: no {', '.join(missing) or 'meta attribute'} (not an activation cache?)"
            )
        return Predictions(
            h5["attributes"][:],
            h5["image_index"][:],
            h5["caption_index"][:],
            json.loads(h5.attrs["meta"]).get("protocol", {}),
        )


def compare_evaluations(before: Path, after: Path, index: Path) -> dict[str, float] | None:
    """Paired changes from the evaluation cache ``before`` to ``after``, with the labels of
    ``index``'s captions; None when either has no attribute predictions."""
    from stackgan.data.index import SplitIndex

    first, second = read_predictions(before), read_predictions(after)
    if first is None or second is None:
        return None
    same = (
        first.protocol == second.protocol
        and np.array_equal(first.image_index, second.image_index)
        and np.array_equal(first.caption_index, second.caption_index)
    )
    if not same:
        raise ValueError(
            f"{before} and {after} were made with different evaluation protocols or captions; "
            "a paired comparison needs the same captions and noise for both"
        )
    with SplitIndex(index) as idx:
        if first.image_index.size and int(first.image_index.max()) >= idx.num_images:
            raise ValueError(
                f"{index}: {idx.num_images} images, but {before} uses row "
                f"{int(first.image_index.max())} (another test index?)"
            )
        captions = idx.caption_pairs(first.image_index, first.caption_index)
    return paired_changes(first.attributes, second.attributes, attribute_labels(captions))


__all__ = [
    "Predictions",
    "compare_evaluations",
    "paired_changes",
    "read_predictions",
    "sign_test_p",
]
