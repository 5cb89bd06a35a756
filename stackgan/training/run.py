"""One training job: what ``stackgan train`` does between parsing its arguments and exiting.

:func:`load_run_config` and :func:`check_inputs` run before any process group exists (bad
inputs fail fast); :func:`run_training` sets up the process group, prepares everything that
can still fail before compute and agrees on errors across ranks (:class:`StartError`), runs
:func:`~stackgan.training.loop.training_loop` under a :class:`StopFlag`, and on rank 0
writes the final artefacts (loss-curve PNG, grid copy, metrics JSON) and closes the
MLflow child run. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackgan import distributed as dist_utils
from stackgan.config import ConfigError, RunConfig, flatten, to_dict
from stackgan.data.format import read_manifest
from stackgan.errors import StackGANError
from stackgan.fileio import write_yaml
from stackgan.runtime import resolve_amp
from stackgan.training import artefacts
from stackgan.training.control import (
    LoopResult,
    NonFiniteLossError,
    Preempted,
    StopFlag,
    ignore_stop_signals,
)
from stackgan.training.identity import (
    OnChange,
    identity_changes,
    record_identity,
    recorded_identity,
    run_identity,
    supersede,
)
from stackgan.training.schedule import check_runtime_config

log = logging.getLogger("stackgan.train")

STANDING_STAT_CAPTIONS = 512  # training captions behind G_ema's standing BatchNorm statistics


class StartError(StackGANError):
    """Some rank could not prepare the run (the message is that rank's error)."""


@dataclass(frozen=True)
class TrackingOptions:
    """Where and how the job's MLflow child run is recorded."""

    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI; none = no tracking
    experiment: str = "stackgan"
    run_name: str | None = None  # default: stage1 / stage2
    parent_run_id_file: Path | None = None
    artifact_location: str | None = None
    dataset_name: str | None = None  # default: from the shard set
    preset: str | None = None
    system_metrics: bool = True


@dataclass(frozen=True)
class TrainJob:
    """The inputs and outputs of one training job (``stackgan train``'s paths)."""

    data: Path  # shard set directory: train-64 (Stage-I) or train-256 (Stage-II)
    workdir: Path  # resumable state directory (not a workflow output)
    out: Path  # network file written at the end
    stage1_generator: Path | None = None
    grid_index: Path | None = None  # HDF5 index of the grid captions (default: the set's own)
    metrics_out: Path | None = None
    eval_classifier: Path | None = None
    eval_index: Path | None = None
    eval_shards: Path | None = None
    eval_inception_weights: Path | None = None  # + eval_real_stats: the Inception FID
    eval_inception_sha256: str | None = None
    eval_real_stats: Path | None = None
    eval_test_extractor: bool = False  # TEST ONLY: a small random network instead of Inception
    loss_curve: Path | None = None  # default: <workdir>/loss_curves.png
    grid_out: Path | None = None
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    # the work directory holds another run (config, data or Stage-I changed): stop, or move
    # that run aside and start at step 0 (stackgan/training/identity.py)
    on_config_change: OnChange = "error"


def load_run_config(path: Path, max_steps: int | None = None) -> RunConfig:
    """The run config YAML, with ``train.max_steps`` overridden when given."""
    cfg = RunConfig.from_yaml(str(path))
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=max_steps))
    return cfg


def check_inputs(job: TrainJob, cfg: RunConfig) -> dict[str, Any]:
    """Everything that can be checked before compute; returns the data manifest."""
    try:
        manifest = read_manifest(job.data)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--data: {err}") from err
    expected = 64 if cfg.stage == 1 else 256
    if int(manifest["resolution"]) != expected:
        raise ConfigError(
            f"--data: {job.data} holds {manifest['resolution']} px images; "
            f"Stage-{cfg.stage} trains on {expected} px"
        )
    if cfg.stage == 2 and job.stage1_generator is None:
        raise ConfigError("--stage1-generator is required for Stage-II (train Stage-I first)")
    if cfg.stage == 2 and not job.stage1_generator.is_file():  # type: ignore[union-attr]
        raise ConfigError(
            f"--stage1-generator: {job.stage1_generator} not found (train Stage-I first)"
        )
    if cfg.train.eval_every > 0:
        _check_monitor_inputs(job, cfg.train.eval_every)
    return manifest


def _check_monitor_inputs(job: TrainJob, every: int) -> None:
    """The in-training evaluation needs test captions and the twin classifier (with the
    real test images) and/or Inception weights (with the real statistics)."""
    inception = job.eval_inception_weights is not None or job.eval_test_extractor
    if job.eval_classifier is None and not inception:
        raise ConfigError(
            f"train.eval_every={every} needs --eval-classifier (twin) or "
            "--eval-inception-weights (or set train.eval_every: 0)"
        )
    needed = ["index"]
    needed += ["shards"] if job.eval_classifier is not None else []
    needed += ["real_stats"] if inception else []
    missing = [f"--eval-{k.replace('_', '-')}" for k in needed if getattr(job, f"eval_{k}") is None]
    if missing:
        raise ConfigError(
            f"train.eval_every={every} needs {', '.join(missing)} (or set train.eval_every: 0)"
        )
    for k in ("classifier", "index", "real_stats", "inception_weights"):
        path = getattr(job, f"eval_{k}")
        if path is not None and not path.is_file():
            raise ConfigError(f"--eval-{k.replace('_', '-')}: {path} not found")


# --------------------------------------------------------------------------- preparation


def grid_embeddings(job: TrainJob, manifest: dict[str, Any], cfg: RunConfig) -> torch.Tensor | None:
    """Caption 0 of ``grid_captions`` images spread evenly over the index (fixed across
    restarts; the index is in class order, so its first images would be one species)."""
    from stackgan.data.index import SplitIndex, evenly_spaced_rows

    path = job.grid_index or job.data.parent / manifest["index_file"]
    if not path.is_file():
        log.warning("no index file %s: training sample grids disabled", path)
        return None
    with SplitIndex(path) as idx:
        rows = evenly_spaced_rows(idx.num_images, cfg.train.grid_captions)
        return torch.from_numpy(idx.embeddings(rows.tolist(), 0)).float()


def standing_embeddings(
    job: TrainJob, manifest: dict[str, Any], cfg: RunConfig
) -> torch.Tensor | None:
    """Training captions spread over the set (caption i % 10 of row i), for ema_bn=standing."""
    if cfg.train.ema_beta is None or cfg.train.ema_bn != "standing":
        return None
    from stackgan.data.index import SplitIndex, evenly_spaced_rows

    path = job.data.parent / manifest["index_file"]
    if not path.is_file():
        raise ConfigError(f"train.ema_bn=standing needs the training index {path} (not found)")
    with SplitIndex(path) as idx:
        rows = evenly_spaced_rows(idx.num_images, STANDING_STAT_CAPTIONS, rounded=False)
        k = idx.captions_per_image
        emb = idx.embedding_pairs(rows.tolist(), [i % k for i in range(len(rows))])
    return torch.from_numpy(emb).float()


def training_monitor(job: TrainJob, cfg: RunConfig) -> Any:
    """The in-training evaluation, or None when train.eval_every is 0."""
    if cfg.train.eval_every <= 0:
        return None
    from stackgan.evaluation.reference import ExtractorSpec
    from stackgan.monitor import TrainingMonitor, monitor_seed

    t = cfg.train
    inception = None
    if job.eval_inception_weights is not None or job.eval_test_extractor:
        inception = ExtractorSpec(
            inception_weights=job.eval_inception_weights,
            inception_sha256=job.eval_inception_sha256,
            test_extractor=job.eval_test_extractor,
        )
    try:
        return TrainingMonitor.from_files(
            classifier=job.eval_classifier,
            index=job.eval_index,
            real_set=job.eval_shards,
            captions=t.eval_captions,
            samples_per_caption=t.eval_samples_per_caption,
            batch_size=t.eval_batch_size,
            seed=monitor_seed(t.seed),
            cache=job.workdir / "eval-real-features.npz",
            inception=inception,
            real_stats=job.eval_real_stats,
        )
    except ValueError as err:  # mismatched statistics, a non-twin index with a classifier
        raise ConfigError(f"in-training evaluation: {err}") from err


def start_tracker(
    job: TrainJob, cfg: RunConfig, info: dist_utils.DistInfo, manifest: dict[str, Any]
) -> Any:
    """MLflow child run on rank 0 (continued on retry); a no-op tracker elsewhere or
    without a URI.
    """
    from stackgan.tracking import MLflowTracker, NullTracker, read_run_id
    from stackgan.tracking.tags import STAGE_TAG, training_stage

    opts = job.tracking
    uri = opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not info.is_main or not uri:
        if info.is_main:
            log.info("no tracking URI given: metrics go to %s/metrics.jsonl only", job.workdir)
        return NullTracker()
    from stackgan import provenance

    parent = read_run_id(opts.parent_run_id_file) if opts.parent_run_id_file else None
    if opts.parent_run_id_file and parent is None:
        raise ConfigError(f"--parent-run-id-file: {opts.parent_run_id_file} holds no run id")
    dataset = opts.dataset_name or ("cub" if manifest["num_samples"] in (8855, 2933) else "custom")
    tags = {
        STAGE_TAG: training_stage(cfg.stage),
        "preset": opts.preset or "none",
        "arch": cfg.model.arch,
        "dataset": dataset,
        **provenance.slurm_info(),
    }
    tracker = MLflowTracker.start(
        tracking_uri=uri,
        experiment=opts.experiment,
        run_name=opts.run_name or f"stage{cfg.stage}",
        parent_run_id=parent,
        run_id_file=job.workdir / "mlflow_run_id.txt",
        tags={f"slurm.{k}" if k in provenance.slurm_info() else k: v for k, v in tags.items()},
        artifact_location=opts.artifact_location,
        log_system_metrics=opts.system_metrics,
    )
    tracker.log_params(_run_params(job, cfg, info, manifest))
    tracker.log_input(provenance.shard_set_input(job.data, "training"))
    if job.stage1_generator is not None:
        stage1 = provenance.network_input(job.stage1_generator)
        tracker.log_input(stage1)
        tracker.set_tags(
            {
                "stage1.network": stage1.source,
                "stage1.network_sha256": stage1.sha256,
                "stage1.mlflow_run_id": stage1.tags["mlflow_run_id"],
            }
        )
    tracker.log_checkpoint_path(job.workdir, name="workdir")
    return tracker


def _run_params(
    job: TrainJob, cfg: RunConfig, info: dist_utils.DistInfo, manifest: dict[str, Any]
) -> dict[str, Any]:
    """The MLflow params of the child run: config, code, versions, data, world."""
    from stackgan import provenance

    git = provenance.git_info()
    return {
        **{f"config.{k}": v for k, v in flatten(to_dict(cfg)).items()},
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        **{f"version.{k}": v for k, v in provenance.package_versions().items()},
        "data.manifest_sha256": provenance.manifest_hash(job.data),
        "data.num_samples": manifest["num_samples"],
        "world_size": info.world_size,
        "global_batch": cfg.train.batch_size * info.world_size,
        "amp": resolve_amp(cfg.train.amp, info.device),
        "arch": cfg.model.arch,
    }


@dataclass
class _Prepared:
    """Everything the loop needs that could fail before compute."""

    stage: Any
    spec: Any
    grid: torch.Tensor | None
    monitor: Any
    standing: torch.Tensor | None
    tracker: Any


def _prepare(
    job: TrainJob, cfg: RunConfig, manifest: dict[str, Any], info: dist_utils.DistInfo
) -> _Prepared:
    """Build the stage, the data spec, grids, monitor and tracker (may raise anything)."""
    from stackgan.data.loader import spec_from_set
    from stackgan.stages import build_stage

    check_runtime_config(cfg, info.device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    stage = build_stage(cfg, job.stage1_generator)
    spec = spec_from_set(
        job.data,
        batch_size=cfg.train.batch_size,
        world_size=info.world_size,
        rank=info.rank,
        caption_mode=cfg.caption_mode,
        seed=cfg.train.seed,
        num_workers=cfg.train.num_workers,
        shuffle_buffer=cfg.train.shuffle_buffer,
    )
    grid = grid_embeddings(job, manifest, cfg)
    if grid is None and job.grid_out is not None:
        raise ConfigError("--grid-out needs an index file for the grid captions (--grid-index)")
    if info.is_main:
        job.workdir.mkdir(parents=True, exist_ok=True)
        write_yaml(job.workdir / "run_config.yaml", to_dict(cfg))
    monitor = training_monitor(job, cfg)
    standing = standing_embeddings(job, manifest, cfg)
    tracker = start_tracker(job, cfg, info, manifest)
    return _Prepared(stage, spec, grid, monitor, standing, tracker)


def _prepare_agreed(
    job: TrainJob, cfg: RunConfig, manifest: dict[str, Any], info: dist_utils.DistInfo
) -> _Prepared:
    """:func:`_prepare` on every rank; if any rank failed, every rank raises StartError."""
    prepared, error = None, None
    try:
        prepared = _prepare(job, cfg, manifest, info)
    except Exception as err:  # reported below, on every rank
        error = f"{type(err).__name__}: {err}"
    errors = [e for e in dist_utils.all_gather_object(error) if e]
    if errors:
        raise StartError(errors[0])
    return prepared  # type: ignore[return-value]


# --------------------------------------------------------------------------- the job


def run_training(job: TrainJob, cfg: RunConfig, manifest: dict[str, Any]) -> LoopResult:
    """Set up the process group, train, write outputs; shut the process group down.

    Raises:
        StartError: a rank could not prepare the run (nothing was computed).
        NonFiniteLossError: a loss became NaN/inf (logged; the tracker run is FAILED).
        Preempted: a stop signal arrived and the state was saved (exit code 75).
    """
    from stackgan.data.loader import train_loader
    from stackgan.training.loop import training_loop

    info = dist_utils.init()
    tracker = None
    try:
        claim_workdir(job, cfg, info)
        prep = _prepare_agreed(job, cfg, manifest, info)
        tracker = prep.tracker
        history_path = job.workdir / "metrics.jsonl"

        def on_log(step: int, metrics: dict[str, float]) -> None:
            if info.is_main:
                artefacts.append_metrics(history_path, step, metrics)

        stop = StopFlag().install()
        try:
            result = training_loop(
                cfg=cfg,
                stage=prep.stage,
                make_data=lambda start: train_loader(prep.spec, start, ignore_stop_signals),
                steps_per_epoch=prep.spec.steps_per_epoch,
                workdir=job.workdir,
                out_network=job.out,
                info=info,
                tracker=tracker,
                grid_embeddings=prep.grid,
                provenance={
                    "data_manifest_sha256": _manifest_sha(job.data),
                    "world_size": info.world_size,
                },
                stop=stop,
                step_callback=on_log,
                monitor=prep.monitor,
                bn_embeddings=prep.standing,
            )
        except Preempted:
            if tracker is not None:
                tracker.close("KILLED")
            tracker = None
            raise
        except NonFiniteLossError as err:
            log.error("%s", err)
            if tracker is not None:
                tracker.close("FAILED")
            tracker = None
            raise
        finally:
            stop.restore()
        if info.is_main:
            _finish(job, cfg, info, result, tracker, history_path)
        return result
    except Exception:
        if tracker is not None:
            tracker.close("FAILED")
        raise
    finally:
        dist_utils.shutdown()


def _finish(
    job: TrainJob,
    cfg: RunConfig,
    info: dist_utils.DistInfo,
    result: LoopResult,
    tracker: Any,
    history_path: Path,
) -> None:
    """Rank 0: loss-curve PNG, grid copy, metrics JSON; the tracker run is FINISHED."""
    from stackgan.tracking.tags import JOB_FINISHED, STATUS_TAG

    history = artefacts.read_history(history_path)
    curve = artefacts.loss_curve(history, job.loss_curve or job.workdir / "loss_curves.png")
    if job.grid_out is not None:
        final_grid = job.workdir / "samples" / f"grid-{result.step:08d}.png"
        artefacts.copy_file(final_grid, job.grid_out)
    summary = {
        "stage": cfg.stage,
        "steps": result.step,
        "epochs": result.epoch,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 1),
        "world_size": info.world_size,
        "global_batch": cfg.train.batch_size * info.world_size,
        "final_metrics": result.last_metrics,
        "eval_history": artefacts.eval_history(history),
        "mlflow_run_id": getattr(tracker, "run_id", None),
    }
    if job.metrics_out:
        artefacts.write_summary(job.metrics_out, summary)
    if tracker is not None:
        tracker.log_artifact(job.workdir / "run_config.yaml")
        if curve is not None:
            tracker.log_artifact(curve)
        if job.grid_out is not None:
            tracker.log_artifact(job.grid_out)  # the final sample grid (samples.png)
        tracker.log_artifact(job.out, artifact_path="network")
        tracker.set_tags({STATUS_TAG: JOB_FINISHED})
        tracker.close("FINISHED")


def claim_workdir(job: TrainJob, cfg: RunConfig, info: dist_utils.DistInfo) -> None:
    """Make ``job.workdir`` this run's: record its identity, or, when the directory holds
    another run, stop (``on_config_change: error``, every rank raises StartError) or move
    that run to ``superseded/`` and start afresh (``restart``). Collective."""
    from stackgan.fileio import sha256_file

    stage1 = sha256_file(job.stage1_generator) if job.stage1_generator is not None else None
    current = run_identity(cfg, _manifest_sha(job.data), stage1)
    recorded = recorded_identity(job.workdir)  # every rank reads before anyone moves
    changes = identity_changes(recorded, current) if recorded is not None else []
    dist_utils.barrier()
    if changes and job.on_config_change == "error":
        raise StartError(
            f"{job.workdir} holds the training states of another run ({'; '.join(changes)}); "
            "use a fresh --workdir, restore those settings, or pass --on-config-change "
            "restart to move them aside and start at step 0"
        )
    if info.is_main:
        if changes:
            moved = supersede(job.workdir)
            log.warning(
                "%s held another run (%s): moved to %s; starting at step 0",
                job.workdir,
                "; ".join(changes),
                moved,
            )
        record_identity(job.workdir, current)
    dist_utils.barrier()


def _manifest_sha(set_dir: Path) -> str:
    from stackgan.provenance import manifest_hash

    return manifest_hash(set_dir)
