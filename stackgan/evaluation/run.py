"""One generator's evaluation: activations (cached), the registered metrics, a grid, the result.

:func:`evaluate` writes ``metrics.json`` (values, sample count, implementation, weight
hashes, reference set), ``grid.png`` and ``activations.h5`` (cached features/logits/
attribute predictions of this generator; reused when the generator file and protocol are
unchanged) into the output directory, and logs the result to MLflow when a tracking URI is
given. It runs on one process or under torchrun (generation is sharded; rank 0 writes the
results). Bad inputs raise before any generation (``ValueError``, ``OSError``,
:class:`~stackgan.checkpoint.CheckpointError`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stackgan import distributed as dist_utils
from stackgan.config import EvalConfig
from stackgan.evaluation.activations import generate_activations, read_cache, write_cache
from stackgan.evaluation.grid import evaluation_grid
from stackgan.evaluation.protocol import Protocol, Requests, load_requests
from stackgan.evaluation.reference import (
    NO_WEIGHTS_REASON,
    ExtractorSpec,
    build_extractor,
    read_real_stats,
)
from stackgan.evaluation.registry import MetricInputs, MetricOptions, compute_metrics
from stackgan.fileio import sha256_file, write_json
from stackgan.grids import save_png
from stackgan.sampling import Sampler

log = logging.getLogger("stackgan.evaluate")


@dataclass(frozen=True)
class EvalOptions:
    """What to compute besides the protocol, and from which files."""

    real_stats: Path | None = None  # stackgan evaluate real-stats output, for FID/KID
    attribute_classifier: Path | None = None  # twin attribute classifier (conditional accuracy)
    require_metrics: bool = EvalConfig.require_metrics  # missing weights/real stats: errors
    recompute: bool = False  # ignore an existing activation cache
    is_splits: int = EvalConfig.is_splits
    kid_subsets: int = EvalConfig.kid_subsets
    kid_subset_size: int = EvalConfig.kid_subset_size
    grid_captions: int = EvalConfig.grid_captions
    grid_samples: int = EvalConfig.grid_samples
    metrics: tuple[str, ...] | None = None  # registered metric names; None: every available


@dataclass(frozen=True)
class TrackingOptions:
    """Where (and whether) to log the result to MLflow; no URI: no tracking."""

    tracking_uri: str | None = None
    experiment: str = "stackgan"
    run_name: str | None = None  # default: eval-stage<N>
    parent_run_id_file: Path | None = None
    preset: str | None = None
    dataset_name: str | None = None


@dataclass
class EvalInputs:
    """Everything loaded (and checked) before generation starts."""

    sampler: Sampler
    requests: Requests
    extractor: Any | None
    classifier: Any | None
    real_features: np.ndarray | None
    real_meta: dict[str, Any] | None
    skipped: dict[str, str]


def _reference(
    extractor: Any, options: EvalOptions, skipped: dict[str, str]
) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The reference set's features and metadata, or (None, None) with FID/KID skipped."""
    if options.real_stats is None or not options.real_stats.is_file():
        reason = f"no real-image statistics file ({options.real_stats or '--real-stats not given'})"
        if options.require_metrics:
            raise ValueError(f"--require-metrics: {reason}")
        skipped.update({"fid": reason, "kid": reason})
        return None, None
    real, real_meta = read_real_stats(options.real_stats)
    if real_meta.get("weights_sha256") != (extractor.weights_sha256 or ""):
        raise ValueError(
            f"{options.real_stats}: made with extractor weights "
            f"{real_meta.get('weights_sha256')!r}, not {extractor.weights_sha256!r}"
        )
    return real, real_meta


def load_inputs(
    network: Path, index: Path, protocol: Protocol, options: EvalOptions, spec: ExtractorSpec
) -> EvalInputs:
    """Extractor, reference set, classifier, generator and requests; what is skipped and why."""
    skipped: dict[str, str] = {}
    extractor = build_extractor(spec)
    if extractor is None:
        if options.require_metrics:
            raise ValueError(f"--require-metrics: {NO_WEIGHTS_REASON}")
        skipped.update(
            {"is": NO_WEIGHTS_REASON, "fid": NO_WEIGHTS_REASON, "kid": NO_WEIGHTS_REASON}
        )
    real, real_meta = None, None
    if extractor is not None:
        real, real_meta = _reference(extractor, options, skipped)
    classifier = None
    if options.attribute_classifier is not None:
        from stackgan.evaluation.attributes.model import load_classifier

        classifier = load_classifier(options.attribute_classifier)
    else:
        skipped["conditional_accuracy"] = "no attribute classifier (synthetic twin only)"
    sampler = Sampler.load(network, use_ema=protocol.use_ema, channels_last=protocol.channels_last)
    requests = load_requests(index, protocol)
    return EvalInputs(sampler, requests, extractor, classifier, real, real_meta, skipped)


def _cache_meta(
    network: Path, protocol: Protocol, inputs: EvalInputs, classifier_path: Path | None
) -> dict[str, Any]:
    """What an activation cache must have been made with to be reused."""
    return {
        "network_sha256": sha256_file(network),
        "protocol": asdict(protocol),
        "extractor": inputs.extractor.metadata() if inputs.extractor is not None else None,
        "attribute_classifier_sha256": sha256_file(classifier_path)
        if inputs.classifier is not None
        else None,
    }


def _activations(
    inputs: EvalInputs,
    protocol: Protocol,
    meta: dict[str, Any],
    out: Path,
    recompute: bool,
    info: dist_utils.DistInfo,
) -> dict[str, np.ndarray] | None:
    """The cached activations when every rank finds them valid, else freshly generated ones
    (written to the cache); on rank 0 (``None`` elsewhere)."""
    cache = out / "activations.h5"
    cached = None if recompute else read_cache(cache, meta)
    if all(dist_utils.all_gather_object(cached is not None)):
        if info.is_main:
            log.info("using cached activations %s", cache)
        return cached if info.is_main else None
    t0 = time.perf_counter()
    arrays = generate_activations(
        inputs.sampler,
        inputs.requests,
        protocol,
        extractor=inputs.extractor,
        classifier=inputs.classifier,
        part_dir=out,
        info=info,
    )
    if info.is_main:
        write_cache(cache, arrays, meta, inputs.requests)
        log.info("generated %d images in %.0f s", len(inputs.requests), time.perf_counter() - t0)
    return arrays


def _result(
    inputs: EvalInputs,
    metrics: dict[str, float],
    notes: list[str],
    meta: dict[str, Any],
    out: Path,
    options: EvalOptions,
    grid_path: Path,
) -> dict[str, Any]:
    """The metrics.json record."""
    from stackgan.metrics.scores import implementation_info

    real_meta = inputs.real_meta
    return {
        "metrics": metrics,
        "skipped": inputs.skipped,
        "notes": notes,
        "samples": len(inputs.requests),
        "network": {**inputs.sampler.meta, "sha256": meta["network_sha256"]},
        "protocol": meta["protocol"],
        "extractor": meta["extractor"],
        "implementation": implementation_info(),
        "reference_set": (
            {
                "file": str(options.real_stats),
                "sha256": sha256_file(options.real_stats),
                **real_meta,
            }
            if real_meta
            else None
        ),
        "grid": str(grid_path),
        "activations": str(out / "activations.h5"),
    }


def evaluate(
    network: Path,
    index: Path,
    out: Path,
    protocol: Protocol | None = None,
    options: EvalOptions | None = None,
    extractor: ExtractorSpec | None = None,
    tracking: TrackingOptions | None = None,
) -> dict[str, Any] | None:
    """Evaluate the generator file ``network`` on the test index ``index`` into ``out``.

    Returns the metrics.json record on rank 0 and ``None`` on the other ranks.
    """
    protocol = protocol or Protocol()
    options = options or EvalOptions()
    tracking = tracking or TrackingOptions()
    inputs = load_inputs(network, index, protocol, options, extractor or ExtractorSpec())
    info = dist_utils.init()
    try:
        meta = _cache_meta(network, protocol, inputs, options.attribute_classifier)
        arrays = _activations(inputs, protocol, meta, out, options.recompute, info)
        if not info.is_main:
            return None
        metric_inputs = MetricInputs(
            arrays,
            inputs.real_features,
            inputs.requests.captions,
            MetricOptions(
                options.is_splits, options.kid_subsets, options.kid_subset_size, protocol.seed
            ),
        )
        metrics = compute_metrics(metric_inputs, options.metrics)
        grid = evaluation_grid(
            inputs.sampler,
            inputs.requests,
            options.grid_captions,
            options.grid_samples,
            protocol.seed,
        )
        grid_path = save_png(grid, out / "grid.png")
        result = _result(inputs, metrics, metric_inputs.notes, meta, out, options, grid_path)
        write_json(out / "metrics.json", result)
        log_to_tracker(tracking, out, result, inputs.sampler.stage, (network, index))
        print_summary(result)
        return result
    finally:
        dist_utils.shutdown()


def print_summary(result: dict[str, Any]) -> None:
    """Log the metrics (chance levels and the count left out) and what was skipped."""
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


def log_to_tracker(
    tracking: TrackingOptions,
    out: Path,
    result: dict[str, Any],
    stage: int,
    inputs: tuple[Path, Path] | None = None,
) -> None:
    """An MLflow run (child of the pipeline's parent run) with the result; nothing without a
    URI. ``inputs`` (network file, test index) become the run's dataset inputs."""
    if not tracking.tracking_uri:
        return
    from stackgan.provenance import index_input, network_input
    from stackgan.tracking import MLflowTracker, read_run_id
    from stackgan.tracking.tags import JOB_FINISHED, STAGE_TAG, STATUS_TAG, evaluation_stage

    parent = read_run_id(tracking.parent_run_id_file) if tracking.parent_run_id_file else None
    tracker = MLflowTracker.start(
        tracking_uri=tracking.tracking_uri,
        experiment=tracking.experiment,
        run_name=tracking.run_name or f"eval-stage{stage}",
        parent_run_id=parent,
        run_id_file=out / "mlflow_run_id.txt",
        tags={
            STAGE_TAG: evaluation_stage(stage),
            STATUS_TAG: JOB_FINISHED,
            "preset": tracking.preset or "none",
            "dataset": tracking.dataset_name or "unknown",
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
        if inputs is not None:
            network_sha = result["network"]["sha256"]  # hashed once, for the cache key
            tracker.log_input(network_input(inputs[0], context="evaluated", sha256=network_sha))
            tracker.log_input(index_input(inputs[1], context="evaluation"))
        tracker.log_metrics({k: float(v) for k, v in result["metrics"].items()}, step=0)
        tracker.log_artifact(out / "metrics.json", artifact_path="eval")
        tracker.log_artifact(out / "grid.png", artifact_path="eval")


__all__ = [
    "EvalInputs",
    "EvalOptions",
    "TrackingOptions",
    "evaluate",
    "load_inputs",
    "log_to_tracker",
    "print_summary",
]
