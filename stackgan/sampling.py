"""Inference from network files: deterministic, batch-chunked sampling for both stages.

A Stage-I network file holds G; a Stage-II file holds the trained Stage-II G and the
frozen Stage-I G it was trained with (including the reference's drifted BatchNorm
statistics when that option was on), so either file samples on its own.

Determinism: the requests (embedding rows) are cut into fixed chunks of ``batch_size``;
chunk ``c`` draws its noise z and the CA noise from seed ``(seed, c)``. The images
therefore depend only on the request order, the seed and the batch size -- not on how
chunks are spread over ranks -- so sharded evaluation reproduces a single-process run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stackgan.config import ModelConfig
from stackgan.networkfile import read_network
from stackgan.networks import build_networks
from stackgan.stages import StackedGenerator


@dataclass
class Samples:
    """One chunk of generated images, in [-1, 1]."""

    stage1: torch.Tensor  # [B, 3, 64, 64]
    final: torch.Tensor  # [B, 3, 64, 64] or [B, 3, 256, 256]


class Sampler(nn.Module):
    """Maps text embeddings and noise to images with the networks of one network file."""

    def __init__(
        self, stage: int, model: ModelConfig, g1: nn.Module, g2: nn.Module | None, meta: dict
    ) -> None:
        super().__init__()
        self.stage, self.model, self.g1, self.g2, self.meta = stage, model, g1, g2, meta
        self.eval()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        use_ema: bool = True,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> Sampler:
        """Load a network file; ``use_ema`` picks the EMA generator when the file has one;
        ``channels_last`` puts the generators (and so their activations) in that layout."""
        net = read_network(path)
        stage = int(net.stage)
        model = net.model_config(prefix="network model")
        weights, weights_name = net.generator_weights(use_ema)
        if stage == 1:
            g1, _ = build_networks(model, 1)
            g1.load_state_dict(weights)
            g2 = None
        else:
            g1, _ = build_networks(net.stage1_model_config(prefix="stage1 model"), 1)
            g1.load_state_dict(net.stage1_weights())
            g2, _ = build_networks(model, 2)
            g2.load_state_dict(weights)
        meta = {"path": str(path), "stage": stage, "step": net.step, "weights": weights_name}
        sampler = cls(stage, model, g1, g2, meta).to(device)
        if channels_last:
            sampler = sampler.to(memory_format=torch.channels_last)
        return sampler

    @property
    def trained(self) -> nn.Module:
        """The generator this file trained: G1 for Stage-I, G2 for Stage-II."""
        return self.g1 if self.g2 is None else self.g2

    @torch.no_grad()
    def recompute_bn_statistics(
        self, embeddings: torch.Tensor, *, seed: int, batch_size: int = 64
    ) -> None:
        """Standing statistics: set the trained generator's BatchNorm running statistics to
        their exact average over ``embeddings`` [N, text_dim] with seeded noise (batches of
        ``batch_size`` in train mode, momentum ``None``). The frozen Stage-I G stays in eval
        mode. Deterministic for the same weights, inputs and seed."""
        g = self.trained
        norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average = exact mean over the batches
        device = next(g.parameters()).device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        devices = [device] if device.type == "cuda" else []
        g.train()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + 1)
                for start in range(0, embeddings.shape[0], batch_size):
                    emb = embeddings[start : start + batch_size].to(device).float()
                    z = torch.randn(emb.shape[0], self.model.z_dim, generator=gen).to(device)
                    if self.g2 is None:
                        self.g1(emb, z)
                    else:
                        StackedGenerator(self.g1, self.g2)(emb, z)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.eval()

    @property
    def resolution(self) -> int:
        """Side of the final images in pixels."""
        return 64 if self.g2 is None else 256

    @torch.no_grad()
    def forward(self, emb: torch.Tensor, z: torch.Tensor) -> Samples:
        """Stage-I and final images for ``emb`` [B, text_dim] and ``z`` [B, z_dim]."""
        if self.g2 is None:
            low, _, _ = self.g1(emb, z)
            return Samples(low, low)
        (high, _, _), low = StackedGenerator(self.g1, self.g2).forward_with_input(emb, z)
        return Samples(low, high)

    def sample_chunk(self, emb: torch.Tensor, chunk: int, seed: int) -> Samples:
        """Images for one chunk with noise (z and CA) seeded by ``(seed, chunk)``."""
        device = emb.device
        chunk_seed = int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])
        gen = torch.Generator(device="cpu").manual_seed(chunk_seed)
        z = torch.randn(emb.shape[0], self.model.z_dim, generator=gen).to(device)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(chunk_seed + 1)  # the CA noise inside the generators
            return self(emb, z)


def chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in order."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def shard_chunks(
    n: int, batch_size: int, rank: int, world_size: int
) -> list[tuple[int, tuple[int, int]]]:
    """This rank's ``(chunk_id, (start, stop))``: chunk ``c`` goes to rank ``c % world``.

    Every index in ``range(n)`` is in exactly one chunk of exactly one rank, for any ``n``
    and world size (no padding, no duplicates).
    """
    return [(c, span) for c, span in enumerate(chunks(n, batch_size)) if c % world_size == rank]


def iterate_samples(
    sampler: Sampler,
    embeddings: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, int, Samples]]:
    """Yield ``(start, stop, samples)`` for this rank's chunks of ``embeddings`` [N, text_dim]."""
    for chunk, (start, stop) in shard_chunks(embeddings.shape[0], batch_size, rank, world_size):
        emb = embeddings[start:stop].to(device).float()
        yield start, stop, sampler.sample_chunk(emb, chunk, seed)
