"""The D update and the G update of one StackGAN training step, as functions.

The training loop (:mod:`stackgan.training.loop`) calls them with its DDP-wrapped D,
autocast and gradient scaler; the FLOP counter (:mod:`stackgan.summary`) calls the same
code on meta tensors. Optimiser steps, EMA and logging stay with the caller.

* :func:`d_update`: D on (real, text), (real, mismatched text) and (fake, text);
  matching-aware loss, back-propagated through the caller's ``backward``. With
  ``joint`` one pass over [real; fake] and one head call over all pairs (shared
  BatchNorm statistics); otherwise the references' separate passes, back-propagated one
  at a time so that only one D graph is alive.
* :func:`g_loss_terms`: D frozen by the caller; non-saturating loss + ``kl_weight`` x KL
  (+ ``stage_consistency`` x the Stage-II L1 tie to the Stage-I image, + ``stage1_critic``
  x the non-saturating loss of the frozen Stage-I D on the Stage-II fakes read back to
  64 px). With
  ``loss.text_interpolation`` part of the fakes are drawn for caption midpoints (GAN-INT).

With ``train.d_augment`` D sees every image through the same differentiable
augmentation (:mod:`stackgan.augment`). With ``loss.contrastive`` both also add that
weight x the image-to-text InfoNCE on D's projection scores: D on the real images, G on
its fakes. With ``loss.r1_gamma`` D also pays ``gamma / 2`` x the R1 penalty on its
(augmented) real, matching pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from stackgan.config import LossConfig, ModelConfig
from stackgan.losses import (
    contrastive_loss,
    d_loss,
    g_loss,
    kl_loss,
    r1_penalty,
    stage_consistency_loss,
)
from stackgan.networks import d_condition
from stackgan.networks.blocks import DOutput
from stackgan.networks.stage2 import downsample

ContextFactory = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class StepContext:
    """What both updates need besides the batch.

    Args:
        model: decides what D is conditioned on (text embedding or G's mu).
        loss: loss weights.
        joint: ``train.d_batch == "joint"``.
        autocast: mixed-precision context for forward passes (no-op by default).
        d_no_sync: DDP ``no_sync`` of D (no-op by default): the first of the two
            separate D backward passes and the G step's D forward do not all-reduce.
        augment: applied to every image batch before D sees it, in the D and the G step
            (``train.d_augment``; the identity by default).
        critic: Stage-II with ``loss.stage1_critic``: the frozen Stage-I D.
    """

    model: ModelConfig
    loss: LossConfig
    joint: bool = False
    autocast: ContextFactory = field(default=contextlib.nullcontext)
    d_no_sync: ContextFactory = field(default=contextlib.nullcontext)
    augment: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda x: x)
    critic: nn.Module | None = None


def _zeros(t: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient-free stand-in for another pass's logits (its loss terms are constants)."""
    return None if t is None else torch.zeros_like(t, requires_grad=False).detach()


def d_update(
    D: nn.Module,
    ctx: StepContext,
    real: torch.Tensor,
    fake: torch.Tensor,
    cond: torch.Tensor,
    wrong: torch.Tensor,
    backward: Callable[[torch.Tensor], None],
    class_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward D, back-propagate the D loss with ``backward``; (detached loss, parts).

    ``fake`` must already be detached; ``cond`` [B, .] matches ``real`` and ``fake`` row by
    row, ``wrong`` [B', .] are the mismatched conditions for the first B' real images;
    ``class_ids`` [B] keep same-class captions out of the contrastive term's negatives.
    """
    uw, r1 = ctx.loss.uncond_weight, ctx.loss.r1_gamma
    if ctx.joint:
        # One pass over [real; fake], one head call over matching and mismatched pairs: with
        # shared BatchNorm statistics D must match image and text per sample.
        with ctx.autocast():
            images = _r1_leaf(ctx.augment(torch.cat([real, fake])), r1)
            out = D(images, torch.cat([cond, cond]), wrong, shared_head=True)
            n = real.shape[0]
            unc = out.uncond_logits
            loss, parts = d_loss(
                out.logits[:n],
                out.wrong_logits,
                out.logits[n:],
                None if unc is None else unc[:n],
                None if unc is None else unc[n:],
                uncond_weight=uw,
            )
            extra, extra_parts = _real_pair_terms(ctx, out, slice(0, n), images, class_ids)
            loss = loss if extra is None else loss + extra
        backward(loss)
        parts.update(extra_parts)
        return loss.detach(), parts
    # The D loss is a sum of per-pass terms, so the real pass (real and mismatched pairs)
    # is back-propagated before the fake pass runs: one D graph alive at a time.
    # Placeholders (zeros, no gradient) stand in for the other pass's logits.
    with ctx.d_no_sync(), ctx.autocast():
        real_in = _r1_leaf(ctx.augment(real), r1)
        out_real = D(real_in, cond, wrong)
        part_real, _ = d_loss(
            out_real.logits,
            out_real.wrong_logits,
            _zeros(out_real.logits),
            out_real.uncond_logits,
            _zeros(out_real.uncond_logits),
            uncond_weight=uw,
        )
        extra, extra_parts = _real_pair_terms(ctx, out_real, slice(None), real_in, class_ids)
        part_real = part_real if extra is None else part_real + extra
    with ctx.d_no_sync():
        backward(part_real)
    with ctx.autocast():
        out_fake = D(ctx.augment(fake), cond)
        part_fake, _ = d_loss(
            _zeros(out_real.logits),
            _zeros(out_real.wrong_logits),
            out_fake.logits,
            _zeros(out_real.uncond_logits),
            out_fake.uncond_logits,
            uncond_weight=uw,
        )
    backward(part_fake)
    with torch.no_grad():  # the full loss and its parts, for logging and the NaN guard
        loss, parts = d_loss(
            out_real.logits,
            out_real.wrong_logits,
            out_fake.logits,
            out_real.uncond_logits,
            out_fake.uncond_logits,
            uncond_weight=uw,
        )
        loss = loss if extra is None else loss + extra.detach()
    parts.update(extra_parts)
    return loss.detach(), parts


def _real_pair_terms(
    ctx: StepContext,
    out: DOutput,
    rows: slice,
    images: torch.Tensor,
    class_ids: torch.Tensor | None,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """D's extra terms on its real, matching pairs (the image rows ``rows`` of ``out``,
    computed from ``images``): weight x the contrastive term and gamma / 2 x the R1 penalty.
    Returns their weighted sum (None when both are off) and the detached unweighted parts."""
    extra, parts = None, {}
    cw, r1 = ctx.loss.contrastive, ctx.loss.r1_gamma
    if cw > 0:
        contrast = _contrast(out, rows, class_ids)
        extra, parts["contrastive_d"] = cw * contrast, contrast.detach()
    if r1 > 0:
        penalty = r1_penalty(out.logits[rows], images)
        extra = 0.5 * r1 * penalty if extra is None else extra + 0.5 * r1 * penalty
        parts["r1"] = penalty.detach()
    return extra, parts


def _r1_leaf(images: torch.Tensor, r1_gamma: float) -> torch.Tensor:
    """``images`` as a fresh leaf that requires grad when the R1 penalty needs it."""
    return images.detach().requires_grad_(True) if r1_gamma > 0 else images


def _contrast(out: DOutput, rows: slice, class_ids: torch.Tensor | None) -> torch.Tensor:
    """The contrastive term of the image rows ``rows`` of ``out`` against their conditions."""
    if out.pooled is None or out.cond_proj is None:
        raise ValueError("loss.contrastive needs a projection D (model.d_projection: true)")
    return contrastive_loss(out.pooled[rows], out.cond_proj[rows], class_ids)


def g_loss_terms(
    D: nn.Module,
    ctx: StepContext,
    real: torch.Tensor,
    fake: torch.Tensor,
    emb: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    low: torch.Tensor | None,
    wrong: torch.Tensor | None,
    class_ids: torch.Tensor | None = None,
    *,
    real_cond: torch.Tensor | None = None,
    mixed_rows: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The G loss (to back-propagate) and its parts, with D's parameters frozen by the caller.

    ``low`` is the Stage-I image a Stage-II fake was made from (None for Stage-I);
    ``wrong`` the D step's mismatched conditions (needed only with ``joint``);
    ``class_ids`` as for :func:`d_update`. ``emb`` are the fakes' captions; with
    ``loss.text_interpolation`` its last ``mixed_rows`` rows are caption midpoints, which
    the contrastive term leaves out, and ``real_cond`` are the real images' own conditions
    for the joint batch (default: the fakes').
    """
    with ctx.autocast(), ctx.d_no_sync():
        cond_g = d_condition(ctx.model, emb, mu)
        n = fake.shape[0]
        if ctx.joint:  # the same joint batch as the D step; only the fake rows' logits count
            if wrong is None:
                raise ValueError("a joint D batch needs the D step's mismatched conditions")
            out = D(
                ctx.augment(torch.cat([real, fake])),
                torch.cat([cond_g if real_cond is None else real_cond, cond_g]),
                wrong.detach(),
                shared_head=True,
            )
            logits = out.logits[n:]
            unc = None if out.uncond_logits is None else out.uncond_logits[n:]
            fake_rows = slice(n, 2 * n - mixed_rows)
        else:
            out = D(ctx.augment(fake), cond_g)
            logits, unc = out.logits, out.uncond_logits
            fake_rows = slice(0, n - mixed_rows)
        adv = g_loss(logits, unc, uncond_weight=ctx.loss.uncond_weight)
        kl = kl_loss(mu.float(), logvar.float())
        loss = adv + ctx.loss.kl_weight * kl
        parts = {"loss_g_adv": adv, "kl": kl}
        if ctx.loss.contrastive > 0:
            ids = None if class_ids is None else class_ids[: n - mixed_rows]
            contrast = _contrast(out, fake_rows, ids)
            loss = loss + ctx.loss.contrastive * contrast
            parts["contrastive_g"] = contrast
        if low is not None and ctx.loss.stage_consistency > 0:
            consistency = stage_consistency_loss(fake, low)
            loss = loss + ctx.loss.stage_consistency * consistency
            parts["stage_consistency"] = consistency
        if low is not None and ctx.critic is not None and ctx.loss.stage1_critic > 0:
            critic = stage1_critic_loss(ctx.critic, ctx, fake, emb, low.shape[-1])
            loss = loss + ctx.loss.stage1_critic * critic
            parts["stage1_critic"] = critic
    return loss, parts


def stage1_critic_loss(
    critic: nn.Module, ctx: StepContext, fake: torch.Tensor, emb: torch.Tensor, size: int
) -> torch.Tensor:
    """The non-saturating G loss of the frozen Stage-I D on Stage-II fakes [B, 3, S, S] read
    back to ``size`` px (antialiased bilinear), through ``ctx.augment``, with their captions'
    embeddings (a 'paper' Stage-I D is conditioned on the embedding)."""
    out = critic(ctx.augment(downsample(fake, size)), emb)
    return g_loss(out.logits, out.uncond_logits, uncond_weight=ctx.loss.uncond_weight)
