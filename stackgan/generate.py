"""PNGs and a grid from a generator file and text embeddings (``stackgan generate``).

Embeddings come from an HDF5 index (``embeddings`` [N, 10, D], read with
:class:`~stackgan.data.index.SplitIndex`; pick captions with ``caption``) or a ``.npy``
file of shape [N, D] or [N, 10, D]. The same arguments always give the same images
(fixed seeds, generator in eval mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stackgan.data.index import SplitIndex
from stackgan.fileio import atomic_path, write_json
from stackgan.grids import captioned_grid, make_grid, save_png, to_uint8
from stackgan.sampling import Sampler, iterate_samples


def _read_rows(path: Path, limit: int | None) -> tuple[np.ndarray, list[str]]:
    """The first ``limit`` (all if None) embedding rows of ``path`` and their labels."""
    if path.suffix in (".h5", ".hdf5"):
        with SplitIndex(path) as index:
            n = index.num_images if limit is None else min(limit, index.num_images)
            return index.embeddings(slice(None, n)), index.keys(n)
    if path.suffix == ".npy":
        emb = np.load(path, allow_pickle=False)
        emb = emb[:limit] if limit is not None else emb
        return emb, [f"row{i}" for i in range(emb.shape[0])]
    raise ValueError(f"{path}: expected an HDF5 index (.h5) or a .npy array")


def load_embeddings(
    path: Path, caption: int | None, limit: int | None
) -> tuple[torch.Tensor, list[str]]:
    """Embeddings [N, D] and a label per row, from an HDF5 index or a .npy file.

    [N, captions, D] inputs give caption ``caption`` of each row, or the mean of all
    captions when ``caption`` is None.
    """
    emb, keys = _read_rows(path, limit)
    if emb.ndim == 3:
        if caption is None:
            emb = emb.mean(axis=1)
            keys = [f"{k} (mean of all captions)" for k in keys]
        else:
            if not 0 <= caption < emb.shape[1]:
                raise ValueError(
                    f"--caption {caption}: the embeddings have {emb.shape[1]} captions per image"
                )
            emb = emb[:, caption]
            keys = [f"{k} caption {caption}" for k in keys]
    if emb.ndim != 2:
        raise ValueError(f"{path}: embeddings must be [N, D] or [N, captions, D], got {emb.shape}")
    return torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)), keys


def write_images(
    sampler: Sampler,
    embeddings: torch.Tensor,
    out_dir: Path,
    *,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    labels: Sequence[str] | None = None,
) -> int:
    """``<row>_<sample>.png`` for ``samples`` images per embedding row, and ``grid.png``
    (with ``labels``: one row per embedding with its label, e.g. the caption, underneath).

    Returns the number of images written (``len(embeddings) * samples``).

    Raises:
        ValueError: the embeddings' dimension is not the network's.
    """
    if embeddings.shape[1] != sampler.model.text_dim:
        raise ValueError(
            f"embeddings have dimension {embeddings.shape[1]}, "
            f"the network expects {sampler.model.text_dim}"
        )
    requests = embeddings.repeat_interleave(samples, dim=0)  # [N * samples, D]
    images = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for start, _stop, out in iterate_samples(
        sampler, requests, batch_size=batch_size, seed=seed, device=device
    ):
        tiles = to_uint8(out.final)
        for j, tile in enumerate(tiles):
            i, s = divmod(start + j, samples)
            with atomic_path(out_dir / f"{i:05d}_{s}.png") as tmp:
                Image.fromarray(tile).save(tmp, format="PNG")
        images.append(out.final.cpu())
    every = torch.cat(images)  # [N * samples, 3, S, S]
    if labels is not None:  # one row per embedding, its label (the caption) underneath
        per_row = every.view(len(embeddings), samples, *every.shape[1:])
        grid = captioned_grid([[per_row[i]] for i in range(len(embeddings))], list(labels))
    else:
        grid = make_grid(every, ncol=samples if samples > 1 else min(8, len(requests)))
    save_png(grid, out_dir / "grid.png")
    return len(requests)


def generate(
    sampler: Sampler,
    embeddings: torch.Tensor,
    labels: list[str],
    out_dir: Path,
    *,
    source: str,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
) -> int:
    """:func:`write_images`, then ``generate.json`` recording the network, rows and seeds.

    ``source`` is where the embeddings came from (recorded as given). Returns the number
    of images written.
    """
    count = write_images(
        sampler,
        embeddings,
        out_dir,
        samples=samples,
        seed=seed,
        batch_size=batch_size,
        device=device,
        labels=labels,
    )
    write_json(
        out_dir / "generate.json",
        {
            "network": sampler.meta,
            "embeddings": source,
            "rows": labels,
            "samples": samples,
            "seed": seed,
            "batch_size": batch_size,
        },
    )
    return count
