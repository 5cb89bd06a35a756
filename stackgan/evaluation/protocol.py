"""Evaluation protocol: generation over the test captions, activation caches, metrics, grids.

Protocol (StackGAN-v2 / StackGAN++ style): every caption of every test image yields one
image -- 2,933 x 10 = 29,330 for CUB -- in image-major order, from a network file in
eval mode with fixed seeds (chunked as in :mod:`stackgan.sampling`, so any number of
ranks gives the same images). Ranks generate disjoint chunks and write part files;
rank 0 merges them, checks that every request was produced exactly once and writes
one activation cache per generator file.

Real-image statistics (features of the test images at 256 px: the centre 256 crop of
the 304 px load size) are computed once into an HDF5 file that the workflow declares
as an output; metrics are computed from the two caches, so they can be recomputed
without regenerating.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from stackgan import distributed as dist_utils
from stackgan.data import format as fmt
from stackgan.data.imagesets import iter_real_images
from stackgan.fileio import atomic_path, sha256_file
from stackgan.grids import captioned_grid
from stackgan.sampling import Sampler, chunks, shard_chunks

log = logging.getLogger(__name__)

CACHE_FORMAT = "stackgan-activations/1"
REAL_FORMAT = "stackgan-real-stats/1"


@dataclass(frozen=True)
class Protocol:
    """What determines the generated evaluation set."""

    captions_per_image: int = 10
    max_images: int | None = None  # None: every test image
    batch_size: int = 64
    seed: int = 100
    use_ema: bool = True


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
    with h5py.File(index_path, "r") as h5:
        n_images = (
            h5["embeddings"].shape[0]
            if protocol.max_images is None
            else min(protocol.max_images, h5["embeddings"].shape[0])
        )
        n_caps = h5["embeddings"].shape[1]
        if protocol.captions_per_image > n_caps:
            raise ValueError(
                f"{index_path}: {n_caps} captions per image, "
                f"protocol wants {protocol.captions_per_image}"
            )
        emb = h5["embeddings"][:n_images, : protocol.captions_per_image]  # [n, k, D]
        captions = h5["captions"][:n_images, : protocol.captions_per_image]
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in h5["keys"][:n_images]]
    k = protocol.captions_per_image
    return Requests(
        embeddings=torch.from_numpy(
            np.ascontiguousarray(emb.reshape(n_images * k, -1), dtype=np.float32)
        ),
        image_index=np.repeat(np.arange(n_images), k),
        caption_index=np.tile(np.arange(k), n_images),
        captions=[c.decode() if isinstance(c, bytes) else str(c) for c in captions.reshape(-1)],
        keys=[key for key in keys for _ in range(k)],
    )


# --------------------------------------------------------------------------- generation


def _part_path(part_dir: Path, rank: int) -> Path:
    return part_dir / f".activations.rank{rank}.h5"


def generate_activations(
    sampler: Sampler,
    requests: Requests,
    protocol: Protocol,
    *,
    extractor: torch.nn.Module | None,
    classifier: torch.nn.Module | None,
    part_dir: Path,
    info: dist_utils.DistInfo,
    progress: bool = True,
) -> dict[str, np.ndarray] | None:
    """Generate this rank's chunks and run the extractor/classifier on them.

    Returns the merged arrays on rank 0 (``None`` elsewhere): ``features``, ``logits``
    (when an extractor is given), ``attributes`` (when a classifier is given) and
    ``request`` (the request index of each row, which must be 0..N-1).
    """
    from tqdm import tqdm

    device = info.device
    sampler.to(device)
    mine = shard_chunks(len(requests), protocol.batch_size, info.rank, info.world_size)
    rows: dict[str, list[np.ndarray]] = {
        "request": [],
        "features": [],
        "logits": [],
        "attributes": [],
    }
    bar = tqdm(
        total=sum(b - a for _, (a, b) in mine),
        desc=f"generate (rank {info.rank})",
        unit="img",
        disable=not (progress and info.is_main),
    )
    for chunk, (start, stop) in mine:
        emb = requests.embeddings[start:stop].to(device)
        images = sampler.sample_chunk(emb, chunk, protocol.seed).final.float()
        rows["request"].append(np.arange(start, stop))
        if extractor is not None:
            with torch.no_grad():
                f, lg = extractor(images)
            rows["features"].append(f.float().cpu().numpy())
            rows["logits"].append(lg.float().cpu().numpy())
        if classifier is not None:
            from stackgan.metrics.conditional import predict

            rows["attributes"].append(predict(classifier, images.cpu()))
        bar.update(stop - start)
    bar.close()
    part_dir.mkdir(parents=True, exist_ok=True)
    part = _part_path(part_dir, info.rank)
    with atomic_path(part) as tmp, h5py.File(tmp, "w") as h5:
        for key, values in rows.items():
            if values:
                h5.create_dataset(key, data=np.concatenate(values))
    dist_utils.barrier()
    if not info.is_main:
        return None
    merged: dict[str, list[np.ndarray]] = {}
    for rank in range(info.world_size):
        path = _part_path(part_dir, rank)
        with h5py.File(path, "r") as h5:
            for key in h5:
                merged.setdefault(key, []).append(h5[key][:])
        path.unlink()
    order = np.argsort(np.concatenate(merged["request"]), kind="stable")
    out = {key: np.concatenate(parts)[order] for key, parts in merged.items()}
    if not np.array_equal(out["request"], np.arange(len(requests))):
        raise RuntimeError(
            f"evaluation coverage broken: got {len(out['request'])} rows "
            f"for {len(requests)} requests "
            f"({len(np.unique(out['request']))} distinct)"
        )
    return out


def write_cache(
    path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], requests: Requests
) -> None:
    """Activation cache of one generator file (HDF5, written atomically)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for key, value in arrays.items():
            h5.create_dataset(
                key,
                data=value,
                compression="lzf" if value.ndim == 2 and value.shape[1] > 8 else None,
            )
        h5.create_dataset("image_index", data=requests.image_index)
        h5.create_dataset("caption_index", data=requests.caption_index)
        h5.attrs["format"] = CACHE_FORMAT
        h5.attrs["meta"] = json.dumps(meta, sort_keys=True)


def read_cache(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The cached arrays if ``path`` exists and was made with exactly ``meta``; else None."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != CACHE_FORMAT or json.loads(h5.attrs["meta"]) != json.loads(
                json.dumps(meta, sort_keys=True)
            ):
                log.info("activation cache %s was made with other settings: regenerating", path)
                return None
            return {key: h5[key][:] for key in h5 if key not in ("image_index", "caption_index")}
    except (OSError, KeyError, ValueError) as err:
        log.warning("unreadable activation cache %s (%s): regenerating", path, err)
        return None


# --------------------------------------------------------------------------- real images


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


# --------------------------------------------------------------------------- grids


@torch.no_grad()
def evaluation_grid(
    sampler: Sampler, requests: Requests, n_captions: int, n_samples: int, seed: int
) -> np.ndarray:
    """Fixed test captions x ``n_samples``; Stage-I | Stage-II per row.

    Caption 0 of ``n_captions`` images spread evenly over the requests (the index is in
    class order, so the first images would all show one species).
    """
    zeros = [i for i in range(len(requests)) if requests.caption_index[i] == 0]
    picks = np.unique(np.linspace(0, len(zeros) - 1, min(n_captions, len(zeros))).round())
    first = [zeros[int(k)] for k in picks]
    rows, captions = [], []
    for j, i in enumerate(first):
        emb = requests.embeddings[i : i + 1].repeat(n_samples, 1)
        out = sampler.sample_chunk(emb.to(next(sampler.parameters()).device), 10_000 + j, seed)
        groups = [out.final.cpu()] if sampler.stage == 1 else [out.stage1.cpu(), out.final.cpu()]
        rows.append(groups)
        label = (
            f"Stage-I x{n_samples}"
            if sampler.stage == 1
            else (
                f"left: Stage-I (64 px, upsampled) x{n_samples} | "
                f"right: Stage-II (256 px) x{n_samples}"
            )
        )
        captions.append(f"{requests.captions[i] or requests.keys[i]}   [{label}]")
    return captioned_grid(rows, captions, tile=128 if sampler.stage == 2 else 96)


__all__ = [
    "Protocol",
    "Requests",
    "chunks",
    "evaluation_grid",
    "generate_activations",
    "iter_real_images",
    "load_requests",
    "read_cache",
    "read_real_stats",
    "write_cache",
    "write_real_stats",
]
