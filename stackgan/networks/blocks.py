"""Building blocks shared by both architecture presets.

Conventions follow both reference code bases: convolutions have no bias unless asked
for, 4x4 stride-2 convolutions use padding 1 (TF ``SAME`` on even sizes), 3x3 stride-1
convolutions padding 1, 1x1 convolutions none; LeakyReLU slope is 0.2 everywhere;
up-sampling is nearest-neighbour x2.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

Act = Literal["relu", "leaky_relu"]

LEAKY_SLOPE = 0.2


class DOutput(NamedTuple):
    """Discriminator logits (no sigmoid).

    ``logits`` [B] scores (img, cond); ``wrong_logits`` [B'] scores the first B' image
    rows against ``wrong_cond`` (None when no wrong_cond was given); ``uncond_logits`` [B]
    is the unconditional head (None when the network has none). With a projection head,
    ``pooled`` [B, C] are the mean-pooled image features and ``cond_proj`` [B, C] the
    projected conditions, so ``pooled @ cond_proj.T`` scores every image against every
    condition of the batch (the projection term of each pair; see
    :func:`stackgan.losses.contrastive_loss`); both None otherwise.
    """

    logits: torch.Tensor
    wrong_logits: torch.Tensor | None
    uncond_logits: torch.Tensor | None
    pooled: torch.Tensor | None = None
    cond_proj: torch.Tensor | None = None


def check_arch(arch: str) -> None:
    """Raise ValueError unless ``arch`` is a known preset."""
    if arch not in ("paper", "pytorch"):
        raise ValueError(f"unknown arch {arch!r}; expected 'paper' or 'pytorch'")


def make_act(act: Act | None) -> nn.Module:
    """ReLU, LeakyReLU(0.2) or identity (``None``), in place where safe."""
    if act is None:
        return nn.Identity()
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    raise ValueError(f"unknown activation {act!r}; expected 'relu' or 'leaky_relu'")


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = False) -> Conv2d:
    """A 2-D convolution with TF ``SAME`` padding for the sizes used here.

    Padding (kernel - stride) // 2: 3x3/1 and 1x1/1 keep the size, 4x4/2 halves it
    (padding 1, as in StackGAN-Pytorch), 4x4/4 is the 4x4 -> 1x1 logit convolution.
    """
    padding = max(kernel - stride, 0) // 2
    return Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that runs as unfold + matmul on CPU
    when the weight is huge and the output tiny.

    Stage-II D's 4x4 convolutions on 8x8 and 4x4 maps (2048x1024x4x4, 33.5 M weights) at
    batch 8 are a GEMM with only ``batch x Ho x Wo`` rows, where oneDNN's convolution
    is ~2x slower than MKL's matmul on the unfolded input (forward + backward, measured
    on a 2-core AVX-512 CPU). Results agree up to float rounding; every other shape, and
    every non-CPU device, uses the regular convolution.
    """

    MATMUL_MAX_ROWS = 256  # batch x Ho x Wo
    MATMUL_MIN_WEIGHTS = 1 << 24

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or self.groups != 1
            or self.dilation != (1, 1)
            or not x.is_contiguous()
        ):
            return super().forward(x)
        if self.weight.numel() < self.MATMUL_MIN_WEIGHTS or self.padding_mode != "zeros":
            return super().forward(x)
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1  # type: ignore[index]
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1  # type: ignore[index]
        if b * ho * wo > self.MATMUL_MAX_ROWS:
            return super().forward(x)
        cols = F.unfold(
            x, self.kernel_size, padding=self.padding, stride=self.stride
        )  # [B, C*kh*kw, Ho*Wo]
        out = self.weight.reshape(self.out_channels, -1) @ cols  # [B, out, Ho*Wo]
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.reshape(b, self.out_channels, ho, wo)


class ConvBlock(nn.Sequential):
    """conv -> optional BatchNorm -> optional activation."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        *,
        bn: bool = True,
        act: Act | None = None,
    ) -> None:
        layers: list[nn.Module] = [conv(in_ch, out_ch, kernel, stride)]
        if bn:
            layers.append(nn.BatchNorm2d(out_ch))
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 upsampling (same values as ``nn.Upsample(scale_factor=2)``).

    For NCHW-contiguous inputs it is written as broadcast + reshape: torch 2.13's CPU
    nearest-upsample kernel is 3-4x slower than that in NCHW (it is fast only in
    channels_last, where ``F.interpolate`` is used). The gradient is computed as 4 x a 2x2
    average pool, which agrees with ``F.interpolate``'s up to float rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_channels_last(x):
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return _NearestUp2.apply(x)


class _NearestUp2(torch.autograd.Function):
    """x2 nearest upsampling by broadcast; its gradient (each 2x2 block's sum) as 4 x avg-pool."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        up = x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2)
        return up.reshape(b, c, 2 * h, 2 * w)  # [B, C, 2H, 2W]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(grad, 2) * 4.0  # [B, C, H, W]


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D tensor laid out channels_last (and not also NCHW-contiguous)."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return cl and not x.is_contiguous()


def memory_format_of(module: nn.Module) -> torch.memory_format:
    """The layout of ``module``'s 4-D weights: ``channels_last`` when the module was
    converted with ``.to(memory_format=torch.channels_last)``, else ``contiguous_format``.
    Weights for which both layouts coincide (1x1 kernels, one channel) are skipped."""
    for p in module.parameters():
        if p.dim() == 4 and not p.is_contiguous():
            return torch.channels_last if is_channels_last(p) else torch.contiguous_format
    return torch.contiguous_format


def upsample2x_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``conv3x3(nearest_upsample_x2(x))`` (padding 1) without materialising the upsampled map.

    Each output phase (row parity, column parity) sees only a 2x2 neighbourhood of the
    low-resolution input, so the 3x3 kernel folds into four 2x2 kernels (sums of its
    taps); each phase is a 2x2 convolution of ``x`` written into every other row and
    column of the output. Exact up to float rounding, with 4/9 of the multiply-adds and
    no 4x-sized intermediate (measured 1.3-1.6x faster forward + backward on CPU, and
    less memory). Gradients reach the original 3x3 ``weight`` through the folding. The
    output has ``x``'s layout (NCHW or channels_last), and so do the folded kernels.
    """
    b, _, h, w = x.shape
    layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    rows = (
        torch.stack(
            [weight[:, :, 0], weight[:, :, 1] + weight[:, :, 2]], 2
        ),  # even rows: input rows (i-1, i)
        torch.stack(
            [weight[:, :, 0] + weight[:, :, 1], weight[:, :, 2]], 2
        ),  # odd rows: input rows (i, i+1)
    )
    out = torch.empty(  # [B, out, 2H, 2W]
        (b, weight.shape[0], 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=layout
    )
    for py, wr in enumerate(rows):  # wr [out, in, 2, 3]
        cols = (
            torch.stack([wr[..., 0], wr[..., 1] + wr[..., 2]], -1),
            torch.stack([wr[..., 0] + wr[..., 1], wr[..., 2]], -1),
        )
        for px, k in enumerate(cols):  # k [out, in, 2, 2]
            k = k.contiguous(memory_format=layout)
            y = F.conv2d(x, k, bias, padding=1)  # [B, out, H+1, W+1]
            out[:, :, py::2, px::2] = y[:, :, py : py + h, px : px + w]
    return out


class UpBlock(nn.Sequential):
    """Nearest-neighbour x2 -> conv3x3 -> BatchNorm -> ReLU (``act=False``: no ReLU).

    Same parameters as the reference's ``Upsample`` + ``conv3x3`` stack; by default the
    upsampling and the convolution run fused (:func:`upsample2x_conv3x3`). ``fused =
    False`` runs them literally (used to count the architecture's nominal FLOPs).
    """

    def __init__(self, in_ch: int, out_ch: int, act: bool = True) -> None:
        super().__init__(
            Upsample2x(),
            ConvBlock(in_ch, out_ch, 3, bn=True, act="relu" if act else None),
        )
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return super().forward(x)
        block = self[1]
        h = upsample2x_conv3x3(x, block[0].weight, block[0].bias)  # [B, out, 2H, 2W]
        for layer in list(block)[1:]:  # BatchNorm, activation
            h = layer(h)
        return h


def set_fused_upsampling(module: nn.Module, enabled: bool) -> None:
    """Switch every :class:`UpBlock` in ``module`` between fused and literal execution."""
    for m in module.modules():
        if isinstance(m, UpBlock):
            m.fused = enabled


class TextFiLM(nn.Module):
    """Feature-wise text modulation ``h * (1 + gamma(c)) + beta(c)`` (FiLM, Perez et al. 2018).

    ``gamma`` and ``beta`` come from one linear map of the condition ``c`` [B, cond_dim];
    with the usual N(0, 0.02) init the block starts close to the identity.
    """

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.affine = nn.Linear(cond_dim, 2 * channels)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h [B, C, H, W], c [B, cond_dim] -> [B, C, H, W]."""
        gamma, beta = self.affine(c.to(h.dtype)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return h * (1 + gamma) + beta


class ResBlock(nn.Module):
    """Stage-II G residual block: conv3x3-BN-ReLU-conv3x3-BN, add input, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            ConvBlock(channels, channels, 3, act="relu"),
            ConvBlock(channels, channels, 3, act=None),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> same
        return self.act(x + self.branch(x))


class Bottleneck(nn.Module):
    """TF-code bottleneck: conv1x1->mid, BN, act; conv3x3->mid, BN, act;
    conv3x3->C, BN; add; act.
    """

    def __init__(self, channels: int, mid: int, act: Act) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            ConvBlock(channels, mid, 1, act=act),
            ConvBlock(mid, mid, 3, act=act),
            ConvBlock(mid, channels, 3, act=None),
        )
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> same
        return self.act(x + self.branch(x))


def tile(code: torch.Tensor, size: int) -> torch.Tensor:
    """Replicate a code spatially: [B, C] -> [B, C, size, size]."""
    return code[:, :, None, None].expand(-1, -1, size, size)


class CondLogits(nn.Module):
    """Matching-aware D head: text code tiled 4x4, joined with image features, -> logit.

    Args:
        feat_ch: channels of the 4x4 image features.
        cond_in_dim: size of the conditioning vector passed to ``forward``.
        code_dim: size of the tiled text code.
        project: if True, the conditioning vector goes through an own FC(+bias) and
            LeakyReLU(0.2) to ``code_dim`` (TF); if False it is tiled as is (PT, which
            requires ``code_dim == cond_in_dim``).
        joint_kernel: 1 (TF) or 3 (PT) for the joint convolution.
        logit_bias: bias on the final 4x4 stride-4 convolution (PT only).
        projection: add ``<W cond, mean of feats over 4x4>`` to the logit (projection
            discriminator, Miyato & Koyama 2018, with mean instead of sum pooling so the
            term starts small; not in StackGAN).
        projection_only: the text reaches the logit through the projection term alone
            (needs ``projection``): the joint convolution sees the image features only, so
            the pair score is a sum of per-attribute terms for an additive text code.
    """

    def __init__(
        self,
        feat_ch: int,
        cond_in_dim: int,
        code_dim: int,
        *,
        project: bool,
        joint_kernel: int,
        logit_bias: bool,
        projection: bool = False,
        projection_only: bool = False,
    ) -> None:
        super().__init__()
        if projection_only and not projection:
            raise ValueError("projection_only needs projection=True")
        if projection_only:
            project, code_dim = False, 0
        elif not project and code_dim != cond_in_dim:
            raise ValueError(
                f"without a text FC the code is the condition itself: code_dim={code_dim} "
                f"must equal cond_in_dim={cond_in_dim}"
            )
        self.text_fc = (
            nn.Sequential(nn.Linear(cond_in_dim, code_dim), make_act("leaky_relu"))
            if project
            else None
        )
        self.code_dim = code_dim
        self.joint = ConvBlock(feat_ch + code_dim, feat_ch, joint_kernel, act="leaky_relu")
        self.logit = conv(feat_ch, 1, 4, stride=4, bias=logit_bias)
        self.projection = nn.Linear(cond_in_dim, feat_ch, bias=False) if projection else None

    def forward(self, feats: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """[B, C, 4, 4] features and [B, cond_in_dim] condition -> logits [B]."""
        if self.code_dim:
            code = self.text_fc(cond) if self.text_fc is not None else cond  # [B, code_dim]
            code = tile(code.to(feats.dtype), feats.shape[-1])  # [B, code_dim, 4, 4]
            h = self.joint(torch.cat([feats, code], dim=1))  # [B, C, 4, 4]
        else:  # projection_only
            h = self.joint(feats)
        logits = self.logit(h).flatten()  # [B]
        if self.projection is not None:
            pooled = feats.float().mean(dim=(2, 3))  # [B, C]
            logits = logits.float() + (pooled * self.projection(cond.float())).sum(dim=1)
        return logits


def arch_cond_head(
    channels: int,
    cond_in_dim: int,
    code_dim: int,
    arch: str,
    *,
    projection: bool,
    projection_only: bool = False,
) -> CondLogits:
    """The matching-aware head of both stages' D in architecture preset ``arch``: the paper
    projects the condition and joins with a 1x1 conv without logit bias, pytorch uses 3x3
    with bias."""
    paper = arch == "paper"
    return CondLogits(
        channels,
        cond_in_dim,
        code_dim,
        project=paper,
        joint_kernel=1 if paper else 3,
        logit_bias=not paper,
        projection=projection,
        projection_only=projection_only,
    )


class UncondLogits(nn.Module):
    """Unconditional D head (PT Stage-II): 4x4 stride-4 convolution -> logit."""

    def __init__(self, feat_ch: int, bias: bool) -> None:
        super().__init__()
        self.logit = conv(feat_ch, 1, 4, stride=4, bias=bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # [B, C, 4, 4] -> [B]
        return self.logit(feats).flatten()


def discriminator_output(
    feats: torch.Tensor,
    cond: torch.Tensor,
    wrong_cond: torch.Tensor | None,
    cond_head: CondLogits,
    uncond_head: UncondLogits | None,
    shared_head: bool = False,
) -> DOutput:
    """Score features once against ``cond``, ``wrong_cond`` and the unconditional head.

    ``wrong_cond`` [B', .] (B' <= B) is paired with the first B' feature rows, in a
    separate head call (separate BatchNorm statistics, as in both references), or with
    ``shared_head`` in the same head call as the matching pairs, so the joint layer's
    BatchNorm cannot tell matching from mismatched pairs by their batch statistics.
    """
    batch = feats.shape[0]
    if cond.shape[0] != batch:
        raise ValueError(f"cond has {cond.shape[0]} rows, the image batch {batch}")
    wrong = None
    if wrong_cond is not None:
        n_wrong = wrong_cond.shape[0]
        if not 1 <= n_wrong <= batch:
            raise ValueError(f"wrong_cond has {n_wrong} rows; expected 1..{batch}")
    if wrong_cond is not None and shared_head:
        both = cond_head(torch.cat([feats, feats[:n_wrong]]), torch.cat([cond, wrong_cond]))
        logits, wrong = both[:batch], both[batch:]  # [B], [B']
    else:
        logits = cond_head(feats, cond)  # [B]
        if wrong_cond is not None:
            wrong = cond_head(feats[:n_wrong], wrong_cond)  # [B']
    uncond = uncond_head(feats) if uncond_head is not None else None  # [B]
    if cond_head.projection is None:
        return DOutput(logits, wrong, uncond)
    pooled = feats.float().mean(dim=(2, 3))  # [B, C], as in CondLogits
    return DOutput(logits, wrong, uncond, pooled, cond_head.projection(cond.float()))
