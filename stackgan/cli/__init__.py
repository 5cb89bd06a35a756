"""``stackgan`` command: one sub-command per task, one module per command in this package.

Every command module ``stackgan.cli.<command>`` exposes ``main(argv, prog) -> int`` and builds
its own ``argparse`` parser, so ``stackgan <command> --help`` and
``python -m stackgan.cli.<command> --help`` agree. The command modules hold argument parsing
and error reporting only; the work is done by library functions. Modules are imported lazily
so that ``stackgan --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-twin": (
        "stackgan.cli.make_twin",
        "write a synthetic CUB twin in the real on-disk layout",
    ),
    "validate-data": (
        "stackgan.cli.validate_data",
        "check a CUB + birds-bundle tree and print a summary",
    ),
    "build-shards": (
        "stackgan.cli.build_shards",
        "crop, resize and write WebDataset shards + HDF5 index",
    ),
    "summary": ("stackgan.cli.summary", "parameter counts and FLOPs of both architecture presets"),
    "train": ("stackgan.cli.train", "train one stage (single process, torchrun or srun)"),
    "embed": (
        "stackgan.cli.embed",
        "text embeddings of your own sentences (.npy + encoder record)",
    ),
    "generate": (
        "stackgan.cli.generate",
        "images and a grid from a generator file and embeddings or sentences",
    ),
    "text-encoder": (
        "stackgan.cli.text_encoder",
        "convert the char-CNN-RNN .t7 into a safe weights file",
    ),
    "serve": ("stackgan.cli.serve", "a local web page: your caption in, Stage-I/II birds out"),
    "evaluate": ("stackgan.cli.evaluate", "IS / FID / KID, sample grids and conditional accuracy"),
    "attr-classifier": (
        "stackgan.cli.attr_classifier",
        "train the twin colour classifier used by the conditional-accuracy score",
    ),
    "track": (
        "stackgan.cli.track",
        "manage the pipeline's parent MLflow run (start/summary/finish/check)",
    ),
    "runs": ("stackgan.cli.runs", "compare MLflow runs: params x final metrics"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: stackgan <command> [options]",
        "",
        "StackGAN pipeline commands (run `stackgan <command> --help` for details):",
        "",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``stackgan <command> ...`` to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from stackgan import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"stackgan: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest, prog=f"stackgan {name}") or 0)
