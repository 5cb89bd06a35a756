"""Stage-II generator (64x64 Stage-I image + text -> 256x256) and discriminator.

The generator has the same topology in both presets (only its CA differs); it does not
own the Stage-I generator: the caller runs the frozen Stage-I G and passes its image.
Layer tables: docs/architecture.md.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from stackgan.config import Arch, CaNonlinearity, SkipBase
from stackgan.networks.blocks import (
    Bottleneck,
    ConvBlock,
    DOutput,
    ResBlock,
    UncondLogits,
    UpBlock,
    arch_cond_head,
    check_arch,
    conv,
    discriminator_output,
    tile,
)
from stackgan.networks.conditioning import CaNoise, CondAugment

SKIP_CLAMP = 0.99  # |Stage-I pixel| limit before atanh (model.stage2_skip)


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, S, S] -> [B, C, size, size], antialiased bilinear (how a 256 px image is read
    at 64 px: the evaluation protocol's read-back)."""
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


@functools.lru_cache(maxsize=8)
def _readback_matrices(low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per axis (the read-back is separable), in float64: the read-back ``D`` [low, high]
    (:func:`downsample` as a matrix) and ``G = (D D^T)^-1`` [low, low]."""
    eye_high = torch.eye(high, dtype=torch.float64)[:, None, :, None]
    down = downsample(eye_high.expand(high, 1, high, high).contiguous(), low)[:, 0, :, 0].T
    return down, torch.linalg.inv(down @ down.T)


@functools.lru_cache(maxsize=8)
def _projection_matrices(low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per axis, in float64: ``M = D U`` [low, low] (bilinear up, then :func:`downsample`)
    and ``P = D^T (D D^T)^-1`` [high, low], the minimum-norm right inverse of ``D``."""
    eye_low = torch.eye(low, dtype=torch.float64)[:, None, :, None].expand(low, 1, low, low)
    up = F.interpolate(eye_low, size=(high, high), mode="bilinear")[:, 0, :, 0].T
    down, gram_inv = _readback_matrices(low, high)
    return down @ up, down.T @ gram_inv


@functools.lru_cache(maxsize=16)
def _matrices_on(which: str, low: int, high: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``_projection_matrices`` (``which="projection"``) or ``_readback_matrices``
    (``"readback"``) in float32 on ``device``, converted once per device."""
    made = (_projection_matrices if which == "projection" else _readback_matrices)(low, high)
    return tuple(t.to(device=device, dtype=torch.float32) for t in made)


def skip_base(stage1_img: torch.Tensor, size: int, mode: SkipBase = "bilinear") -> torch.Tensor:
    """The image a ``model.stage2_skip`` generator refines: the Stage-I image [B, 3, 64, 64]
    upsampled to [B, 3, size, size], in float32. With ``model.stage2_zero_init`` Stage-II
    starts as exactly this image (pixels clamped to +-``SKIP_CLAMP``).

    ``bilinear``: plain bilinear upsampling ``U x``; its :func:`downsample` ``D U x`` is a
    blurred Stage-I image. ``projected``: ``U x`` plus the least-squares (minimum-norm)
    correction that makes its downsample the Stage-I image, ``U x + D^+ (x - D U x)`` with
    ``D^+`` the pseudo-inverse of ``D``: an unchanged copy reads back as its Stage-I image
    (to float rounding, before the clamp).
    """
    low = stage1_img.float()
    base = F.interpolate(low, size=(size, size), mode="bilinear")
    if mode == "bilinear":
        return base
    if mode != "projected":
        raise ValueError(f"skip base must be 'bilinear' or 'projected', got {mode!r}")
    m, p = _matrices_on("projection", low.shape[-1], size, low.device)
    with torch.autocast(low.device.type, enabled=False):  # float32 even in a bf16/fp16 step
        residual = low - m @ low @ m.T  # x - D U x, separably
        return base + p @ residual @ p.T


CONSISTENCY_ITERATIONS = 500  # most rounds of enforce_consistency's solver (eval mode)
# ... in train mode: the gradient is the first round's anyway, and an exact read-back of the
# fakes costs Stage-II's training 1.6x its time (docs/benchmarks.md, twentieth round)
CONSISTENCY_TRAIN_ITERATIONS = 10
CONSISTENCY_TOLERANCE = 1e-4  # largest |read-back - Stage-I image| it stops at, per pixel


def enforce_consistency(
    high: torch.Tensor,
    stage1_img: torch.Tensor,
    iterations: int = CONSISTENCY_ITERATIONS,
    tolerance: float = CONSISTENCY_TOLERANCE,
) -> torch.Tensor:
    """``model.stage2_exact_consistency``: the image in [-1, 1] nearest to the Stage-II
    image ``y`` [B, 3, S, S] whose :func:`downsample` is the Stage-I image ``x`` [B, 3, s, s].

    Without the [-1, 1] bound this is one step, the minimum-norm correction
    ``y + D^+ (x - D y)`` (the Consistency Enforcing Module of Bahat & Michaeli, 2020).
    With it, the solution is ``clamp(y + D^T l)`` for the multipliers ``l`` that make its
    read-back ``x``; they are found by accelerated (Nesterov) gradient ascent on the dual,
    preconditioned by ``(D D^T)^-1``, whose first iterate is that clamped correction. Each
    channel stops once every pixel of its read-back is within ``tolerance`` of ``x``, or
    after ``iterations`` rounds. The gradient is the first iterate's (the later rounds pass
    it straight through). Float32 even in a bf16/fp16 step, whose rounding would undo it.
    """
    y, x = high.float(), stage1_img.float()
    down, gram_inv = _matrices_on("readback", x.shape[-1], y.shape[-1], y.device)

    def read(img: torch.Tensor) -> torch.Tensor:  # D img, separably
        return down @ img @ down.T

    with torch.autocast(y.device.type, enabled=False):
        multipliers = gram_inv @ (x - read(y)) @ gram_inv  # (D D^T)^-1 (x - D y)
        first = (y + down.T @ multipliers @ down).clamp(-1.0, 1.0)
        with torch.no_grad():
            exact = _dual_ascent(
                y.detach(), x, multipliers.detach(), first.detach(), iterations, tolerance
            )
    if high.is_contiguous(memory_format=torch.channels_last):
        exact = exact.contiguous(memory_format=torch.channels_last)
    return first + (exact - first.detach()) if first.requires_grad else exact


def _dual_ascent(
    y: torch.Tensor,
    x: torch.Tensor,
    multipliers: torch.Tensor,
    first: torch.Tensor,
    iterations: int,
    tolerance: float,
) -> torch.Tensor:
    """The rounds of :func:`enforce_consistency` on [B, C, ...] tensors, one problem per
    channel; ``first`` is round 0's image for ``multipliers``. Channels that are done
    leave the working set, so the cost follows the hard channels only."""
    shape = first.shape
    down, gram_inv = _matrices_on("readback", x.shape[-1], y.shape[-1], y.device)
    y, x = y.reshape(-1, *shape[-2:]), x.reshape(-1, *x.shape[-2:])
    img, out = first.reshape(-1, *shape[-2:]), first.reshape(-1, *shape[-2:]).clone()
    index = torch.arange(y.shape[0], device=y.device)
    mu = previous = multipliers.reshape(-1, *multipliers.shape[-2:])
    for k in range(iterations):
        if k:
            img = (y + down.T @ mu @ down).clamp(-1.0, 1.0)
        residual = x - down @ img @ down.T
        going = residual.abs().amax(dim=(-2, -1)) > tolerance
        if k == iterations - 1 or not bool(going.any()):
            out.index_copy_(0, index, img)
            break
        done = ~going
        if bool(done.any()):
            out.index_copy_(0, index[done], img[done])
            index, y, x, mu, previous, residual = (
                t[going] for t in (index, y, x, mu, previous, residual)
            )
        step = mu + gram_inv @ residual @ gram_inv
        mu, previous = step + k / (k + 3) * (step - previous), step
    return out.reshape(shape)


class Stage2Generator(nn.Module):
    """Stage-II G: encode the 64x64 image to 16x16, join the tiled CA code, residual
    blocks, four up-blocks to 256x256; no new z.

    Args:
        text_dim: text embedding size.
        cond_dim: size of its own CA code.
        gf_dim: base width (the 16x16 map has 4*gf_dim channels).
        r_num: number of residual blocks.
        arch: ``"paper"`` or ``"pytorch"`` (only changes the CA's log sigma/logvar reading).
        ca_nonlinearity: CA activation.
        ca_noise: CA eps distribution.
        skip: refine instead of redraw (not in the paper): the output is
            ``tanh(decoder(h) + atanh(up(stage1_img)))`` with ``up`` the
            :func:`skip_base` to 256 px (clamped to +-0.99 before atanh), so an untrained
            G already returns the Stage-I image; no extra parameters.
        skip_base: the :func:`skip_base` mode (``model.stage2_skip_base``).
        exact_consistency: pass the output through :func:`enforce_consistency`, so that
            read back at 64 px it is the Stage-I image (``model.stage2_exact_consistency``):
            to its tolerance in eval mode, after ``CONSISTENCY_TRAIN_ITERATIONS`` rounds in
            train mode (the fakes D sees; the gradient is the first round's either way).
    """

    def __init__(
        self,
        *,
        text_dim: int,
        cond_dim: int,
        gf_dim: int,
        r_num: int,
        arch: Arch,
        ca_nonlinearity: CaNonlinearity,
        ca_noise: CaNoise = "normal",
        skip: bool = False,
        skip_base: SkipBase = "bilinear",
        exact_consistency: bool = False,
    ) -> None:
        super().__init__()
        check_arch(arch)
        self.arch = arch
        self.skip = skip
        self.skip_mode = skip_base
        self.exact_consistency = exact_consistency
        g = gf_dim
        self.ca = CondAugment(
            text_dim, cond_dim, ca_nonlinearity, log_sigma=arch == "paper", noise=ca_noise
        )
        self.encode = nn.Sequential(
            ConvBlock(3, g, 3, bn=False, act="relu"),  # [B, g, 64, 64]
            ConvBlock(g, g * 2, 4, 2, act="relu"),  # [B, 2g, 32, 32]
            ConvBlock(g * 2, g * 4, 4, 2, act="relu"),  # [B, 4g, 16, 16]
        )
        self.joint = ConvBlock(g * 4 + cond_dim, g * 4, 3, act="relu")  # [B, 4g, 16, 16]
        self.residual = nn.Sequential(*(ResBlock(g * 4) for _ in range(r_num)))
        self.decode = nn.Sequential(
            UpBlock(g * 4, g * 2),  # [B, 2g, 32, 32]
            UpBlock(g * 2, g),  # [B, g, 64, 64]
            UpBlock(g, g // 2),  # [B, g/2, 128, 128]
            UpBlock(g // 2, g // 4),  # [B, g/4, 256, 256]
            conv(g // 4, 3, 3),  # [B, 3, 256, 256]
            nn.Tanh(),
        )

    def zero_refinement(self) -> None:
        """Zero the decoder's last convolution (``model.stage2_zero_init``), so that with
        ``skip`` the output is exactly ``up(stage1_img)`` until training moves it."""
        if not self.skip:
            raise ValueError("zero_refinement needs skip=True (model.stage2_skip)")
        last = self.decode[-2]
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()

    def forward(
        self, stage1_img: torch.Tensor, text_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, 3, 64, 64], [B, text_dim] -> (img [B, 3, 256, 256], mu, logvar [B, cond_dim])."""
        x = self.encode(stage1_img)  # [B, 4g, 16, 16]
        c, mu, logvar = self.ca(text_emb)  # [B, cond_dim]
        h = torch.cat([x, tile(c.to(x.dtype), x.shape[-1])], dim=1)  # [B, 4g+cond, 16, 16]
        h = self.residual(self.joint(h))  # [B, 4g, 16, 16]
        if not self.skip:
            img = self.decode(h)
        else:
            pre = self.decode[:-1](h)  # [B, 3, 256, 256] before the final tanh
            up = skip_base(stage1_img, pre.shape[-1], self.skip_mode)
            base = torch.atanh(up.clamp(-SKIP_CLAMP, SKIP_CLAMP))
            img = torch.tanh(pre.float() + base)
            if not self.exact_consistency:  # that one takes it in float32 as it is
                img = img.to(pre.dtype)
        if self.exact_consistency:  # float32: bf16 rounding would undo the projection
            rounds = CONSISTENCY_TRAIN_ITERATIONS if self.training else CONSISTENCY_ITERATIONS
            img = enforce_consistency(img, stage1_img, iterations=rounds)
        return img, mu, logvar


class Stage2Discriminator(nn.Module):
    """Stage-II D: 256x256 image -> 4x4 features; conditional (+ optional unconditional) logit.

    Args:
        df_dim: base width (features have 8*df_dim channels).
        cond_in_dim: size of the condition passed to ``forward``.
        code_dim: size of the tiled text code (see :class:`Stage1Discriminator`).
        arch: ``"paper"`` or ``"pytorch"``.
        uncond_head: build the unconditional head (PT Stage-II); its logit conv has a
            bias only in the pytorch preset.
        projection: add a projection term to the matching-aware logit (not in the paper).
        projection_only: the text enters the logit through the projection term alone.
    """

    def __init__(
        self,
        *,
        df_dim: int,
        cond_in_dim: int,
        code_dim: int,
        arch: Arch,
        uncond_head: bool,
        projection: bool = False,
        projection_only: bool = False,
    ) -> None:
        super().__init__()
        check_arch(arch)
        self.arch = arch
        paper = arch == "paper"
        ndf = df_dim
        k = 1 if paper else 3  # the two 4x4 width-reducing convs
        layers: list[nn.Module] = [
            ConvBlock(3, ndf, 4, 2, bn=False, act="leaky_relu"),  # [B, d, 128, 128]
            ConvBlock(ndf, ndf * 2, 4, 2, act="leaky_relu"),  # [B, 2d, 64, 64]
            ConvBlock(ndf * 2, ndf * 4, 4, 2, act="leaky_relu"),  # [B, 4d, 32, 32]
            ConvBlock(ndf * 4, ndf * 8, 4, 2, act="leaky_relu"),  # [B, 8d, 16, 16]
            ConvBlock(ndf * 8, ndf * 16, 4, 2, act="leaky_relu"),  # [B, 16d, 8, 8]
            ConvBlock(ndf * 16, ndf * 32, 4, 2, act="leaky_relu"),  # [B, 32d, 4, 4]
            ConvBlock(ndf * 32, ndf * 16, k, act="leaky_relu"),  # [B, 16d, 4, 4]
            # TF: BN without activation, then the bottleneck adds and activates.
            ConvBlock(ndf * 16, ndf * 8, k, act=None if paper else "leaky_relu"),  # [B, 8d, 4, 4]
        ]
        if paper:
            layers.append(Bottleneck(ndf * 8, ndf * 2, "leaky_relu"))  # [B, 8d, 4, 4]
        self.encode = nn.Sequential(*layers)
        self.cond_head = arch_cond_head(
            ndf * 8,
            cond_in_dim,
            code_dim,
            arch,
            projection=projection,
            projection_only=projection_only,
        )
        self.uncond_head = UncondLogits(ndf * 8, bias=not paper) if uncond_head else None

    def forward(
        self,
        img: torch.Tensor,
        cond: torch.Tensor,
        wrong_cond: torch.Tensor | None = None,
        *,
        shared_head: bool = False,
    ) -> DOutput:
        """img [B, 3, 256, 256], cond [B, cond_in_dim], wrong_cond [B', cond_in_dim] -> logits."""
        feats = self.encode(img)  # [B, 8d, 4, 4]
        return discriminator_output(
            feats, cond, wrong_cond, self.cond_head, self.uncond_head, shared_head=shared_head
        )
