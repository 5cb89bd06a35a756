"""Collect a pipeline run's training and evaluation metrics into summary.json.

    python -m pipeline.summarize --run demo --preset demo --train stage1/metrics.json ... \\
        --eval eval/stage1/metrics.json ... --out summary.json

``summary.json`` has a flat ``metrics`` mapping (``stage2.fid``, ``stage1.train.loss_d``,
...) that ``stackgan track log-summary`` puts on the MLflow parent run. With ``--index`` (the
test index) and both stages evaluated with the attribute classifier, it also holds the paired
comparison of Stage-II with Stage-I on the same captions and noise: ``stage2.vs_stage1.body_lost``
(right in Stage-I, wrong in Stage-II), ``..._won`` and ``..._sign_p`` (exact sign test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stackgan.evaluation.attributes.paired import compare_evaluations
from stackgan.fileio import write_json

TRAIN_KEYS = ("loss_d", "loss_g", "kl", "d_real", "d_wrong", "d_fake", "img_per_s")


def collect(
    train_files: list[Path], eval_files: list[Path]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Flat metrics and per-stage details from the stages' JSON files."""
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    for path in train_files:
        data = json.loads(path.read_text())
        stage = f"stage{data['stage']}"
        final = data.get("final_metrics", {})
        for key in TRAIN_KEYS:
            if key in final:
                metrics[f"{stage}.train.{key}"] = float(final[key])
        metrics[f"{stage}.train.steps"] = float(data["steps"])
        history = data.get("eval_history") or []
        if history:  # the last in-training evaluation point (eval.* on test captions)
            for key, value in history[-1].items():
                if key.startswith("eval.") and key != "eval.seconds":
                    metrics[f"{stage}.train.{key}"] = float(value)
        details.setdefault(stage, {})["train"] = {
            k: data[k]
            for k in ("steps", "epochs", "seconds", "world_size", "global_batch", "resumed_from")
        }
    for path in eval_files:
        data = json.loads(path.read_text())
        stage = f"stage{data['network']['stage']}"
        for key, value in data["metrics"].items():
            metrics[f"{stage}.{key}"] = float(value)
        details.setdefault(stage, {})["eval"] = {
            "samples": data["samples"],
            "skipped": data["skipped"],
            "extractor": (data.get("extractor") or {}).get("extractor"),
            "grid": data.get("grid"),
        }
    return metrics, details


def paired_metrics(eval_files: list[Path], index: Path) -> dict[str, float]:
    """``stage2.vs_stage1.*`` from the two stages' activation caches (``activations.h5``
    beside each ``metrics.json``); empty unless both stages were evaluated."""
    caches = {
        int(json.loads(path.read_text())["network"]["stage"]): path.parent / "activations.h5"
        for path in eval_files
    }
    if not {1, 2} <= caches.keys():
        return {}
    changes = compare_evaluations(caches[1], caches[2], index)
    return {f"stage2.vs_stage1.{k}": v for k, v in (changes or {}).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.summarize", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--run", required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--train", type=Path, nargs="*", default=[])
    p.add_argument("--eval", type=Path, nargs="*", default=[])
    p.add_argument("--index", type=Path, help="test index: adds the paired Stage-II/Stage-I counts")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    metrics, details = collect(args.train, args.eval)
    if args.index is not None:
        try:
            metrics.update(paired_metrics(args.eval, args.index))
        except (OSError, ValueError) as err:  # each names the file and what was expected
            print(f"summarize: {err}", file=sys.stderr)
            return 2
    write_json(
        args.out, {"run": args.run, "preset": args.preset, "metrics": metrics, "stages": details}
    )
    print(f"summary: {len(metrics)} metrics -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
