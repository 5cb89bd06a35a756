"""``stackgan embed``: text embeddings of your own sentences, for ``stackgan generate``.

    stackgan embed --encoder twin --text "a small bird with red wings and a blue belly." \\
        --text "this large bird has a yellow body and black wings." --out emb.npy
    stackgan embed --encoder twin --text-file captions.txt --out emb.npy

Writes ``emb.npy`` (float32 [N, D], one row per caption, in order) and ``emb.json`` beside
it: the encoder's name, version and sha256, and the captions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stackgan.cli.common import run_command

NAME = "stackgan embed"


def add_text_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--text``/``--text-file`` and ``--encoder`` (shared with ``stackgan generate``)."""
    p.add_argument(
        "--text", action="append", default=[], metavar="CAPTION", help="a caption (repeatable)"
    )
    p.add_argument("--text-file", type=Path, help="a UTF-8 file, one caption per line")
    p.add_argument(
        "--encoder",
        default="twin" if not required else None,
        required=required,
        help="text encoder: twin (the synthetic twin's), or char-cnn-rnn:PATH (a converted file)",
    )


def read_captions(args: argparse.Namespace) -> list[str]:
    """The captions of ``--text`` then ``--text-file``, checked."""
    from stackgan.text.encoder import check_captions, read_caption_file

    captions = list(args.text)
    if args.text_file is not None:
        captions += read_caption_file(str(args.text_file))
    return check_captions(captions, "--text/--text-file")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan embed`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_text_arguments(p, required=True)
    p.add_argument("--out", type=Path, required=True, help="output .npy (a .json sidecar beside)")
    return p


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    from stackgan.fileio import atomic_open, write_json
    from stackgan.text.encoder import encoder_metadata, load_encoder

    if args.out.suffix != ".npy":
        raise ValueError(f"--out {args.out}: expected a .npy file name")
    encoder = load_encoder(args.encoder)
    captions = read_captions(args)
    emb = encoder.encode(captions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "wb") as fh:
        np.save(fh, emb)
    sidecar = args.out.with_suffix(".json")
    write_json(sidecar, {"encoder": encoder_metadata(encoder), "captions": captions,
                         "shape": list(emb.shape), "dtype": str(emb.dtype)})  # fmt: skip
    print(
        f"embedded {len(captions)} caption(s) with {encoder.name} -> {args.out} (+ {sidecar.name})"
    )
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan embed``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    return run_command(NAME, lambda: _embed(args))


if __name__ == "__main__":
    raise SystemExit(main())
