"""The evaluation's captioned sample grid: fixed test captions x a few noise draws."""

from __future__ import annotations

import numpy as np
import torch

from stackgan.data.index import evenly_spaced_rows
from stackgan.evaluation.protocol import Requests
from stackgan.grids import captioned_grid
from stackgan.sampling import Sampler


@torch.no_grad()
def evaluation_grid(
    sampler: Sampler, requests: Requests, n_captions: int, n_samples: int, seed: int
) -> np.ndarray:
    """Fixed test captions x ``n_samples``; Stage-I | Stage-II per row.

    Caption 0 of ``n_captions`` images spread evenly over the requests (the index is in
    class order, so the first images would all show one species).
    """
    zeros = [i for i in range(len(requests)) if requests.caption_index[i] == 0]
    picks = evenly_spaced_rows(len(zeros), n_captions)
    first = [zeros[int(k)] for k in picks]
    rows, captions = [], []
    for j, i in enumerate(first):
        emb = requests.embeddings[i : i + 1].repeat(n_samples, 1)
        out = sampler.sample_chunk(emb.to(next(sampler.parameters()).device), 10_000 + j, seed)
        groups = [out.final.cpu()] if sampler.stage == 1 else [out.stage1.cpu(), out.final.cpu()]
        rows.append(groups)
        label = (
            f"Stage-I x{n_samples}"
            if sampler.stage == 1
            else (
                f"left: Stage-I (64 px, upsampled) x{n_samples} | "
                f"right: Stage-II (256 px) x{n_samples}"
            )
        )
        captions.append(f"{requests.captions[i] or requests.keys[i]}   [{label}]")
    return captioned_grid(rows, captions, tile=128 if sampler.stage == 2 else 96)


__all__ = ["evaluation_grid"]
