"""One training loop for both StackGAN stages.

The stages differ only in what :class:`~stackgan.stages.Stage` carries (networks,
resolution, frozen Stage-I generator) and in the data stream; nothing below branches
on the stage number. Each step is one D update then one G update (``Dmain``, ``Gmain``,
the functions of :mod:`stackgan.training.step`):

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
:mod:`stackgan.training.state`), including each rank's own BatchNorm buffers and RNGs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from stackgan import distributed as dist_utils
from stackgan.augment import diff_augment
from stackgan.config import RunConfig
from stackgan.data.imagesets import to_float_images
from stackgan.losses import interpolated_captions, mismatched_condition, mode_seeking_loss
from stackgan.networks import d_condition
from stackgan.runtime import resolve_amp
from stackgan.sampling import Sampler
from stackgan.stages import Stage
from stackgan.training.control import (
    PREEMPTED_EXIT_CODE,
    LoopResult,
    NonFiniteLossError,
    Preempted,
    StopFlag,
)
from stackgan.training.schedule import (
    check_runtime_config,
    learning_rates,
    make_adam,
    total_steps,
    update_ema,
)
from stackgan.training.snapshots import (
    StepCallback,
    eval_sampler,
    run_monitor,
    sample_grid,
    write_final_network,
)
from stackgan.training.state import TrainState, agree_on_resume
from stackgan.training.step import StepContext, d_update, g_loss_terms

if TYPE_CHECKING:
    from stackgan.monitor import TrainingMonitor
    from stackgan.tracking import Tracker

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
#: (fake, mu, logvar, the Stage-I image a Stage-II fake was made from)
Fakes = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


# --------------------------------------------------------------------------- the loop


def training_loop(
    *,
    cfg: RunConfig,
    stage: Stage,
    make_data: Callable[[int], Iterator[Batch]],  # start step -> batches
    steps_per_epoch: int,
    workdir: Path,
    out_network: Path,
    info: dist_utils.DistInfo,
    tracker: Tracker | None = None,
    grid_embeddings: torch.Tensor | None = None,  # [n, text_dim] fixed captions for sample grids
    provenance: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    step_callback: StepCallback | None = None,
    monitor: TrainingMonitor | None = None,  # in-training evaluation every train.eval_every steps
    bn_embeddings: torch.Tensor | None = None,  # [n, text_dim] training captions (ema_bn=standing)
) -> LoopResult:
    """Train ``stage`` until ``total_steps``; resume from ``workdir`` if it holds a state."""
    t_start = time.perf_counter()
    # Setup: fail early on impossible configs; networks, optimisers, precision, RNG streams.
    workdir.mkdir(parents=True, exist_ok=True)
    check_runtime_config(cfg, info.device)
    stop = stop or StopFlag()
    n_total = total_steps(cfg, steps_per_epoch)
    trainer = _Trainer.build(cfg, stage, info)
    # Resume: each rank restores its own state (before DDP, which would sync buffers).
    resumed_from = agree_on_resume(trainer.state.resume(workdir, info, cfg), info)
    step = resumed_from or 0
    # Distribute: DDP wrappers, torch.compile, the step context.
    trainer.distribute()
    points = _EvalPoints(trainer, workdir, tracker, grid_embeddings, monitor, step_callback)
    points.standing = bn_embeddings if trainer.standing_bn else None
    # Main loop: one D and one G update per step, then the maintenance every rank agrees on.
    data = make_data(step)
    window = _MetricWindow()
    t_ckpt = time.monotonic()
    while step < n_total:
        epoch = step // steps_per_epoch
        lr_g, lr_d = trainer.set_learning_rates(epoch)
        batch = window.fetch(data)
        stats, batch_size = trainer.train_step(batch, step, epoch)
        window.add(stats, batch_size)
        step += 1
        stop_now, ckpt_now = _agree(cfg, stop, t_ckpt, step, info.device)
        # Logging: the window's mean metrics, on every rank's agreement.
        if step % cfg.train.log_every == 0 or step == n_total or stop_now:
            metrics = window.report(lr_g, lr_d, epoch, info)
            if info.is_main:
                _log_progress(
                    step, n_total, epoch, metrics, time.perf_counter() - t_start, resumed_from
                )
                if tracker is not None:
                    tracker.log_metrics(metrics, step=step)
            if step_callback is not None:
                step_callback(step, metrics)
        # Evaluation point: sample grid and/or in-training evaluation (collective).
        points.maybe_run(step)
        # Checkpoint and preemption.
        if ckpt_now or stop_now:
            trainer.save_state(workdir, step, steps_per_epoch)
            t_ckpt = time.monotonic()
        if stop_now:
            if info.is_main:
                log.warning(
                    "stop signal received: saved state at step %d; exiting with code %d",
                    step,
                    PREEMPTED_EXIT_CODE,
                )
            raise Preempted(step)
    # Final artefacts: consistent BN statistics, last state, evaluation, the network file.
    trainer.sync_buffers()
    if resumed_from is None or resumed_from < n_total:
        trainer.save_state(workdir, step, steps_per_epoch)
    points.finish(step, out_network, provenance)
    dist_utils.barrier()
    return LoopResult(
        step, step // steps_per_epoch, window.last, resumed_from, time.perf_counter() - t_start
    )


def _agree(
    cfg: RunConfig, stop: StopFlag, t_ckpt: float, step: int, device: torch.device
) -> tuple[float, float]:
    """(stop now, checkpoint now), agreed by every rank (one tiny all-reduce per step)."""
    t = cfg.train
    due = t.checkpoint_every_minutes > 0 and (
        time.monotonic() - t_ckpt >= 60 * t.checkpoint_every_minutes
    )
    due = due or (t.checkpoint_every_steps > 0 and step % t.checkpoint_every_steps == 0)
    stop_now, ckpt_now = dist_utils.all_reduce_max([float(stop.raised), float(due)], device)
    return stop_now, ckpt_now


# --------------------------------------------------------------------------- one rank's trainer


@dataclass
class _Trainer:
    """One rank's training machinery: the live state, precision and the (wrapped) networks."""

    cfg: RunConfig
    stage: Stage
    info: dist_utils.DistInfo
    state: TrainState
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    g_run: nn.Module | None = None
    d_run: nn.Module | None = None
    d_ddp: DDP | None = None
    ctx: StepContext | None = None

    @classmethod
    def build(cls, cfg: RunConfig, stage: Stage, info: dist_utils.DistInfo) -> _Trainer:
        """Networks on the device, EMA copy, optimisers, grad scalers and seeded RNGs."""
        t, device = cfg.train, info.device
        memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
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
        mismatch = torch.Generator(device=device)
        mismatch.manual_seed(t.seed * 1_000_003 + 29 + info.rank)
        torch.manual_seed(t.seed * 1_000_003 + 41 + info.rank)  # CA noise and other global draws
        augment = torch.Generator(device=device)
        augment.manual_seed(t.seed * 1_000_003 + 53 + info.rank)
        state = TrainState(
            G, D, G_ema, stage.frozen_g1, opt_g, opt_d, scaler_g, scaler_d, noise, mismatch, augment
        )
        return cls(cfg, stage, info, state, amp_dtype, memory_format)

    @property
    def standing_bn(self) -> bool:
        """Whether snapshots recompute G_ema's BatchNorm statistics (``ema_bn=standing``)."""
        return self.state.G_ema is not None and self.cfg.train.ema_bn == "standing"

    def distribute(self) -> None:
        """Wrap G and D in DDP (multi-process) and ``torch.compile`` (if asked)."""
        G, D, device = self.state.G, self.state.D, self.info.device
        g_run: nn.Module = G
        d_run: nn.Module = D
        if self.info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            with warnings.catch_warnings():
                # broadcast_buffers=False (deprecated in favour of forward_sync_buffers) is the
                # only switch that also skips the init-time buffer sync. We need that: a resumed
                # rank restores its own BatchNorm buffers before wrapping.
                warnings.filterwarnings(
                    "ignore", message=".*broadcast_buffers.*", category=FutureWarning
                )
                g_run = DDP(
                    G, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False
                )
                d_run = self.d_ddp = DDP(
                    D, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False
                )
        if self.cfg.train.compile:
            g_run, d_run = torch.compile(g_run), torch.compile(d_run)
        self.g_run, self.d_run = g_run, d_run
        self.ctx = StepContext(
            model=self.cfg.model,
            loss=self.cfg.loss,
            joint=self.cfg.train.d_batch == "joint",
            autocast=self.autocast,
            d_no_sync=self.d_frozen,
            augment=self.augment if self.cfg.train.d_augment else (lambda x: x),
            critic=self.stage.critic,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes (a no-op in fp32)."""
        dtype = self.amp_dtype
        return torch.autocast(self.info.device.type, dtype=dtype, enabled=dtype is not None)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """D's view of an image batch under ``train.d_augment`` (this rank's own stream)."""
        return diff_augment(images, self.cfg.train.d_augment, self.state.augment)

    def d_frozen(self) -> contextlib.AbstractContextManager:
        """DDP ``no_sync`` of D (a no-op in one process)."""
        return self.d_ddp.no_sync() if self.d_ddp is not None else contextlib.nullcontext()

    def set_learning_rates(self, epoch: int) -> tuple[float, float]:
        """Apply the epoch's (lr_g, lr_d) to the optimisers; returns them."""
        lr_g, lr_d = learning_rates(self.cfg, epoch)
        for group in self.state.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.state.opt_d.param_groups:
            group["lr"] = lr_d
        return lr_g, lr_d

    def train_step(self, batch: Batch, step: int, epoch: int) -> tuple[dict[str, Any], int]:
        """One D update and one G update; (the step's statistics, batch size)."""
        device, st = self.info.device, self.state
        if int(batch.get("step", step)) != step:
            raise RuntimeError(
                f"data stream out of sync: got step {int(batch['step'])}, expected {step}"
            )
        real = to_float_images(batch["image"].to(device, non_blocking=True)).contiguous(
            memory_format=self.memory_format
        )
        emb = batch["emb"].to(device, non_blocking=True)
        class_ids = batch["class_id"].to(device, non_blocking=True)
        z = torch.randn(real.shape[0], self.cfg.model.z_dim, device=device, generator=st.noise)
        loss_d, parts, fakes, wrong = self._d_main(real, emb, class_ids, z)
        loss_g, g_parts = self._g_main(real, emb, fakes, wrong, class_ids)
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
        return step_stats, real.shape[0]

    def _d_main(
        self, real: torch.Tensor, emb: torch.Tensor, class_ids: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Fakes, torch.Tensor]:
        """Dmain: fakes (with gradient if the G step reuses them), the D update."""
        st, cfg = self.state, self.cfg
        st.D.requires_grad_(True)
        with self.autocast(), torch.set_grad_enabled(cfg.g_step_fakes == "reuse"):
            fakes = self.stage.generate_with_input(self.g_run, emb, z)
        st.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            cond = d_condition(cfg.model, emb, fakes[1])
            wrong = mismatched_condition(cond, class_ids, cfg.loss.mismatch, st.mismatch)

        def d_backward(loss: torch.Tensor) -> None:
            st.scaler_d.scale(loss).backward()

        loss_d, parts = d_update(
            self.d_run, self.ctx, real, fakes[0].detach(), cond, wrong, d_backward, class_ids
        )
        st.scaler_d.step(st.opt_d)
        st.scaler_d.update()
        st.opt_d.zero_grad(set_to_none=True)  # free D's gradients before the G step (lower peak)
        return loss_d, parts, fakes, wrong

    def _g_main(
        self,
        real: torch.Tensor,
        emb: torch.Tensor,
        fakes: Fakes,
        wrong: torch.Tensor,
        class_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gmain: D frozen, fakes reused or redrawn, the G update, then the EMA."""
        st, cfg = self.state, self.cfg
        st.D.requires_grad_(False)
        ms_pair, real_cond, mixed = None, None, 0
        if cfg.g_step_fakes != "reuse":
            n = real.shape[0]
            if cfg.loss.text_interpolation > 0:  # GAN-INT: the last rows get caption midpoints
                with self.autocast():
                    real_cond = d_condition(cfg.model, emb, fakes[1])
                emb, mixed = interpolated_captions(emb, cfg.loss.text_interpolation)
            z = torch.randn(n, cfg.model.z_dim, device=self.info.device, generator=st.noise)
            if cfg.loss.mode_seeking > 0:  # the first half again with other noise, same pass
                half = max(1, n // 2)
                z_again = torch.randn(
                    half, cfg.model.z_dim, device=self.info.device, generator=st.noise
                )
                with self.autocast():
                    both = self.stage.generate_with_input(
                        self.g_run, torch.cat([emb, emb[:half]]), torch.cat([z, z_again])
                    )
                fakes = tuple(None if t is None else t[:n] for t in both)  # type: ignore[assignment]
                ms_pair = (both[0][:half], both[0][n:], z[:half], z_again)
            else:
                with self.autocast():
                    fakes = self.stage.generate_with_input(self.g_run, emb, z)
        fake, mu, logvar, low = fakes
        loss_g, g_parts = g_loss_terms(
            self.d_run,
            self.ctx,
            real,
            fake,
            emb,
            mu,
            logvar,
            low,
            wrong,
            class_ids,
            real_cond=real_cond,
            mixed_rows=mixed,
        )
        if ms_pair is not None:
            ms = mode_seeking_loss(*ms_pair)
            loss_g = loss_g + cfg.loss.mode_seeking * ms
            g_parts["mode_seeking"] = ms.detach()
        st.opt_g.zero_grad(set_to_none=True)
        st.scaler_g.scale(loss_g).backward()
        st.scaler_g.step(st.opt_g)
        st.scaler_g.update()
        st.opt_g.zero_grad(set_to_none=True)
        st.D.requires_grad_(True)
        if st.G_ema is not None:
            update_ema(st.G_ema, st.G, cfg.train.ema_beta)  # type: ignore[arg-type]
        return loss_g, g_parts

    def save_state(self, workdir: Path, step: int, steps_per_epoch: int) -> None:
        """Collective: write the training state at ``step``."""
        self.state.save(workdir, step, steps_per_epoch, self.cfg, self.info)

    def sync_buffers(self) -> None:
        """Collective: the same BatchNorm statistics on every rank (before the final files)."""
        dist_utils.sync_buffers(self.state.G)
        dist_utils.sync_buffers(self.state.D)
        if self.state.G_ema is not None:
            dist_utils.sync_buffers(self.state.G_ema)

    def snapshot(self, standing: torch.Tensor | None) -> Sampler:
        """Collective: eval-mode copy of G_ema (or G) for grids, evaluation and the network file."""
        return eval_sampler(self.stage, self.state.G_ema or self.state.G, self.cfg, standing)


# --------------------------------------------------------------------------- metrics, reports


@dataclass
class _MetricWindow:
    """Step statistics summed since the last log line, and the data-wait time."""

    sums: dict[str, Any] = field(default_factory=dict)
    n: int = 0
    wait: float = 0.0
    batch_size: int = 0
    t_tick: float = field(default_factory=time.perf_counter)
    last: dict[str, float] = field(default_factory=dict)

    def fetch(self, data: Iterator[Batch]) -> Batch:
        """The next batch; the time spent waiting for it is counted."""
        t0 = time.perf_counter()
        batch = next(data)
        self.wait += time.perf_counter() - t0
        return batch

    def add(self, stats: dict[str, Any], batch_size: int) -> None:
        """Add one step's statistics."""
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.n += 1
        self.batch_size = batch_size

    def report(
        self, lr_g: float, lr_d: float, epoch: int, info: dist_utils.DistInfo
    ) -> dict[str, float]:
        """Collective: the window's means (averaged across ranks) and rates; then a new window."""
        elapsed = time.perf_counter() - self.t_tick
        metrics = {k: (v / self.n).item() for k, v in self.sums.items()}
        metrics = dist_utils.all_reduce_mean(metrics, info.device)
        metrics.update(
            lr_g=lr_g,
            lr_d=lr_d,
            epoch=float(epoch),
            img_per_s=self.n * self.batch_size * info.world_size / max(elapsed, 1e-9),
            data_wait_frac=self.wait / max(elapsed, 1e-9),
        )
        self.last = metrics
        self.sums, self.n, self.wait, self.t_tick = {}, 0, 0.0, time.perf_counter()
        return metrics


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


# --------------------------------------------------------------------------- evaluation points


@dataclass
class _EvalPoints:
    """Sample grids every ``train.sample_every`` and evaluations every ``train.eval_every``
    steps, and the final snapshot's grid, evaluation and network file."""

    trainer: _Trainer
    workdir: Path
    tracker: Tracker | None
    grid_embeddings: torch.Tensor | None
    monitor: TrainingMonitor | None
    step_callback: StepCallback | None
    standing: torch.Tensor | None = None
    last_grid: int = -1
    last_eval: int = -1
    last_snapshot: tuple[int, Sampler] | None = None

    def _snapshot(self, step: int) -> Sampler:
        """The trainer's snapshot at ``step``. With standing statistics it depends only on
        the weights, so the one an evaluation point took at this step is reused (the final
        snapshot of a run that ends on an evaluation point: Stage-II's costs ~5 s on CPU)."""
        if self.standing is not None and self.last_snapshot and self.last_snapshot[0] == step:
            return self.last_snapshot[1]
        sampler = self.trainer.snapshot(self.standing)
        self.last_snapshot = (step, sampler)
        return sampler

    def _grid(self, sampler: Sampler, step: int) -> None:
        cfg, device = self.trainer.cfg, self.trainer.info.device
        sample_grid(sampler, self.grid_embeddings, cfg, device, self.workdir, step, self.tracker)  # type: ignore[arg-type]

    def _evaluate(self, sampler: Sampler, step: int) -> None:
        info = self.trainer.info
        run_monitor(self.monitor, sampler, info, step, self.tracker, self.step_callback)  # type: ignore[arg-type]

    def maybe_run(self, step: int) -> None:
        """Collective: the grid and/or evaluation due at ``step`` (every rank takes the same
        branch)."""
        t = self.trainer.cfg.train
        grid_due = bool(t.sample_every) and self.grid_embeddings is not None
        grid_due = grid_due and step % t.sample_every == 0
        eval_due = self.monitor is not None and bool(t.eval_every) and step % t.eval_every == 0
        if not (grid_due or eval_due):
            return
        sampler = self._snapshot(step)
        if grid_due and self.trainer.info.is_main:
            self._grid(sampler, step)
        if grid_due:
            self.last_grid = step
        if eval_due:
            self._evaluate(sampler, step)
            self.last_eval = step

    def finish(self, step: int, out_network: Path, provenance: dict[str, Any] | None) -> None:
        """Collective: the final snapshot; its evaluation and grid unless done at this step;
        the network file (rank 0)."""
        trainer = self.trainer
        final = self._snapshot(step)
        if self.monitor is not None and self.last_eval != step:
            self._evaluate(final, step)
        if trainer.info.is_main:
            if self.grid_embeddings is not None and self.last_grid != step:
                self._grid(final, step)
            write_final_network(
                out_network,
                stage=trainer.stage,
                step=step,
                cfg=trainer.cfg,
                G=trainer.state.G,
                final=final if trainer.state.G_ema is not None else None,
                provenance=provenance,
            )
