"""Building blocks shared by both architecture presets.

Conventions follow both reference code bases: convolutions have no bias unless asked
for, 4x4 stride-2 convolutions use padding 1 (TF ``SAME`` on even sizes), 3x3 stride-1
convolutions padding 1, 1x1 convolutions none; LeakyReLU slope is 0.2 everywhere;
up-sampling is nearest-neighbour x2.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

Act = Literal["relu", "leaky_relu"]

LEAKY_SLOPE = 0.2


class DOutput(NamedTuple):
    """Discriminator logits (no sigmoid).

    ``logits`` [B] scores (img, cond); ``wrong_logits`` [B'] scores the first B' image
    rows against ``wrong_cond`` (None when no wrong_cond was given); ``uncond_logits`` [B]
    is the unconditional head (None when the network has none).
    """

    logits: torch.Tensor
    wrong_logits: torch.Tensor | None
    uncond_logits: torch.Tensor | None


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


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """A 2-D convolution with TF ``SAME`` padding for the sizes used here.

    Padding (kernel - stride) // 2: 3x3/1 and 1x1/1 keep the size, 4x4/2 halves it
    (padding 1, as in StackGAN-Pytorch), 4x4/4 is the 4x4 -> 1x1 logit convolution.
    """
    padding = max(kernel - stride, 0) // 2
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)


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


class UpBlock(nn.Sequential):
    """Nearest-neighbour x2 -> conv3x3 -> BatchNorm -> ReLU (``act=False``: no ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, act: bool = True) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvBlock(in_ch, out_ch, 3, bn=True, act="relu" if act else None),
        )


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
    """TF-code bottleneck: conv1x1->mid, BN, act; conv3x3->mid, BN, act; conv3x3->C, BN; add; act."""

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
    ) -> None:
        super().__init__()
        if not project and code_dim != cond_in_dim:
            raise ValueError(
                f"without a text FC the code is the condition itself: code_dim={code_dim} "
                f"must equal cond_in_dim={cond_in_dim}"
            )
        self.text_fc = (
            nn.Sequential(nn.Linear(cond_in_dim, code_dim), make_act("leaky_relu"))
            if project
            else None
        )
        self.joint = ConvBlock(feat_ch + code_dim, feat_ch, joint_kernel, act="leaky_relu")
        self.logit = conv(feat_ch, 1, 4, stride=4, bias=logit_bias)

    def forward(self, feats: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """[B, C, 4, 4] features and [B, cond_in_dim] condition -> logits [B]."""
        code = self.text_fc(cond) if self.text_fc is not None else cond  # [B, code_dim]
        code = tile(code.to(feats.dtype), feats.shape[-1])  # [B, code_dim, 4, 4]
        h = self.joint(torch.cat([feats, code], dim=1))  # [B, C, 4, 4]
        return self.logit(h).flatten()  # [B]


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
) -> DOutput:
    """Score features once against ``cond``, ``wrong_cond`` and the unconditional head.

    ``wrong_cond`` [B', .] (B' <= B) is paired with the first B' feature rows, in a
    separate head call (separate BatchNorm statistics, as in StackGAN-Pytorch).
    """
    batch = feats.shape[0]
    if cond.shape[0] != batch:
        raise ValueError(f"cond has {cond.shape[0]} rows, the image batch {batch}")
    logits = cond_head(feats, cond)  # [B]
    wrong = None
    if wrong_cond is not None:
        n_wrong = wrong_cond.shape[0]
        if not 1 <= n_wrong <= batch:
            raise ValueError(f"wrong_cond has {n_wrong} rows; expected 1..{batch}")
        wrong = cond_head(feats[:n_wrong], wrong_cond)  # [B']
    uncond = uncond_head(feats) if uncond_head is not None else None  # [B]
    return DOutput(logits, wrong, uncond)
