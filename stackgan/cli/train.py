"""``stackgan train``: train one StackGAN stage (single process, torchrun, or srun).

    stackgan train --config run.yaml --data shards/train-64 --workdir work/stage1 \\
        --out results/stage1/network-final.pt

    torchrun --standalone --nproc-per-node 4 -m stackgan.cli.train ...      # 1 node, 4 GPUs

The batch size in the config is PER RANK; the global batch is batch_size x world size.
The work directory holds resumable training states (a restart resumes automatically, but
only the run that wrote them: see --on-config-change),
``metrics.jsonl``, sample grids and the MLflow child-run id; it must survive job
failures, so it is not a declared Snakemake output. Only rank 0 writes files and logs.

Exit codes: 0 done; 1 training error (e.g. non-finite loss); 2 bad configuration or
inputs (before any compute); 75 stopped by SIGTERM/SIGUSR1 after saving a checkpoint
(run the same command again to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stackgan.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_tracking_arguments,
    parser_for,
    setup_logging,
)

if TYPE_CHECKING:
    from stackgan.training.run import TrainJob


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``stackgan train`` argument parser."""
    p = parser_for(prog, __doc__)
    p.add_argument(
        "--config", type=Path, required=True, help="run config YAML (stage, model, loss, train)"
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="shard set directory: train-64 (Stage-I) or train-256 (Stage-II)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        required=True,
        help="resumable state directory (not a workflow output)",
    )
    p.add_argument("--out", type=Path, required=True, help="network file to write at the end")
    p.add_argument(
        "--stage1-generator", type=Path, help="Stage-I network file (required for Stage-II)"
    )
    p.add_argument(
        "--grid-index",
        type=Path,
        help="HDF5 index for the sample-grid captions (default: the set's own)",
    )
    p.add_argument("--metrics-out", type=Path, help="final metrics JSON (rank 0)")
    mon = p.add_argument_group(
        "in-training evaluation (every train.eval_every steps): attribute metrics with the "
        "twin's classifier, and/or a small-sample Inception FID with Inception weights"
    )
    mon.add_argument("--eval-index", type=Path, help="test-index.h5 (the captions to generate)")
    mon.add_argument("--eval-classifier", type=Path, help="twin attribute classifier (.pt)")
    mon.add_argument("--eval-shards", type=Path, help="test-64 shard set (the twin's reference)")
    mon.add_argument(
        "--eval-inception-weights",
        type=Path,
        help="local pt_inception-2015-12-05-6726825d.pth: adds eval.inception_fid",
    )
    mon.add_argument(
        "--eval-inception-sha256", help="expected full SHA-256 (default: the 6726825d prefix)"
    )
    mon.add_argument(
        "--eval-real-stats",
        type=Path,
        help="real test statistics of `stackgan evaluate real-stats` (same weights)",
    )
    mon.add_argument(
        "--eval-test-extractor",
        action="store_true",
        help="TEST ONLY: a small random network instead of Inception (meaningless numbers)",
    )
    p.add_argument(
        "--loss-curve", type=Path, help="loss-curve PNG (default: <workdir>/loss_curves.png)"
    )
    p.add_argument("--grid-out", type=Path, help="copy of the final sample grid (PNG)")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument(
        "--on-config-change",
        choices=("error", "restart"),
        default="error",
        help="when --workdir holds the states of another run (other settings, shards or "
        "Stage-I network): stop and say what differs (default), or move them to "
        "<workdir>/superseded/ and start at step 0 (what the pipeline does)",
    )
    track = add_tracking_arguments(p)
    track.add_argument(
        "--artifact-location", help="artifact location for a newly created experiment"
    )
    return p


def _job(args: argparse.Namespace) -> TrainJob:
    """The job's paths and tracking options (imported lazily: ``--help`` stays fast)."""
    from stackgan.training.run import TrackingOptions, TrainJob

    tracking = TrackingOptions(
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        run_name=args.run_name,
        parent_run_id_file=args.parent_run_id_file,
        artifact_location=args.artifact_location,
        dataset_name=args.dataset_name,
        preset=args.preset,
        system_metrics=not args.no_system_metrics,
    )
    return TrainJob(
        data=args.data,
        workdir=args.workdir,
        out=args.out,
        stage1_generator=args.stage1_generator,
        grid_index=args.grid_index,
        metrics_out=args.metrics_out,
        eval_classifier=args.eval_classifier,
        eval_index=args.eval_index,
        eval_shards=args.eval_shards,
        eval_inception_weights=args.eval_inception_weights,
        eval_inception_sha256=args.eval_inception_sha256,
        eval_real_stats=args.eval_real_stats,
        eval_test_extractor=args.eval_test_extractor,
        loss_curve=args.loss_curve,
        grid_out=args.grid_out,
        tracking=tracking,
        on_config_change=args.on_config_change,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``stackgan train`` / ``python -m stackgan.cli.train``."""
    args = build_parser(prog).parse_args(argv)
    from stackgan import distributed as dist_utils
    from stackgan.config import ConfigError
    from stackgan.runtime import tune_allocator
    from stackgan.training.control import NonFiniteLossError
    from stackgan.training.run import StartError, check_inputs, load_run_config, run_training
    from stackgan.training.state import ResumeMismatchError

    rank, _, _ = dist_utils.env_ranks()
    setup_logging(rank, with_time=True)
    tune_allocator()
    job = _job(args)
    try:
        cfg = load_run_config(args.config, args.max_steps)
        manifest = check_inputs(job, cfg)
    except (ConfigError, OSError) as err:
        print(f"stackgan train: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        run_training(job, cfg, manifest)
    except StartError as err:
        print(f"stackgan train: cannot start: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ResumeMismatchError as err:
        print(f"stackgan train: cannot resume: {err}", file=sys.stderr)
        return EXIT_FAILED
    except NonFiniteLossError:  # logged by run_training
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
