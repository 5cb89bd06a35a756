"""Evaluation points of a training run: eval-mode snapshots, sample grids, the monitor,
and the final network file.

Every function marked *collective* must be called by every rank in the same order (it
averages BatchNorm buffers across ranks).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from stackgan import distributed as dist_utils
from stackgan.config import RunConfig, to_dict
from stackgan.grids import make_grid, save_png
from stackgan.networkfile import NetworkFile, cpu_state, write_network
from stackgan.sampling import Sampler
from stackgan.stages import Stage
from stackgan.training.state import averaged_state

if TYPE_CHECKING:
    from stackgan.monitor import TrainingMonitor
    from stackgan.tracking import Tracker

log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]


def eval_sampler(
    stage: Stage, G: nn.Module, cfg: RunConfig, standing_embeddings: torch.Tensor | None = None
) -> Sampler:
    """Collective: an eval-mode copy of ``G`` (BatchNorm buffers averaged across ranks)
    as a Sampler.

    With ``standing_embeddings`` the copy's BatchNorm statistics are recomputed for its own
    weights (standing statistics; the same on every rank), as EMA weights need.
    """
    g = copy.deepcopy(G)
    g.load_state_dict(averaged_state(G))
    if stage.frozen_g1 is None:
        sampler = Sampler(1, cfg.model, g, None, {"weights": "live"})
    else:
        sampler = Sampler(2, cfg.model, copy.deepcopy(stage.frozen_g1), g, {"weights": "live"})
    if standing_embeddings is not None:
        sampler.recompute_bn_statistics(standing_embeddings, seed=cfg.train.seed + 4242)
    return sampler


def run_monitor(
    monitor: TrainingMonitor,
    sampler: Sampler,
    info: dist_utils.DistInfo,
    step: int,
    tracker: Tracker | None,
    step_callback: StepCallback | None,
) -> dict[str, float]:
    """Collective: evaluate ``sampler`` on the fixed test captions; log on rank 0."""
    metrics = monitor.evaluate(sampler, info)
    if info.is_main:
        log.info(
            "eval at step %d: %s | %.1f s", step, describe_eval(metrics), metrics["eval.seconds"]
        )
        if tracker is not None:
            tracker.log_metrics(metrics, step=step)
    if step_callback is not None:
        step_callback(step, metrics)
    return metrics


def describe_eval(metrics: dict[str, float]) -> str:
    """One log line's worth of an evaluation point (the metrics it has)."""
    parts = []
    if "eval.body_accuracy" in metrics:
        m = metrics
        parts.append(
            f"body {m['eval.body_accuracy']:.3f} (chance {m['eval.body_chance']:.3f}) "
            f"wing {m['eval.wing_accuracy']:.3f} (chance {m['eval.wing_chance']:.3f}) "
            f"joint {m['eval.joint_accuracy']:.3f} | twin-FID {m['eval.twin_fid']:.2f} "
            f"diversity {m.get('eval.diversity', math.nan):.2f}"
        )
    if "eval.consistency_attributes" in metrics:
        parts.append(f"consistency {metrics['eval.consistency_attributes']:.3f}")
    if "eval.inception_fid" in metrics:
        parts.append(f"Inception FID (small sample) {metrics['eval.inception_fid']:.2f}")
    return " ".join(parts) if parts else "no metrics"


@torch.no_grad()
def sample_grid(
    sampler: Sampler,
    embeddings: torch.Tensor,
    cfg: RunConfig,
    device: torch.device,
    workdir: Path,
    step: int,
    tracker: Tracker | None,
) -> Path:
    """Fixed captions x fixed noise from the eval-mode snapshot; PNG in ``workdir/samples``."""
    n_cap, n_smp = embeddings.shape[0], cfg.train.grid_samples
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.train.seed + 12345)
    z = torch.randn(n_cap * n_smp, cfg.model.z_dim, device=device, generator=gen)
    emb = embeddings.to(device).repeat_interleave(n_smp, dim=0)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the grid's CA noise; training RNG untouched
        torch.manual_seed(cfg.train.seed + 54321)
        fake = sampler(emb, z).final
    grid = make_grid(fake.float(), ncol=n_smp)
    path = save_png(grid, workdir / "samples" / f"grid-{step:08d}.png")
    if tracker is not None:
        tracker.log_image(grid, key="samples", step=step)
    return path


def write_final_network(
    path: Path,
    *,
    stage: Stage,
    step: int,
    cfg: RunConfig,
    G: nn.Module,
    final: Sampler | None,
    provenance: dict[str, Any] | None,
) -> None:
    """Write the network file: G, the snapshot's G_ema when EMA is on (``final``; with
    ``ema_bn=standing`` its recomputed BatchNorm statistics), and Stage-II's frozen G1."""
    net = NetworkFile(
        stage=stage.number,
        step=step,
        model=to_dict(cfg.model),
        config=to_dict(cfg),
        G=cpu_state(G),
        G_ema=cpu_state(final.trained) if final is not None else None,
        provenance=provenance or {},
        **stage.network_payload(),
    )
    write_network(path, net)
    log.info("wrote %s (stage %d, step %d)", path, stage.number, step)
