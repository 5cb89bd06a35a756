"""Generated images -> activations (features, logits, attribute predictions), and their cache.

Ranks generate disjoint chunks of the requests and write part files; rank 0 merges them,
checks that every request was produced exactly once and writes one activation cache per
generator file. Metrics are computed from the cache, so they can be recomputed without
regenerating.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from stackgan import distributed as dist_utils
from stackgan.evaluation.protocol import Protocol, Requests
from stackgan.fileio import atomic_path
from stackgan.sampling import Sampler, shard_chunks

log = logging.getLogger(__name__)

CACHE_FORMAT = "stackgan-activations/1"


def _part_path(part_dir: Path, rank: int) -> Path:
    return part_dir / f".activations.rank{rank}.h5"


def _generate_rows(
    sampler: Sampler,
    requests: Requests,
    protocol: Protocol,
    extractor: torch.nn.Module | None,
    classifier: torch.nn.Module | None,
    info: dist_utils.DistInfo,
    progress: bool,
) -> dict[str, list[np.ndarray]]:
    """This rank's chunks: request indices and the extractor's/classifier's outputs."""
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
            from stackgan.evaluation.attributes.model import predict

            rows["attributes"].append(predict(classifier, images.cpu()))
        bar.update(stop - start)
    bar.close()
    return rows


def _merge_parts(part_dir: Path, world_size: int, n_requests: int) -> dict[str, np.ndarray]:
    """Every rank's part file, in request order (the part files are removed)."""
    merged: dict[str, list[np.ndarray]] = {}
    for rank in range(world_size):
        path = _part_path(part_dir, rank)
        with h5py.File(path, "r") as h5:
            for key in h5:
                merged.setdefault(key, []).append(h5[key][:])
        path.unlink()
    order = np.argsort(np.concatenate(merged["request"]), kind="stable")
    out = {key: np.concatenate(parts)[order] for key, parts in merged.items()}
    if not np.array_equal(out["request"], np.arange(n_requests)):
        raise RuntimeError(
            f"evaluation coverage broken: got {len(out['request'])} rows "
            f"for {n_requests} requests "
            f"({len(np.unique(out['request']))} distinct)"
        )
    return out


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
    rows = _generate_rows(sampler, requests, protocol, extractor, classifier, info, progress)
    part_dir.mkdir(parents=True, exist_ok=True)
    part = _part_path(part_dir, info.rank)
    with atomic_path(part) as tmp, h5py.File(tmp, "w") as h5:
        for key, values in rows.items():
            if values:
                h5.create_dataset(key, data=np.concatenate(values))
    dist_utils.barrier()
    if not info.is_main:
        return None
    return _merge_parts(part_dir, info.world_size, len(requests))


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


__all__ = ["CACHE_FORMAT", "generate_activations", "read_cache", "write_cache"]
