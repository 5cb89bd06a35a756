"""``stackgan evaluate``: IS / FID / KID, conditional accuracy and captioned grids for one
generator.

    stackgan evaluate --network results/demo/stage2/network-final.pt \\
        --index shards/test-index.h5 --out results/demo/eval/stage2 \\
        [--inception-weights pt_inception-2015-12-05-6726825d.pth --real-stats real-test-256.h5] \\
        [--cub-classifier cub_inception.pth] [--attribute-classifier attr.pt]

    stackgan evaluate real-stats --shards shards/test-256 --out real-test-256.h5 \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth

Writes ``metrics.json`` (values, sample count, implementation, weight hashes, reference
set), ``grid.png`` and ``activations.h5`` (cached features/logits/attribute predictions
of this generator; reused when the generator file and protocol are unchanged).

Without Inception weights, IS/FID/KID are skipped and the JSON says why;
``--require-metrics`` turns that into an error. ``--test-extractor`` uses a small
random network instead -- for tests only, its numbers mean nothing. Runs on one
process or under torchrun (generation is sharded; rank 0 writes the results).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from stackgan import distributed as dist_utils
from stackgan.evaluation import (
    Protocol,
    evaluation_grid,
    generate_activations,
    load_requests,
    read_cache,
    read_real_stats,
    write_cache,
    write_real_stats,
)
from stackgan.fileio import sha256_file, write_json
from stackgan.grids import save_png

log = logging.getLogger("stackgan.evaluate")
EXIT_CONFIG = 2


def _extractor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("feature extractor")
    g.add_argument(
        "--inception-weights",
        type=Path,
        help="local pt_inception-2015-12-05-6726825d.pth (FID/KID/IS)",
    )
    g.add_argument(
        "--inception-sha256", help="expected full SHA-256 (default: check the 6726825d prefix)"
    )
    g.add_argument(
        "--cub-classifier",
        type=Path,
        help="CUB-fine-tuned Inception state dict for the StackGAN IS",
    )
    g.add_argument(
        "--test-extractor",
        action="store_true",
        help="TEST ONLY: small random network, meaningless numbers",
    )


def build_extractor(args: argparse.Namespace) -> Any | None:
    """The feature extractor named by the arguments, or None (metrics skipped)."""
    from stackgan.metrics.extractors import InceptionExtractor, TestExtractor

    if args.test_extractor:
        return TestExtractor(seed=0)
    if args.inception_weights is None:
        return None
    return InceptionExtractor.from_files(
        args.inception_weights, fid_sha256=args.inception_sha256, cub_weights=args.cub_classifier
    )


def _skip_reason(args: argparse.Namespace) -> str:
    return (
        "no Inception weights given (--inception-weights / eval.inception_weights); they cannot be "
        "downloaded at run time. Put pt_inception-2015-12-05-6726825d.pth on local disk "
        "and point to it."
    )


# --------------------------------------------------------------------------- real-stats


def real_stats_main(argv: list[str], prog: str | None) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} real-stats" if prog else None,
        description="Features, mu and Sigma of the real test images at 256 px (HDF5).",
    )
    p.add_argument("--shards", type=Path, required=True, help="the test-256 shard set")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--skip-ok",
        action="store_true",
        help="without weights: write nothing and exit 0 (the evaluation then skips FID/KID)",
    )
    _extractor_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        extractor = build_extractor(args)
    except (OSError, ValueError) as err:
        print(f"real-stats: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if extractor is None:
        print(f"real-stats: {_skip_reason(args)}", file=sys.stderr)
        return 0 if args.skip_ok else EXIT_CONFIG
    t0 = time.perf_counter()
    meta = write_real_stats(args.out, args.shards, extractor, args.batch_size)
    log.info(
        "wrote %s: %d real images, extractor %s (%.0f s)",
        args.out,
        meta["count"],
        meta["extractor"],
        time.perf_counter() - t0,
    )
    return 0


# --------------------------------------------------------------------------- evaluate


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--network", type=Path, required=True, help="Stage-I or Stage-II network file")
    p.add_argument(
        "--index",
        type=Path,
        required=True,
        help="HDF5 index of the test split (embeddings, captions)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--real-stats",
        type=Path,
        help="real-image statistics (stackgan evaluate real-stats) for FID/KID",
    )
    p.add_argument(
        "--attribute-classifier", type=Path, help="twin attribute classifier (conditional accuracy)"
    )
    p.add_argument(
        "--require-metrics", action="store_true", help="missing weights or real stats are errors"
    )
    p.add_argument("--recompute", action="store_true", help="ignore an existing activation cache")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--captions-per-image", type=int, default=10)
    proto.add_argument("--max-images", type=int, help="only the first N test images")
    proto.add_argument("--batch-size", type=int, default=64)
    proto.add_argument("--seed", type=int, default=100)
    proto.add_argument(
        "--no-ema", action="store_true", help="use G even when the file holds an EMA G"
    )
    proto.add_argument("--is-splits", type=int, default=10)
    proto.add_argument("--kid-subsets", type=int, default=100)
    proto.add_argument("--kid-subset-size", type=int, default=1000)
    proto.add_argument("--grid-captions", type=int, default=6)
    proto.add_argument("--grid-samples", type=int, default=4)
    _extractor_args(p)
    track = p.add_argument_group("tracking (MLflow)")
    track.add_argument("--tracking-uri")
    track.add_argument("--experiment", default="stackgan")
    track.add_argument("--run-name")
    track.add_argument("--parent-run-id-file", type=Path)
    track.add_argument(
        "--no-system-metrics",
        action="store_true",
        help="(accepted for symmetry; evaluation logs none)",
    )
    track.add_argument("--preset", help="tag: the pipeline preset")
    track.add_argument("--dataset-name", help="tag: dataset name")
    return p


def _metrics(
    arrays: dict[str, np.ndarray],
    real: np.ndarray | None,
    args: argparse.Namespace,
    notes: list[str],
) -> dict[str, float]:
    from stackgan.metrics.scores import frechet_distance, inception_score, kernel_inception_distance

    out: dict[str, float] = {}
    if "logits" in arrays:
        out["is_mean"], out["is_std"] = inception_score(
            arrays["logits"], splits=args.is_splits, seed=args.seed, notes=notes
        )
    if "features" in arrays and real is not None:
        out["fid"] = frechet_distance(real, arrays["features"])
        out["kid_mean"], out["kid_std"] = kernel_inception_distance(
            real,
            arrays["features"],
            subsets=args.kid_subsets,
            subset_size=args.kid_subset_size,
            seed=args.seed,
            notes=notes,
        )
    return out


def _conditional(arrays: dict[str, np.ndarray], requests: Any) -> dict[str, float]:
    from stackgan.metrics.conditional import accuracy, attribute_labels

    wanted = attribute_labels(requests.captions)
    return {f"cond_{k}": v for k, v in accuracy(arrays["attributes"], wanted).items()}


def run(args: argparse.Namespace) -> int:
    from stackgan.checkpoint import CheckpointError
    from stackgan.runtime import tune_allocator
    from stackgan.sampling import Sampler

    tune_allocator()
    rank, _, _ = dist_utils.env_ranks()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    protocol = Protocol(
        args.captions_per_image, args.max_images, args.batch_size, args.seed, not args.no_ema
    )
    skipped: dict[str, str] = {}
    try:
        extractor = build_extractor(args)
        if extractor is None:
            reason = _skip_reason(args)
            if args.require_metrics:
                raise ValueError(f"--require-metrics: {reason}")
            skipped.update({"is": reason, "fid": reason, "kid": reason})
        real, real_meta = None, None
        if extractor is not None:
            if args.real_stats is None or not args.real_stats.is_file():
                reason = (
                    f"no real-image statistics file ({args.real_stats or '--real-stats not given'})"
                )
                if args.require_metrics:
                    raise ValueError(f"--require-metrics: {reason}")
                skipped.update({"fid": reason, "kid": reason})
            else:
                real, real_meta = read_real_stats(args.real_stats)
                if real_meta.get("weights_sha256") != (extractor.weights_sha256 or ""):
                    raise ValueError(
                        f"{args.real_stats}: made with extractor weights "
                        f"{real_meta.get('weights_sha256')!r}, not {extractor.weights_sha256!r}"
                    )
        classifier = None
        if args.attribute_classifier is not None:
            from stackgan.metrics.conditional import load_classifier

            classifier = load_classifier(args.attribute_classifier)
        else:
            skipped["conditional_accuracy"] = "no attribute classifier (synthetic twin only)"
        sampler = Sampler.load(args.network, use_ema=protocol.use_ema)
        requests = load_requests(args.index, protocol)
    except (OSError, ValueError, KeyError, CheckpointError) as err:
        print(f"stackgan evaluate: {err}", file=sys.stderr)
        return EXIT_CONFIG

    info = dist_utils.init()
    try:
        meta = {
            "network_sha256": sha256_file(args.network),
            "protocol": vars(protocol) if hasattr(protocol, "__dict__") else {},
            "extractor": extractor.metadata() if extractor is not None else None,
            "attribute_classifier_sha256": sha256_file(args.attribute_classifier)
            if classifier is not None
            else None,
        }
        from dataclasses import asdict

        meta["protocol"] = asdict(protocol)
        cache = args.out / "activations.h5"
        arrays = None if args.recompute else read_cache(cache, meta)
        arrays = dist_utils.all_gather_object(arrays is not None)
        if all(arrays):
            arrays = read_cache(cache, meta) if info.is_main else None
            if info.is_main:
                log.info("using cached activations %s", cache)
        else:
            t0 = time.perf_counter()
            arrays = generate_activations(
                sampler,
                requests,
                protocol,
                extractor=extractor,
                classifier=classifier,
                part_dir=args.out,
                info=info,
            )
            if info.is_main:
                write_cache(cache, arrays, meta, requests)
                log.info("generated %d images in %.0f s", len(requests), time.perf_counter() - t0)
        if not info.is_main:
            return 0

        notes: list[str] = []
        metrics = _metrics(arrays, real, args, notes)
        if classifier is not None:
            metrics.update(_conditional(arrays, requests))
        grid = evaluation_grid(sampler, requests, args.grid_captions, args.grid_samples, args.seed)
        grid_path = save_png(grid, args.out / "grid.png")
        result = {
            "metrics": metrics,
            "skipped": skipped,
            "notes": notes,
            "samples": len(requests),
            "network": {**sampler.meta, "sha256": meta["network_sha256"]},
            "protocol": meta["protocol"],
            "extractor": meta["extractor"],
            "implementation": _implementation(),
            "reference_set": (
                {"file": str(args.real_stats), "sha256": sha256_file(args.real_stats), **real_meta}
                if real_meta
                else None
            ),
            "grid": str(grid_path),
            "activations": str(cache),
        }
        write_json(args.out / "metrics.json", result)
        _log_to_tracker(args, result, sampler.stage)
        _print_summary(result)
        return 0
    finally:
        dist_utils.shutdown()


def _implementation() -> dict[str, Any]:
    from stackgan.metrics.scores import implementation_info

    return implementation_info()


def _print_summary(result: dict[str, Any]) -> None:
    m = result["metrics"]
    parts = [
        f"{k} {v:.4g}"
        for k, v in sorted(m.items())
        if not k.endswith("_chance") and k != "cond_count"
    ]
    log.info(
        "stage %s, %d samples: %s",
        result["network"]["stage"],
        result["samples"],
        ", ".join(parts) or "no metrics",
    )
    for name, why in result["skipped"].items():
        log.warning("skipped %s: %s", name, why)


def _log_to_tracker(args: argparse.Namespace, result: dict[str, Any], stage: int) -> None:
    import os

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    from stackgan.tracking import MLflowTracker, read_run_id

    parent = read_run_id(args.parent_run_id_file) if args.parent_run_id_file else None
    tracker = MLflowTracker.start(
        tracking_uri=uri,
        experiment=args.experiment,
        run_name=args.run_name or f"eval-stage{stage}",
        parent_run_id=parent,
        run_id_file=args.out / "mlflow_run_id.txt",
        tags={
            "stage": f"eval{stage}",
            "status": "finished",
            "preset": args.preset or "none",
            "dataset": args.dataset_name or "unknown",
        },
        log_system_metrics=False,
    )
    with tracker:
        tracker.log_params(
            {
                "network_sha256": result["network"]["sha256"],
                "samples": result["samples"],
                **{f"protocol.{k}": v for k, v in result["protocol"].items()},
            }
        )
        tracker.log_metrics({k: float(v) for k, v in result["metrics"].items()}, step=0)
        tracker.log_artifact(args.out / "metrics.json", artifact_path="eval")
        tracker.log_artifact(args.out / "grid.png", artifact_path="eval")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``stackgan evaluate [real-stats] ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "real-stats":
        return real_stats_main(argv[1:], prog)
    args = build_parser(prog).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
