"""``stackgan generate``: PNGs and a grid from a generator file and text embeddings.

    stackgan generate --network results/demo/stage2/network-final.pt \\
        --embeddings results/data/twin/shards/test-index.h5 --limit 8 --out samples/

Embeddings come from an HDF5 index (``embeddings`` [N, 10, D]; pick captions with
``--caption``) or a ``.npy`` file of shape [N, D] or [N, 10, D]. The same arguments
always give the same images (fixed seeds, generator in eval mode).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stackgan.checkpoint import CheckpointError
from stackgan.fileio import atomic_path, write_json
from stackgan.grids import make_grid, save_png, to_uint8
from stackgan.sampling import Sampler, iterate_samples


def load_embeddings(
    path: Path, caption: int | None, limit: int | None
) -> tuple[torch.Tensor, list[str]]:
    """Embeddings [N, D] and a label per row, from an HDF5 index or a .npy file."""
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as h5:
            n = (
                h5["embeddings"].shape[0]
                if limit is None
                else min(limit, h5["embeddings"].shape[0])
            )
            emb = h5["embeddings"][:n]
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in h5["keys"][:n]]
    elif path.suffix == ".npy":
        emb = np.load(path, allow_pickle=False)
        emb = emb[:limit] if limit is not None else emb
        keys = [f"row{i}" for i in range(emb.shape[0])]
    else:
        raise ValueError(f"{path}: expected an HDF5 index (.h5) or a .npy array")
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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Generate images deterministically."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--network", type=Path, required=True, help="network file of Stage-I or Stage-II"
    )
    p.add_argument(
        "--embeddings", type=Path, required=True, help="HDF5 index (.h5) or .npy embeddings"
    )
    p.add_argument("--out", type=Path, required=True, help="output directory for PNGs and grid.png")
    p.add_argument(
        "--caption",
        type=int,
        default=0,
        help="caption index for [N, 10, D] inputs (-1: mean of all)",
    )
    p.add_argument("--limit", type=int, help="use only the first N embeddings")
    p.add_argument("--samples", type=int, default=1, help="images per embedding (different noise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--no-ema", action="store_true", help="use G even if the file has an EMA generator"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        sampler = Sampler.load(args.network, use_ema=not args.no_ema, device=args.device)
        emb, labels = load_embeddings(
            args.embeddings, None if args.caption < 0 else args.caption, args.limit
        )
    except (CheckpointError, ValueError, OSError, KeyError) as err:
        print(f"stackgan generate: {err}", file=sys.stderr)
        return 2
    if emb.shape[1] != sampler.model.text_dim:
        print(
            f"stackgan generate: embeddings have dimension {emb.shape[1]}, "
            f"the network expects {sampler.model.text_dim}",
            file=sys.stderr,
        )
        return 2
    requests = emb.repeat_interleave(args.samples, dim=0)  # [N * samples, D]
    images = []
    args.out.mkdir(parents=True, exist_ok=True)
    for start, _stop, out in iterate_samples(
        sampler, requests, batch_size=args.batch_size, seed=args.seed, device=args.device
    ):
        tiles = to_uint8(out.final)
        for j, tile in enumerate(tiles):
            i, s = divmod(start + j, args.samples)
            with atomic_path(args.out / f"{i:05d}_{s}.png") as tmp:
                Image.fromarray(tile).save(tmp, format="PNG")
        images.append(out.final.cpu())
    grid = make_grid(
        torch.cat(images), ncol=args.samples if args.samples > 1 else min(8, len(requests))
    )
    save_png(grid, args.out / "grid.png")
    write_json(
        args.out / "generate.json",
        {
            "network": sampler.meta,
            "embeddings": str(args.embeddings),
            "rows": labels,
            "samples": args.samples,
            "seed": args.seed,
            "batch_size": args.batch_size,
        },
    )
    print(f"wrote {len(requests)} images and grid.png to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
