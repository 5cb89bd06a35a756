"""Stage-I generator (text + z -> 64x64) and discriminator, in both presets.

``arch="paper"``: the TF birds code (FC with bias + BN without ReLU, bottleneck blocks,
an un-activated up-block, no 64-channel layer; D with a bottleneck block and own text FC).
``arch="pytorch"``: StackGAN-Pytorch (FC + BN + ReLU, four plain up-blocks; plain D).
Layer tables: docs/architecture.md.
"""

from __future__ import annotations

import torch
from torch import nn

from stackgan.config import Arch, CaNonlinearity
from stackgan.networks.blocks import (
    Bottleneck,
    ConvBlock,
    DOutput,
    TextFiLM,
    UpBlock,
    Upsample2x,
    arch_cond_head,
    check_arch,
    conv,
    discriminator_output,
    memory_format_of,
)
from stackgan.networks.conditioning import CaNoise, CondAugment


class Stage1Generator(nn.Module):
    """Stage-I G: CA, FC to 4x4x(8*gf_dim), up-sampling to a 64x64 image in [-1, 1].

    Args:
        text_dim: text embedding size.
        z_dim: noise size.
        cond_dim: CA output size.
        gf_dim: base width (the 4x4 map has 8*gf_dim channels).
        arch: ``"paper"`` or ``"pytorch"``.
        ca_nonlinearity: CA activation (``"leaky_relu"`` or ``"relu"``).
        ca_noise: CA eps distribution (``"normal"`` or TF's ``"truncated"``).
        text_film: modulate the output of every up-sampling block with the condition
            (:class:`TextFiLM`; not in the paper).
        text_input: the condition enters the input FC with z (the paper); False (needs
            ``text_film``) feeds the FC with z alone, so the text reaches G only through
            the FiLM layers (layout from the noise, colours from the text).
    """

    def __init__(
        self,
        *,
        text_dim: int,
        z_dim: int,
        cond_dim: int,
        gf_dim: int,
        arch: Arch,
        ca_nonlinearity: CaNonlinearity,
        ca_noise: CaNoise = "normal",
        text_film: bool = False,
        text_input: bool = True,
    ) -> None:
        super().__init__()
        check_arch(arch)
        if not (text_input or text_film):
            raise ValueError("a Stage-I G without text at its input needs text_film")
        self.arch = arch
        self.text_input = text_input
        self.ngf = gf_dim * 8
        fc_in = z_dim + (cond_dim if text_input else 0)
        ngf = self.ngf
        self.ca = CondAugment(
            text_dim, cond_dim, ca_nonlinearity, log_sigma=arch == "paper", noise=ca_noise
        )
        if arch == "paper":
            # FC (bias) + BN, no activation; then bottleneck / up / bottleneck / up / up / up.
            self.fc = nn.Sequential(nn.Linear(fc_in, ngf * 16), nn.BatchNorm1d(ngf * 16))
            self.body = nn.Sequential(
                Bottleneck(ngf, gf_dim * 2, "relu"),  # [B, 8g, 4, 4]
                UpBlock(ngf, gf_dim * 4, act=False),  # [B, 4g, 8, 8]
                Bottleneck(gf_dim * 4, gf_dim, "relu"),  # [B, 4g, 8, 8]
                UpBlock(gf_dim * 4, gf_dim * 2),  # [B, 2g, 16, 16]
                UpBlock(gf_dim * 2, gf_dim),  # [B, g, 32, 32]
                Upsample2x(),  # [B, g, 64, 64]
                conv(gf_dim, 3, 3),  # [B, 3, 64, 64]
                nn.Tanh(),
            )
        else:
            self.fc = nn.Sequential(
                nn.Linear(fc_in, ngf * 16, bias=False),
                nn.BatchNorm1d(ngf * 16),
                nn.ReLU(inplace=True),
            )
            self.body = nn.Sequential(
                UpBlock(ngf, ngf // 2),  # [B, 4g, 8, 8]
                UpBlock(ngf // 2, ngf // 4),  # [B, 2g, 16, 16]
                UpBlock(ngf // 4, ngf // 8),  # [B, g, 32, 32]
                UpBlock(ngf // 8, ngf // 16),  # [B, g/2, 64, 64]
                conv(ngf // 16, 3, 3),  # [B, 3, 64, 64]
                nn.Tanh(),
            )
        # Not in the paper: the condition modulates every up-sampling block's output.
        self.film = nn.ModuleDict(
            {
                str(i): TextFiLM(cond_dim, block[1][0].out_channels)
                for i, block in enumerate(self.body)
                if text_film and isinstance(block, UpBlock)
            }
        )

    def forward(
        self, text_emb: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, text_dim], [B, z_dim] -> (img [B, 3, 64, 64], mu, logvar [B, cond_dim])."""
        c, mu, logvar = self.ca(text_emb)  # [B, cond_dim]
        # Input order as in each reference (TF concat(c, z), PT cat(z, c)).
        if not self.text_input:
            zc = z.to(c.dtype)
        elif self.arch == "paper":
            zc = torch.cat([c, z.to(c.dtype)], dim=1)
        else:
            zc = torch.cat([z.to(c.dtype), c], dim=1)
        h = self.fc(zc).reshape(-1, self.ngf, 4, 4)  # [B, 8g, 4, 4]
        # In the layout of the convolutions (train.channels_last): NCHW activations would
        # meet channels_last weights and be converted at every layer, forward and backward.
        h = h.contiguous(memory_format=memory_format_of(self.body))
        if not self.film:
            return self.body(h), mu, logvar
        for i, block in enumerate(self.body):
            h = block(h)
            if str(i) in self.film:
                h = self.film[str(i)](h, c)
        return h, mu, logvar


class Stage1Discriminator(nn.Module):
    """Stage-I D: 64x64 image -> 4x4 features; matching-aware conditional logit.

    Args:
        df_dim: base width (features have 8*df_dim channels).
        cond_in_dim: size of the condition passed to ``forward`` (paper: text_dim,
            pytorch: cond_dim).
        code_dim: size of the tiled text code (paper: d_text_dim via D's own FC;
            pytorch: must equal ``cond_in_dim``).
        arch: ``"paper"`` or ``"pytorch"``.
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
        projection: bool = False,
        projection_only: bool = False,
    ) -> None:
        super().__init__()
        check_arch(arch)
        self.arch = arch
        paper = arch == "paper"
        ndf = df_dim
        layers: list[nn.Module] = [
            ConvBlock(3, ndf, 4, 2, bn=False, act="leaky_relu"),  # [B, d, 32, 32]
            ConvBlock(ndf, ndf * 2, 4, 2, act="leaky_relu"),  # [B, 2d, 16, 16]
            # TF: BN without activation here (stageI/model.py d_encode_image).
            ConvBlock(ndf * 2, ndf * 4, 4, 2, act=None if paper else "leaky_relu"),  # 8x8
            ConvBlock(ndf * 4, ndf * 8, 4, 2, act=None if paper else "leaky_relu"),  # 4x4
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

    def forward(
        self,
        img: torch.Tensor,
        cond: torch.Tensor,
        wrong_cond: torch.Tensor | None = None,
        *,
        shared_head: bool = False,
    ) -> DOutput:
        """img [B, 3, 64, 64], cond [B, cond_in_dim], wrong_cond [B', cond_in_dim] -> logits."""
        feats = self.encode(img)  # [B, 8d, 4, 4]
        return discriminator_output(
            feats, cond, wrong_cond, self.cond_head, None, shared_head=shared_head
        )
