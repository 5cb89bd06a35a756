"""``stackgan generate``: PNGs and a grid from a generator file and text embeddings.

    stackgan generate --network results/demo/stage2/network-final.pt \\
        --embeddings results/data/twin-<key>/shards/test-index.h5 --limit 8 --out samples/
    # your own sentences, embedded by a text encoder (twin: the demo's encoder)
    stackgan generate --network results/demo/stage2/network-final.pt --encoder twin \\
        --text "a small bird with red wings and a blue belly." --samples 4 --out mine/

Embeddings come from an HDF5 index (``embeddings`` [N, 10, D]; pick captions with
``--caption``) or a ``.npy`` file of shape [N, D] or [N, 10, D]. The same arguments
always give the same images (fixed seeds, generator in eval mode).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stackgan.cli.common import run_command
from stackgan.cli.embed import add_text_arguments, read_captions

#: the message prefix of this command's errors
NAME = "stackgan generate"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan generate`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--network", type=Path, required=True, help="network file of Stage-I or Stage-II"
    )
    p.add_argument("--embeddings", type=Path, help="HDF5 index (.h5) or .npy embeddings")
    add_text_arguments(p, required=False)
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
    return p


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, list[str], str]:
    """Embeddings, row labels and their source: an embeddings file, or sentences."""
    from stackgan.generate import load_embeddings

    has_text = bool(args.text) or args.text_file is not None
    if (args.embeddings is None) == (not has_text):
        raise ValueError("give either --embeddings or --text/--text-file (not both)")
    if args.embeddings is not None:
        emb, labels = load_embeddings(
            args.embeddings, None if args.caption < 0 else args.caption, args.limit
        )
        return emb, labels, str(args.embeddings)
    from stackgan.text.encoder import load_encoder

    encoder = load_encoder(args.encoder)
    captions = read_captions(args)[: args.limit]
    emb = torch.from_numpy(encoder.encode(captions))
    return emb, captions, f"text encoder {encoder.name} v{encoder.version} ({encoder.sha256})"


def _generate(args: argparse.Namespace) -> int:
    from stackgan.generate import generate
    from stackgan.sampling import Sampler

    emb, labels, source = _inputs(args)
    sampler = Sampler.load(args.network, use_ema=not args.no_ema, device=args.device)
    count = generate(
        sampler,
        emb,
        labels,
        args.out,
        source=source,
        samples=args.samples,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"wrote {count} images and grid.png to {args.out}")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan generate``: write images deterministically; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    return run_command(NAME, lambda: _generate(args))


if __name__ == "__main__":
    raise SystemExit(main())
