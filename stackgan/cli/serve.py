"""``stackgan serve``: a local web page that turns your captions into birds.

    stackgan serve --network results/demo/stage2/network-final.pt --encoder twin
    # then open http://127.0.0.1:8000

The page has a caption box, the number of samples and a seed, and shows the Stage-I and
Stage-II images of each sample side by side; ``POST /api/generate`` is the same as JSON
(see stackgan/serve.py). It binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from stackgan.cli.common import run_command

NAME = "stackgan serve"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan serve`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--network", type=Path, required=True, help="a Stage-I or Stage-II network")
    p.add_argument("--encoder", default="twin", help="text encoder (twin)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-ema", action="store_true", help="use G even if there is an EMA G")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    return p


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from stackgan.sampling import Sampler
    from stackgan.serve import build_app
    from stackgan.text.encoder import load_encoder

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    encoder = load_encoder(args.encoder)
    sampler = Sampler.load(args.network, use_ema=not args.no_ema)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{NAME}: binding to {args.host}: the page is reachable from other machines",
              file=sys.stderr)  # fmt: skip
    print(f"{NAME}: {args.network} (stage {sampler.stage}) with encoder {encoder.name}; "
          f"open http://{args.host}:{args.port}", flush=True)  # fmt: skip
    uvicorn.run(build_app(sampler, encoder), host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan serve``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    return run_command(NAME, lambda: _serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
