"""``stackgan summary``: parameter counts and FLOPs of the networks of an architecture preset.

The numbers come from :mod:`stackgan.summary`; this module parses the options and prints
them as tables or JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from stackgan.cli.common import EXIT_USAGE, run_command
from stackgan.config import ConfigError, ModelConfig

#: the widths ``--<name>`` can override (argparse turns ``gf-dim`` into ``gf_dim``)
WIDTHS = ("gf-dim", "df-dim", "cond-dim", "d-text-dim", "z-dim", "text-dim", "r-num")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan summary`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Parameter counts and FLOPs of the StackGAN networks of a preset.",
    )
    p.add_argument("--arch", choices=["paper", "pytorch"], default="paper")
    for name in WIDTHS:
        p.add_argument(f"--{name}", type=int, default=None, help="override the preset default")
    p.add_argument("--batch", type=int, default=2, help="batch the FLOPs are counted on")
    p.add_argument("--g-step-fakes", choices=["reuse", "redraw"], default="reuse")
    p.add_argument(
        "--device",
        choices=["meta", "cpu"],
        default="meta",
        help="meta counts from shapes only (instant); cpu really runs the networks",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return p


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The preset's :class:`ModelConfig` with the given width overrides.

    With ``--arch pytorch`` D is conditioned on mu, so ``d_text_dim`` follows ``--cond-dim``
    unless given itself.
    """
    overrides = {
        key: getattr(args, key)
        for key in (name.replace("-", "_") for name in WIDTHS)
        if getattr(args, key) is not None
    }
    if args.arch == "pytorch" and "cond_dim" in overrides:
        overrides.setdefault("d_text_dim", overrides["cond_dim"])  # D is conditioned on mu
    return ModelConfig(arch=args.arch, **overrides)


def _print_summary(args: argparse.Namespace, model_cfg: ModelConfig) -> int:
    from stackgan.summary import format_summary, summarize

    result = summarize(model_cfg, args.batch, g_step_fakes=args.g_step_fakes, device=args.device)
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan summary``: print parameter counts and FLOPs; returns the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        model_cfg = model_config(args)
        if args.batch < 2:
            raise ConfigError(f"--batch: must be >= 2, got {args.batch}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return run_command(parser.prog, lambda: _print_summary(args, model_cfg))


if __name__ == "__main__":
    raise SystemExit(main())
