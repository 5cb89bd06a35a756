"""One training loop for both StackGAN stages.

The stages differ only in what :class:`~stackgan.stages.Stage` carries (networks,
resolution, frozen Stage-I generator) and in the data stream; nothing below branches
on the stage number. Each step is one D update then one G update (``Dmain``, ``Gmain``):

* ``Dmain``: fakes from G (with gradient only if the G step will reuse them), then D on
  (real, text) + (real, mismatched text) in one pass and on (fake, text) in a separate
  pass (separate BatchNorm statistics, as in the references); matching-aware loss.
* ``Gmain``: D frozen (``requires_grad_(False)`` and ``no_sync`` under DDP, so no D
  gradient is computed or all-reduced); fakes reused or redrawn (``g_step_fakes``);
  non-saturating loss + ``kl_weight`` x KL.

Distributed: G and D are wrapped in DDP (``find_unused_parameters=False``, no buffer
broadcast); BatchNorm statistics stay per rank during training and are averaged
across ranks in every snapshot. Every rank runs the same number of steps (infinite
resampled data), agrees on stop/checkpoint decisions with one small all-reduce per
step, and only rank 0 writes files or logs.

Resume is exact: a training state holds everything that determines the future (see
:mod:`stackgan.checkpoint`), including each rank's own BatchNorm buffers and RNGs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from stackgan import checkpoint as ckpt
from stackgan import distributed as dist_utils
from stackgan.config import ConfigError, RunConfig, to_dict
from stackgan.data.imagesets import to_float_images
from stackgan.grids import make_grid, save_png
from stackgan.losses import (
    mismatched_condition,
)
from stackgan.networks import d_condition
from stackgan.runtime import resolve_amp
from stackgan.sampling import Sampler
from stackgan.stages import Stage
from stackgan.training.step import StepContext, d_update, g_loss_terms

if TYPE_CHECKING:
    from stackgan.monitor import TrainingMonitor
    from stackgan.tracking import Tracker

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: state saved after SIGTERM/SIGUSR1; run again to resume


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite (the message names the step)."""


class Preempted(SystemExit):
    """Raised after a signal-triggered checkpoint; exits with :data:`PREEMPTED_EXIT_CODE`."""

    def __init__(self, step: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


class StopFlag:
    """Sets a flag on SIGTERM/SIGUSR1 (as forwarded by torchrun or sent by SLURM)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopFlag:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def raised(self) -> bool:
        return self.signum is not None


@dataclass
class LoopResult:
    """What a finished (or stopped) run reports."""

    step: int
    epoch: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    seconds: float = 0.0


# --------------------------------------------------------------------------- helpers


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """Steps of the whole run: epochs x steps per epoch, capped by ``max_steps``."""
    steps = cfg.train.epochs * steps_per_epoch
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def learning_rates(cfg: RunConfig, epoch: int) -> tuple[float, float]:
    """Step decay at epoch starts: ``lr x factor^(epoch // lr_decay_epochs)``
    (the references' rule).
    """
    t = cfg.train
    k = epoch // t.lr_decay_epochs if t.lr_decay_epochs > 0 else 0
    return t.lr_g * t.lr_decay_factor**k, t.lr_d * t.lr_decay_factor**k


def make_adam(
    params: list[nn.Parameter], lr: float, betas: tuple[float, float]
) -> torch.optim.Adam:
    """Adam with the fused kernel (CPU and CUDA; ~3x faster steps on CPU), same update rule."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def check_runtime_config(cfg: RunConfig, device: torch.device) -> None:
    """Fail before any compute on combinations the hardware cannot run."""
    if cfg.train.bn == "sync" and device.type != "cuda":
        raise ConfigError(
            "train.bn: 'sync' (SyncBatchNorm) needs CUDA devices; use 'per_rank' on CPU"
        )
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.amp: 'fp16' with GradScaler needs CUDA; use 'bf16' or 'fp32' on CPU"
        )


def _averaged_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU state dict whose float buffers are averaged across ranks (params are equal already)."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for name, _ in module.named_buffers():  # same order on every rank
            t = state[name]
            if t.is_floating_point():
                torch.distributed.all_reduce(t)
                t.div_(world)
    return {k: v.cpu() for k, v in state.items()}


def _own_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.named_buffers()}


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema = beta * ema + (1 - beta) * model`` for parameters; buffers copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


# --------------------------------------------------------------------------- the loop


def training_loop(
    *,
    cfg: RunConfig,
    stage: Stage,
    make_data: Callable[[int], Iterator[dict[str, torch.Tensor]]],  # start step -> batches
    steps_per_epoch: int,
    workdir: Path,
    out_network: Path,
    info: dist_utils.DistInfo,
    tracker: Tracker | None = None,
    grid_embeddings: torch.Tensor | None = None,  # [n, text_dim] fixed captions for sample grids
    provenance: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    step_callback: Callable[[int, dict[str, float]], None] | None = None,
    monitor: TrainingMonitor | None = None,  # in-training evaluation every train.eval_every steps
    bn_embeddings: torch.Tensor | None = None,  # [n, text_dim] training captions (ema_bn=standing)
) -> LoopResult:
    """Train ``stage`` until ``total_steps``; resume from ``workdir`` if it holds a state."""
    t_start = time.perf_counter()
    t = cfg.train
    device = info.device
    workdir.mkdir(parents=True, exist_ok=True)
    check_runtime_config(cfg, device)
    stop = stop or StopFlag()
    n_total = total_steps(cfg, steps_per_epoch)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format

    # Networks, optimisers, precision.
    stage.to(device, memory_format)
    stage.set_frozen_mode()
    G, D = stage.G, stage.D
    if t.bn == "sync":
        G, D = (
            nn.SyncBatchNorm.convert_sync_batchnorm(G),
            nn.SyncBatchNorm.convert_sync_batchnorm(D),
        )
        stage.G, stage.D = G, D
    G.train()
    D.train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if t.ema_beta is not None else None
    opt_g = make_adam([p for p in G.parameters() if p.requires_grad], t.lr_g, t.betas)
    opt_d = make_adam([p for p in D.parameters() if p.requires_grad], t.lr_d, t.betas)
    amp = resolve_amp(t.amp, device)
    if t.amp == "auto" and info.is_main:
        log.info("train.amp 'auto': %s on this %s", amp, device.type)
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler_g = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    scaler_d = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    noise = torch.Generator(device=device)
    noise.manual_seed(t.seed * 1_000_003 + 17 + info.rank)
    mismatch_gen = torch.Generator(device=device)
    mismatch_gen.manual_seed(t.seed * 1_000_003 + 29 + info.rank)
    torch.manual_seed(t.seed * 1_000_003 + 41 + info.rank)  # CA noise and other global draws

    # Resume.
    step, resumed_from = 0, None
    state = ckpt.find_latest(workdir)
    if state is not None:
        nets = {"G": G, "D": D, "G_ema": G_ema, "G1": stage.frozen_g1}
        _restore(state, nets, opt_g, opt_d, scaler_g, scaler_d, noise, mismatch_gen, info, cfg)
        step = resumed_from = int(state["step"])
        log.info("resumed from %s at step %d", state["_path"], step)
    elif step == 0 and info.is_main:
        log.info("no checkpoint in %s: starting at step 0", workdir)

    # Distribute.
    g_run: nn.Module = G
    d_run: nn.Module = D
    d_ddp: DDP | None = None
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        with warnings.catch_warnings():
            # broadcast_buffers=False (deprecated in favour of forward_sync_buffers) is the only
            # switch that also skips the init-time buffer sync. We need that: a resumed rank
            # restores its own BatchNorm buffers before wrapping.
            warnings.filterwarnings(
                "ignore", message=".*broadcast_buffers.*", category=FutureWarning
            )
            g_run = DDP(G, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False)
            d_run = d_ddp = DDP(
                D, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False
            )
    if t.compile:
        g_run, d_run = torch.compile(g_run), torch.compile(d_run)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def d_frozen() -> contextlib.AbstractContextManager:
        return d_ddp.no_sync() if d_ddp is not None else contextlib.nullcontext()

    step_ctx = StepContext(
        model=cfg.model,
        loss=cfg.loss,
        joint=t.d_batch == "joint",
        autocast=autocast,
        d_no_sync=d_frozen,
    )

    def d_backward(loss: torch.Tensor) -> None:
        scaler_d.scale(loss).backward()

    def save_state(at_step: int) -> None:
        nets = {"G": G, "D": D, "G_ema": G_ema, "G1": stage.frozen_g1}
        _save_state(
            workdir,
            at_step,
            steps_per_epoch,
            cfg,
            nets,
            opt_g,
            opt_d,
            scaler_g,
            scaler_d,
            noise,
            mismatch_gen,
            info,
        )

    standing = bn_embeddings if (G_ema is not None and t.ema_bn == "standing") else None

    def snapshot_sampler() -> Sampler:
        """Collective: eval-mode copy of G_ema (or G) for grids, evaluation and the network file."""
        return eval_sampler(stage, G_ema or G, cfg, standing_embeddings=standing)

    # Main loop.
    data = make_data(step)
    sums: dict[str, torch.Tensor] = {}
    n_sum, wait_sum, t_tick, last_metrics = 0, 0.0, time.perf_counter(), {}
    t_ckpt = time.monotonic()
    last_grid = last_eval = -1
    reuse = t.g_step_fakes == "reuse"
    while step < n_total:
        epoch = step // steps_per_epoch
        lr_g, lr_d = learning_rates(cfg, epoch)
        for group in opt_g.param_groups:
            group["lr"] = lr_g
        for group in opt_d.param_groups:
            group["lr"] = lr_d

        # Fetch data.
        t0 = time.perf_counter()
        batch = next(data)
        wait_sum += time.perf_counter() - t0
        if int(batch.get("step", step)) != step:
            raise RuntimeError(
                f"data stream out of sync: got step {int(batch['step'])}, expected {step}"
            )
        real = to_float_images(batch["image"].to(device, non_blocking=True)).contiguous(
            memory_format=memory_format
        )
        emb = batch["emb"].to(device, non_blocking=True)
        class_ids = batch["class_id"].to(device, non_blocking=True)
        z = torch.randn(real.shape[0], cfg.model.z_dim, device=device, generator=noise)

        # Dmain.
        D.requires_grad_(True)
        with autocast(), torch.set_grad_enabled(reuse):
            fake, mu, logvar, low = stage.generate_with_input(g_run, emb, z)
        opt_d.zero_grad(set_to_none=True)
        with autocast():
            cond = d_condition(cfg.model, emb, mu)
            wrong = mismatched_condition(cond, class_ids, cfg.loss.mismatch, mismatch_gen)
        loss_d, parts = d_update(d_run, step_ctx, real, fake.detach(), cond, wrong, d_backward)
        scaler_d.step(opt_d)
        scaler_d.update()
        opt_d.zero_grad(set_to_none=True)  # free D's gradients before the G step (lower peak)

        # Gmain.
        D.requires_grad_(False)
        if not reuse:
            z = torch.randn(real.shape[0], cfg.model.z_dim, device=device, generator=noise)
            with autocast():
                fake, mu, logvar, low = stage.generate_with_input(g_run, emb, z)
        loss_g, g_parts = g_loss_terms(d_run, step_ctx, real, fake, emb, mu, logvar, low, wrong)
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(loss_g).backward()
        scaler_g.step(opt_g)
        scaler_g.update()
        opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(True)
        if G_ema is not None:
            update_ema(G_ema, G, t.ema_beta)  # type: ignore[arg-type]

        # Guards and statistics.
        losses = torch.stack([loss_d.detach().float(), loss_g.detach().float()])
        if not bool(torch.isfinite(losses).all()):
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (epoch {epoch}): "
                f"loss_d={losses[0].item()}, loss_g={losses[1].item()}; "
                "try a lower learning rate or amp: fp32"
            )
        consistency = g_parts.pop("stage_consistency", None)
        step_stats = {"loss_d": loss_d, "loss_g": loss_g, **g_parts, **parts}
        if consistency is not None:
            step_stats["stage_consistency"] = consistency
        for k, v in step_stats.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
        n_sum += 1
        step += 1

        # Agree on stopping and checkpointing (one tiny all-reduce per step).
        due = (
            t.checkpoint_every_minutes > 0
            and time.monotonic() - t_ckpt >= 60 * t.checkpoint_every_minutes
        )
        due = due or (t.checkpoint_every_steps > 0 and step % t.checkpoint_every_steps == 0)
        stop_now, ckpt_now = dist_utils.all_reduce_max([float(stop.raised), float(due)], device)

        # Maintenance.
        if step % t.log_every == 0 or step == n_total or stop_now:
            elapsed = time.perf_counter() - t_tick
            metrics = {k: (v / n_sum).item() for k, v in sums.items()}
            metrics = dist_utils.all_reduce_mean(metrics, device)
            metrics.update(
                lr_g=lr_g,
                lr_d=lr_d,
                epoch=float(epoch),
                img_per_s=n_sum * real.shape[0] * info.world_size / max(elapsed, 1e-9),
                data_wait_frac=wait_sum / max(elapsed, 1e-9),
            )
            last_metrics = metrics
            if info.is_main:
                _log_progress(
                    step, n_total, epoch, metrics, time.perf_counter() - t_start, resumed_from
                )
                if tracker is not None:
                    tracker.log_metrics(metrics, step=step)
            if step_callback is not None:
                step_callback(step, metrics)
            sums, n_sum, wait_sum, t_tick = {}, 0, 0.0, time.perf_counter()
        grid_due = bool(t.sample_every) and grid_embeddings is not None
        grid_due = grid_due and step % t.sample_every == 0
        eval_due = monitor is not None and bool(t.eval_every) and step % t.eval_every == 0
        if grid_due or eval_due:  # collective: every rank takes the same branch
            sampler = snapshot_sampler()
            if grid_due and info.is_main:
                _sample_grid(sampler, grid_embeddings, cfg, device, workdir, step, tracker)
            if grid_due:
                last_grid = step
            if eval_due:
                _run_monitor(monitor, sampler, info, step, tracker, step_callback)  # type: ignore[arg-type]
                last_eval = step
        if ckpt_now or stop_now:
            save_state(step)
            t_ckpt = time.monotonic()
        if stop_now:
            if info.is_main:
                log.warning(
                    "stop signal received: saved state at step %d; exiting with code %d",
                    step,
                    PREEMPTED_EXIT_CODE,
                )
            raise Preempted(step)

    # Final snapshot: consistent BN statistics on every rank, then the network file.
    dist_utils.sync_buffers(G)
    dist_utils.sync_buffers(D)
    if G_ema is not None:
        dist_utils.sync_buffers(G_ema)
    if resumed_from is None or resumed_from < n_total:
        save_state(step)
    final = snapshot_sampler()
    if monitor is not None and last_eval != step:
        _run_monitor(monitor, final, info, step, tracker, step_callback)
    if info.is_main:
        if grid_embeddings is not None and last_grid != step:
            _sample_grid(final, grid_embeddings, cfg, device, workdir, step, tracker)
        ema_state = None
        if G_ema is not None:  # with ema_bn=standing, the recomputed BatchNorm statistics
            ema_state = {k: v.detach().cpu() for k, v in final.trained.state_dict().items()}
        payload = {
            "stage": stage.number,
            "step": step,
            "model": to_dict(cfg.model),
            "config": to_dict(cfg),
            "G": {k: v.detach().cpu() for k, v in G.state_dict().items()},
            "G_ema": ema_state,
            "provenance": provenance or {},
            **stage.network_payload(),
        }
        ckpt.save_network(out_network, payload)
        log.info("wrote %s (stage %d, step %d)", out_network, stage.number, step)
    dist_utils.barrier()
    return LoopResult(
        step,
        step // steps_per_epoch,
        last_metrics,
        resumed_from,
        time.perf_counter() - t_start,
    )


# --------------------------------------------------------------------------- state I/O


def _save_state(
    workdir: Path,
    step: int,
    steps_per_epoch: int,
    cfg: RunConfig,
    nets: dict[str, nn.Module | None],
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    scaler_g: torch.amp.GradScaler,
    scaler_d: torch.amp.GradScaler,
    noise: torch.Generator,
    mismatch_gen: torch.Generator,
    info: dist_utils.DistInfo,
) -> None:
    """Collective: every rank contributes its RNG and BN buffers; rank 0 writes atomically.

    ``nets`` maps "G", "D", "G_ema", "G1" (the frozen Stage-I G, whose buffers drift in
    the reference's train-mode BN) to modules or None.
    """
    rng = dist_utils.all_gather_object(
        {"rng": ckpt.capture_rng(noise), "mismatch": mismatch_gen.get_state()}
    )
    buffers = dist_utils.all_gather_object(
        {k: _own_buffers(m) if m is not None else None for k, m in nets.items()}
    )
    averaged = {
        k: _averaged_state(m) if m is not None else None for k, m in nets.items() if k != "G1"
    }
    if info.is_main:
        state = {
            "format": ckpt.STATE_FORMAT,
            "step": step,
            "epoch": step // steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "world_size": info.world_size,
            "config": to_dict(cfg),
            **averaged,
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict(),
            "scaler_d": scaler_d.state_dict(),
            "rng": rng,
            "rank_buffers": buffers,
            "data": {
                "seed": cfg.train.seed,
                "next_step": step,
                "num_workers": cfg.train.num_workers,
            },
        }
        ckpt.save(state, ckpt.state_path(workdir, step))
        ckpt.prune(workdir, cfg.train.keep_checkpoints)
    dist_utils.barrier()


def _restore(
    state: dict[str, Any],
    nets: dict[str, nn.Module | None],
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    scaler_g: torch.amp.GradScaler,
    scaler_d: torch.amp.GradScaler,
    noise: torch.Generator,
    mismatch_gen: torch.Generator,
    info: dist_utils.DistInfo,
    cfg: RunConfig,
) -> None:
    """Load a training state into the live objects of this rank."""
    if state.get("config", {}).get("model") != to_dict(cfg.model):
        raise ConfigError(
            f"{state['_path']}: the checkpoint was trained with another model config; "
            "use a fresh work directory or restore the original config"
        )
    G, D, G_ema = nets["G"], nets["D"], nets["G_ema"]
    G.load_state_dict(state["G"])  # type: ignore[union-attr]
    D.load_state_dict(state["D"])  # type: ignore[union-attr]
    if G_ema is not None:
        G_ema.load_state_dict(state["G_ema"] if state.get("G_ema") is not None else G.state_dict())  # type: ignore[union-attr]
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    scaler_g.load_state_dict(state["scaler_g"])
    scaler_d.load_state_dict(state["scaler_d"])
    if int(state.get("world_size", 1)) == info.world_size:
        mine = state["rng"][info.rank]
        ckpt.restore_rng(mine["rng"], noise)
        mismatch_gen.set_state(mine["mismatch"])
        own = state["rank_buffers"][info.rank]
        for key, module in nets.items():
            if module is not None and own.get(key) is not None:
                for name, buf in module.named_buffers():
                    buf.copy_(own[key][name])
    else:
        log.warning(
            "checkpoint was written with world size %s, now %d: RNG streams restart from the seed "
            "(training continues, but not bit-identically)",
            state.get("world_size"),
            info.world_size,
        )
    if int(state["data"].get("num_workers", cfg.train.num_workers)) != cfg.train.num_workers:
        log.warning(
            "num_workers changed since the checkpoint: "
            "the data stream differs from an uninterrupted run"
        )


# --------------------------------------------------------------------------- reporting


def _log_progress(
    step: int, n_total: int, epoch: int, m: dict[str, float], elapsed: float, resumed: int | None
) -> None:
    done = step - (resumed or 0)
    eta = elapsed / max(done, 1) * (n_total - step)
    log.info(
        "step %d/%d (epoch %d) loss_d %.4f loss_g %.4f kl %.4f "
        "D(real) %.3f D(wrong) %.3f D(fake) %.3f "
        "lr %.2e | %.1f img/s, data wait %.0f%% | eta %s",
        step,
        n_total,
        epoch,
        m.get("loss_d", math.nan),
        m.get("loss_g", math.nan),
        m.get("kl", math.nan),
        m.get("d_real", math.nan),
        m.get("d_wrong", math.nan),
        m.get("d_fake", math.nan),
        m.get("lr_g", math.nan),
        m.get("img_per_s", math.nan),
        100 * m.get("data_wait_frac", math.nan),
        _fmt_seconds(eta),
    )


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def eval_sampler(
    stage: Stage, G: nn.Module, cfg: RunConfig, standing_embeddings: torch.Tensor | None = None
) -> Sampler:
    """Collective: an eval-mode copy of ``G`` (BatchNorm buffers averaged across ranks)
    as a Sampler.

    With ``standing_embeddings`` the copy's BatchNorm statistics are recomputed for its own
    weights (standing statistics; the same on every rank), as EMA weights need.
    """
    g = copy.deepcopy(G)
    g.load_state_dict(_averaged_state(G))
    if stage.frozen_g1 is None:
        sampler = Sampler(1, cfg.model, g, None, {"weights": "live"})
    else:
        sampler = Sampler(2, cfg.model, copy.deepcopy(stage.frozen_g1), g, {"weights": "live"})
    if standing_embeddings is not None:
        sampler.recompute_bn_statistics(standing_embeddings, seed=cfg.train.seed + 4242)
    return sampler


def _run_monitor(
    monitor: TrainingMonitor,
    sampler: Sampler,
    info: dist_utils.DistInfo,
    step: int,
    tracker: Tracker | None,
    step_callback: Callable[[int, dict[str, float]], None] | None,
) -> dict[str, float]:
    """Collective: evaluate ``sampler`` on the fixed test captions; log on rank 0."""
    metrics = monitor.evaluate(sampler, info)
    if info.is_main:
        log.info(
            "eval at step %d: body %.3f (chance %.3f) wing %.3f (chance %.3f) joint %.3f | "
            "twin-FID %.2f diversity %.2f%s | %.1f s",
            step,
            metrics["eval.body_accuracy"],
            metrics["eval.body_chance"],
            metrics["eval.wing_accuracy"],
            metrics["eval.wing_chance"],
            metrics["eval.joint_accuracy"],
            metrics["eval.twin_fid"],
            metrics.get("eval.diversity", math.nan),
            f" consistency {metrics['eval.consistency_attributes']:.3f}"
            if "eval.consistency_attributes" in metrics
            else "",
            metrics["eval.seconds"],
        )
        if tracker is not None:
            tracker.log_metrics(metrics, step=step)
    if step_callback is not None:
        step_callback(step, metrics)
    return metrics


@torch.no_grad()
def _sample_grid(
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
