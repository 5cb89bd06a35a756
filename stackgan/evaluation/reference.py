"""The real-image reference: features of the test images, and the extractor that makes them.

Real-image statistics (features of the test images at 256 px: the centre 256 crop of the
304 px load size) are computed once into an HDF5 file that the workflow declares as an
output (``stackgan evaluate real-stats``); FID and KID compare a generator's activation
cache with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stackgan.data import format as fmt
from stackgan.data.imagesets import iter_real_images
from stackgan.fileio import atomic_path, sha256_file

REAL_FORMAT = "stackgan-real-stats/1"

#: why IS/FID/KID are skipped when no extractor weights are given
NO_WEIGHTS_REASON = (
    "no Inception weights given (--inception-weights / eval.inception_weights); they cannot be "
    "downloaded at run time. Put pt_inception-2015-12-05-6726825d.pth on local disk "
    "and point to it."
)


@dataclass(frozen=True)
class ExtractorSpec:
    """Which feature extractor to use (``test_extractor`` wins; no weights: none)."""

    inception_weights: Path | None = None
    inception_sha256: str | None = None  # None: check the 6726825d prefix
    cub_classifier: Path | None = None  # CUB-fine-tuned Inception for the StackGAN IS
    test_extractor: bool = False  # TEST ONLY: small random network, meaningless numbers


def build_extractor(spec: ExtractorSpec) -> Any | None:
    """The feature extractor named by ``spec``, or None (metrics skipped)."""
    from stackgan.metrics.extractors import InceptionExtractor, TestExtractor

    if spec.test_extractor:
        return TestExtractor(seed=0)
    if spec.inception_weights is None:
        return None
    return InceptionExtractor.from_files(
        spec.inception_weights, fid_sha256=spec.inception_sha256, cub_weights=spec.cub_classifier
    )


def write_real_stats(
    path: Path, set_dir: str | Path, extractor: Any, batch_size: int = 64
) -> dict[str, Any]:
    """Features of the real images of a 256 set, with mu and Sigma, into ``path`` (HDF5)."""
    from stackgan.metrics.extractors import extract
    from stackgan.metrics.scores import feature_statistics

    feats, logits = extract(extractor, iter_real_images(set_dir, 256, batch_size), batch_size)
    mu, sigma = feature_statistics(feats)
    manifest = fmt.read_manifest(set_dir)
    meta = {
        **extractor.metadata(),
        "image_size": 256,
        "crop": "centre 256 of the 304 load size",
        "split": manifest["split"],
        "count": int(feats.shape[0]),
        "shard_manifest_sha256": sha256_file(Path(set_dir) / fmt.MANIFEST),
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset(
            "features",
            data=feats,
            chunks=(min(256, max(1, feats.shape[0])), feats.shape[1]),
            compression="lzf",
        )
        h5.create_dataset("logits", data=logits)
        h5.create_dataset("mu", data=mu)
        h5.create_dataset("sigma", data=sigma)
        h5.attrs["format"] = REAL_FORMAT
        for key, value in meta.items():
            h5.attrs[key] = "" if value is None else value
    return meta


def read_real_stats(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(features, metadata) of a real-statistics file."""
    with h5py.File(path, "r") as h5:
        if h5.attrs.get("format") != REAL_FORMAT:
            raise ValueError(
                f"{path}: not a real-statistics file (format {h5.attrs.get('format')!r})"
            )
        meta = {
            k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items() if k != "format"
        }
        return h5["features"][:], meta


__all__ = [
    "NO_WEIGHTS_REASON",
    "REAL_FORMAT",
    "ExtractorSpec",
    "build_extractor",
    "read_real_stats",
    "write_real_stats",
]
