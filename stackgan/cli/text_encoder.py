"""``stackgan text-encoder``: prepare text encoders.

    stackgan text-encoder convert \\
        --t7 lm_sje_nc4_cub_hybrid_gru18_a1_c512_0.00070_1_10_trainvalids.txt_iter30000.t7 \\
        --out char-cnn-rnn-cub.pt
    stackgan embed --encoder char-cnn-rnn:char-cnn-rnn-cub.pt --text "..." --out emb.npy

``convert`` reads the Torch7 file of the Reed et al. char-CNN-RNN (with ``torchfile``, which
only reads data and never runs code), checks every module's type, names and shapes, and
writes a ``stackgan-text-encoder/1`` file (loads with ``torch.load(weights_only=True)``)
that records the source file's sha256. Nothing else ever reads a ``.t7``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stackgan.cli.common import run_command

NAME = "stackgan text-encoder"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan text-encoder`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert the char-CNN-RNN .t7 into a safe weights file")
    c.add_argument("--t7", type=Path, required=True, help="the Torch7 file")
    c.add_argument("--out", type=Path, required=True, help="the converted file (.pt)")
    return p


def _convert(args: argparse.Namespace) -> int:
    from stackgan.text.t7_convert import convert_t7

    if not args.t7.is_file():
        raise ValueError(f"--t7 {args.t7}: not found")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = convert_t7(args.t7, args.out)
    arch = done["arch"]
    print(f"converted {done['source_name']} (sha256 {done['source_sha256']})")
    print(f"  -> {done['path']} (sha256 {done['sha256']}); embedding dim {arch.get('emb_dim')}")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan text-encoder``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    return run_command(NAME, lambda: _convert(args))


if __name__ == "__main__":
    raise SystemExit(main())
