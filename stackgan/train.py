"""``stackgan train``: train one StackGAN stage (single process, torchrun, or srun).

    stackgan train --config run.yaml --data shards/train-64 --workdir work/stage1 \\
        --out results/stage1/network-final.pt

    torchrun --standalone --nproc-per-node 4 -m stackgan.cli.train ...      # 1 node, 4 GPUs

The batch size in the config is PER RANK; the global batch is batch_size x world size.
The work directory holds resumable training states (a restart resumes automatically),
``metrics.jsonl``, sample grids and the MLflow child-run id; it must survive job
failures, so it is not a declared Snakemake output. Only rank 0 writes files and logs.

Exit codes: 0 done; 1 training error (e.g. non-finite loss); 2 bad configuration or
inputs (before any compute); 75 stopped by SIGTERM/SIGUSR1 after saving a checkpoint
(run the same command again to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from stackgan import distributed as dist_utils
from stackgan.config import ConfigError, RunConfig, flatten, to_dict
from stackgan.data.format import read_manifest
from stackgan.fileio import atomic_open, write_json, write_yaml
from stackgan.runtime import resolve_amp

log = logging.getLogger("stackgan.train")

EXIT_ERROR, EXIT_CONFIG = 1, 2


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        "in-training evaluation (every train.eval_every steps; synthetic twin only)"
    )
    mon.add_argument("--eval-classifier", type=Path, help="twin attribute classifier (.pt)")
    mon.add_argument("--eval-index", type=Path, help="test-index.h5 (the captions to generate)")
    mon.add_argument("--eval-shards", type=Path, help="test-64 shard set (the real reference)")
    p.add_argument(
        "--loss-curve", type=Path, help="loss-curve PNG (default: <workdir>/loss_curves.png)"
    )
    p.add_argument("--grid-out", type=Path, help="copy of the final sample grid (PNG)")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    track = p.add_argument_group("tracking (MLflow)")
    track.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none = no tracking)",
    )
    track.add_argument("--experiment", default="stackgan", help="MLflow experiment name")
    track.add_argument("--run-name", help="MLflow run name (default: stage1 / stage2)")
    track.add_argument(
        "--parent-run-id-file", type=Path, help="file holding the pipeline's parent run id"
    )
    track.add_argument(
        "--artifact-location", help="artifact location for a newly created experiment"
    )
    track.add_argument("--dataset-name", help="tag: dataset name (default: from the shard set)")
    track.add_argument(
        "--preset", help="tag: the pipeline preset this run belongs to (e.g. paper, demo)"
    )
    track.add_argument(
        "--no-system-metrics", action="store_true", help="do not log CPU/GPU/memory metrics"
    )
    return p


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _check_inputs(args: argparse.Namespace, cfg: RunConfig) -> dict[str, Any]:
    """Everything that can be checked before compute; returns the data manifest."""
    try:
        manifest = read_manifest(args.data)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--data: {err}") from err
    expected = 64 if cfg.stage == 1 else 256
    if int(manifest["resolution"]) != expected:
        raise ConfigError(
            f"--data: {args.data} holds {manifest['resolution']} px images; "
            f"Stage-{cfg.stage} trains on {expected} px"
        )
    if cfg.stage == 2 and args.stage1_generator is None:
        raise ConfigError("--stage1-generator is required for Stage-II (train Stage-I first)")
    if cfg.stage == 2 and not args.stage1_generator.is_file():
        raise ConfigError(
            f"--stage1-generator: {args.stage1_generator} not found (train Stage-I first)"
        )
    if cfg.train.eval_every > 0:
        missing = [
            f"--eval-{k}"
            for k in ("classifier", "index", "shards")
            if getattr(args, f"eval_{k}") is None
        ]
        if missing:
            raise ConfigError(
                f"train.eval_every={cfg.train.eval_every} needs {', '.join(missing)} "
                "(or set train.eval_every: 0)"
            )
        for k in ("classifier", "index"):
            if not getattr(args, f"eval_{k}").is_file():
                raise ConfigError(f"--eval-{k}: {getattr(args, f'eval_{k}')} not found")
    return manifest


def _monitor(args: argparse.Namespace, cfg: RunConfig) -> Any:
    """The in-training evaluation, or None when train.eval_every is 0."""
    if cfg.train.eval_every <= 0:
        return None
    from stackgan.monitor import TrainingMonitor, monitor_seed

    t = cfg.train
    return TrainingMonitor.from_files(
        classifier=args.eval_classifier,
        index=args.eval_index,
        real_set=args.eval_shards,
        captions=t.eval_captions,
        samples_per_caption=t.eval_samples_per_caption,
        batch_size=t.eval_batch_size,
        seed=monitor_seed(t.seed),
        cache=args.workdir / "eval-real-features.npz",
    )


def _grid_embeddings(
    args: argparse.Namespace, manifest: dict[str, Any], cfg: RunConfig
) -> torch.Tensor | None:
    """Caption 0 of ``grid_captions`` images spread evenly over the index (fixed across
    restarts; the index is in class order, so its first images would be one species)."""
    import h5py
    import numpy as np

    path = args.grid_index or args.data.parent / manifest["index_file"]
    if not path.is_file():
        log.warning("no index file %s: training sample grids disabled", path)
        return None
    with h5py.File(path, "r") as h5:
        n = h5["embeddings"].shape[0]
        rows = np.unique(np.linspace(0, n - 1, min(cfg.train.grid_captions, n)).round())
        return torch.from_numpy(h5["embeddings"][rows.astype(int).tolist(), 0, :]).float()


STANDING_STAT_CAPTIONS = 512  # training captions behind G_ema's standing BatchNorm statistics


def _standing_embeddings(
    args: argparse.Namespace, manifest: dict[str, Any], cfg: RunConfig
) -> torch.Tensor | None:
    """Training captions spread over the set (caption i % 10 of row i), for ema_bn=standing."""
    if cfg.train.ema_beta is None or cfg.train.ema_bn != "standing":
        return None
    import h5py
    import numpy as np

    path = args.data.parent / manifest["index_file"]
    if not path.is_file():
        raise ConfigError(f"train.ema_bn=standing needs the training index {path} (not found)")
    with h5py.File(path, "r") as h5:
        n, k = h5["embeddings"].shape[:2]
        rows = np.unique(np.linspace(0, n - 1, min(n, STANDING_STAT_CAPTIONS)).astype(int))
        emb = np.stack([h5["embeddings"][r, i % k] for i, r in enumerate(rows)])
    return torch.from_numpy(emb).float()


def _start_tracker(
    args: argparse.Namespace, cfg: RunConfig, info: dist_utils.DistInfo, manifest: dict
) -> Any:
    """MLflow child run on rank 0 (continued on retry); a no-op tracker elsewhere or
    without a URI.
    """
    from stackgan.tracking import MLflowTracker, NullTracker, read_run_id

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not info.is_main or not uri:
        if info.is_main:
            log.info("no tracking URI given: metrics go to %s/metrics.jsonl only", args.workdir)
        return NullTracker()
    from stackgan import provenance

    parent = read_run_id(args.parent_run_id_file) if args.parent_run_id_file else None
    if args.parent_run_id_file and parent is None:
        raise ConfigError(f"--parent-run-id-file: {args.parent_run_id_file} holds no run id")
    dataset = args.dataset_name or ("cub" if manifest["num_samples"] in (8855, 2933) else "custom")
    tags = {
        "stage": str(cfg.stage),
        "preset": args.preset or "none",
        "arch": cfg.model.arch,
        "dataset": dataset,
        **provenance.slurm_info(),
    }
    tracker = MLflowTracker.start(
        tracking_uri=uri,
        experiment=args.experiment,
        run_name=args.run_name or f"stage{cfg.stage}",
        parent_run_id=parent,
        run_id_file=args.workdir / "mlflow_run_id.txt",
        tags={f"slurm.{k}" if k in provenance.slurm_info() else k: v for k, v in tags.items()},
        artifact_location=args.artifact_location,
        log_system_metrics=not args.no_system_metrics,
    )
    git = provenance.git_info()
    params = {
        **{f"config.{k}": v for k, v in flatten(to_dict(cfg)).items()},
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        **{f"version.{k}": v for k, v in provenance.package_versions().items()},
        "data.manifest_sha256": provenance.manifest_hash(args.data),
        "data.num_samples": manifest["num_samples"],
        "world_size": info.world_size,
        "global_batch": cfg.train.batch_size * info.world_size,
        "amp": resolve_amp(cfg.train.amp, info.device),
        "arch": cfg.model.arch,
    }
    tracker.log_params(params)
    tracker.log_checkpoint_path(args.workdir, name="workdir")
    return tracker


def _loss_curve(history: list[tuple[int, dict[str, float]]], path: Path) -> Path | None:
    """PNG of the loss and D-output curves, plus the in-training evaluation when it ran."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(s, m[key]) for s, m in history if key in m]
        return [s for s, _ in pts], [v for _, v in pts]

    panels = [
        ("losses", ("loss_d", "loss_g", "kl")),
        ("mean D outputs (sigmoid)", ("d_real", "d_wrong", "d_fake")),
    ]
    if any("eval.body_accuracy" in m for _, m in history):
        panels += [
            (
                "test-caption accuracy (dashed: chance)",
                ("eval.body_accuracy", "eval.wing_accuracy", "eval.joint_accuracy"),
            ),
            (
                "twin-FID (log), diversity, consistency",
                ("eval.twin_fid", "eval.diversity", "eval.consistency_attributes"),
            ),
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            xs, ys = series(key)
            if xs:
                line = ax.plot(xs, ys, marker="o" if key.startswith("eval.") else None, label=key)
                chance = key.replace("_accuracy", "_chance")
                if chance != key and series(chance)[0]:
                    ax.plot(*series(chance), ls="--", color=line[0].get_color())
        if title.startswith("twin-FID"):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path


def _read_history(path: Path) -> list[tuple[int, dict[str, float]]]:
    """metrics.jsonl rows merged by step (training and evaluation rows of a step are one
    entry; a resumed run's rewrite of a step replaces its values)."""
    rows: dict[int, dict[str, float]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault(int(row["step"]), {}).update(row)
    return sorted(rows.items())


def run(args: argparse.Namespace) -> int:
    """Validate, set up the process group, train, write outputs. Returns the exit code."""
    from stackgan.data.loader import spec_from_set, train_loader
    from stackgan.runtime import tune_allocator
    from stackgan.stages import build_stage
    from stackgan.training_loop import NonFiniteLossError, Preempted, StopFlag, training_loop

    rank, _, _ = dist_utils.env_ranks()
    _setup_logging(rank)
    tune_allocator()
    try:
        cfg = RunConfig.from_yaml(str(args.config))
        if args.max_steps is not None:
            cfg = dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, max_steps=args.max_steps)
            )
        manifest = _check_inputs(args, cfg)
    except (ConfigError, OSError) as err:
        print(f"stackgan train: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG

    info = dist_utils.init()
    tracker = None
    try:
        # Everything below may still fail before compute: check, then agree across ranks.
        error = None
        try:
            from stackgan.training_loop import check_runtime_config

            check_runtime_config(cfg, info.device)
            if cfg.train.deterministic:
                torch.use_deterministic_algorithms(True)
                torch.backends.cudnn.benchmark = False
            torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
            stage = build_stage(cfg, args.stage1_generator)
            spec = spec_from_set(
                args.data,
                batch_size=cfg.train.batch_size,
                world_size=info.world_size,
                rank=info.rank,
                caption_mode=cfg.train.caption_mode,  # type: ignore[arg-type]
                seed=cfg.train.seed,
                num_workers=cfg.train.num_workers,
                shuffle_buffer=cfg.train.shuffle_buffer,
            )
            grid = _grid_embeddings(args, manifest, cfg)
            if grid is None and args.grid_out is not None:
                raise ConfigError(
                    "--grid-out needs an index file for the grid captions (--grid-index)"
                )
            if info.is_main:
                args.workdir.mkdir(parents=True, exist_ok=True)
                write_yaml(args.workdir / "run_config.yaml", to_dict(cfg))
            monitor = _monitor(args, cfg)
            standing = _standing_embeddings(args, manifest, cfg)
            tracker = _start_tracker(args, cfg, info, manifest)
        except Exception as err:  # reported below, on every rank
            error = f"{type(err).__name__}: {err}"
        errors = [e for e in dist_utils.all_gather_object(error) if e]
        if errors:
            print(f"stackgan train: cannot start: {errors[0]}", file=sys.stderr)
            return EXIT_CONFIG

        history_path = args.workdir / "metrics.jsonl"

        def on_log(step: int, metrics: dict[str, float]) -> None:
            if info.is_main:
                with open(history_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": step, **metrics}) + "\n")

        stop = StopFlag().install()
        try:
            result = training_loop(
                cfg=cfg,
                stage=stage,
                make_data=lambda start: train_loader(spec, start),
                steps_per_epoch=spec.steps_per_epoch,
                workdir=args.workdir,
                out_network=args.out,
                info=info,
                tracker=tracker,
                grid_embeddings=grid,
                provenance={
                    "data_manifest_sha256": manifest_sha(args.data),
                    "world_size": info.world_size,
                },
                stop=stop,
                step_callback=on_log,
                monitor=monitor,
                bn_embeddings=standing,
            )
        except Preempted:
            if tracker is not None:
                tracker.close("KILLED")
            raise
        except NonFiniteLossError as err:
            log.error("%s", err)
            if tracker is not None:
                tracker.close("FAILED")
            return EXIT_ERROR
        finally:
            stop.restore()

        if info.is_main:
            history = _read_history(history_path)
            curve = _loss_curve(history, args.loss_curve or args.workdir / "loss_curves.png")
            if args.grid_out is not None:
                final_grid = args.workdir / "samples" / f"grid-{result.step:08d}.png"
                with atomic_open(args.grid_out, "wb") as fh:
                    fh.write(final_grid.read_bytes())
            summary = {
                "stage": cfg.stage,
                "steps": result.step,
                "epochs": result.epoch,
                "resumed_from": result.resumed_from,
                "seconds": round(result.seconds, 1),
                "world_size": info.world_size,
                "global_batch": cfg.train.batch_size * info.world_size,
                "final_metrics": result.last_metrics,
                "eval_history": [
                    {"step": s, **{k: v for k, v in m.items() if k.startswith("eval.")}}
                    for s, m in history
                    if "eval.body_accuracy" in m
                ],
                "mlflow_run_id": getattr(tracker, "run_id", None),
            }
            if args.metrics_out:
                write_json(args.metrics_out, summary)
            if tracker is not None:
                tracker.log_artifact(args.workdir / "run_config.yaml")
                if curve is not None:
                    tracker.log_artifact(curve)
                tracker.log_artifact(args.out, artifact_path="network")
                tracker.set_tags({"status": "finished"})
                tracker.close("FINISHED")
        return 0
    except Exception:
        if tracker is not None:
            tracker.close("FAILED")
        raise
    finally:
        dist_utils.shutdown()


def manifest_sha(set_dir: Path) -> str:
    from stackgan.provenance import manifest_hash

    return manifest_hash(set_dir)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``stackgan train`` / ``python -m stackgan.cli.train``."""
    args = build_parser(prog).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
