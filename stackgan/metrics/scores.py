"""FID, KID and Inception Score from cached activations, computed with torchmetrics.

torchmetrics' ``FrechetInceptionDistance``, ``KernelInceptionDistance`` and
``InceptionScore`` accept a custom ``feature=`` module and call it on whatever ``update``
receives (with a custom module neither the uint8 conversion nor any resize happens). We
pass :class:`Passthrough`, an identity module exposing ``num_features`` (FID reads it to
size its states; without it FID would probe the module with a random 299x299 image), and
feed cached activations as float64 CPU tensors:

* FID casts features to float64, accumulates sums and ``X^T X`` in float64 and casts the
  result back to the input dtype, so float64 inputs give a float64 result.
* KID and IS keep the input dtype; float64 avoids cancellation in the unbiased MMD sums.
* KID subsets and the IS shuffle use ``torch.randperm`` on the global CPU generator; we
  seed it inside ``torch.random.fork_rng`` so results depend on ``seed`` only and the
  caller's RNG state is restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy
import torch
import torchmetrics
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

__all__ = [
    "FID_FROM_STATS_IMPLEMENTATION",
    "FID_IMPLEMENTATION",
    "IS_IMPLEMENTATION",
    "KID_IMPLEMENTATION",
    "Passthrough",
    "feature_statistics",
    "fid_from_stats",
    "frechet_distance",
    "implementation_info",
    "inception_score",
    "kernel_inception_distance",
]

log = logging.getLogger(__name__)

_TM = f"torchmetrics-{torchmetrics.__version__}"
FID_IMPLEMENTATION = f"{_TM} FrechetInceptionDistance (float64, ddof=1 covariances)"
KID_IMPLEMENTATION = f"{_TM} KernelInceptionDistance (float64, unbiased poly-kernel MMD²)"
IS_IMPLEMENTATION = f"{_TM} InceptionScore (float64 softmax of logits, seeded shuffle)"
FID_FROM_STATS_IMPLEMENTATION = (
    "stackgan float64 torch.linalg.eigvals form (same formula as torchmetrics' _compute_fid)"
)

_UPDATE_CHUNK = 4096
_BUFFER_WARNING = r".*will save all extracted features in buffer.*"


class Passthrough(nn.Module):
    """Identity ``feature=`` module for torchmetrics; ``num_features`` sizes FID's states."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` unchanged."""
        return x


def _as_2d_float64(x: Tensor | np.ndarray, what: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.dim() != 2:
        raise ValueError(f"{what}: expected a 2-D array [N, D], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return t


@contextlib.contextmanager
def _seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Seed the global CPU generator for the block and restore its previous state after."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def _quiet_buffer_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BUFFER_WARNING, category=UserWarning)
        yield


def _note(notes: list[str] | None, message: str) -> None:
    log.warning(message)
    if notes is not None:
        notes.append(message)


# The metrics are computed from activations that the caller has already gathered (rank 0
# in evaluation), so torchmetrics must not try to sync states across a process group.


def frechet_distance(real_feats: Tensor | np.ndarray, fake_feats: Tensor | np.ndarray) -> float:
    """FID between two feature sets (``FID_IMPLEMENTATION``).

    ``‖μ_r − μ_f‖² + tr Σ_r + tr Σ_f − 2 tr (Σ_r Σ_f)^{1/2}`` with ddof=1 covariances, via
    torchmetrics' ``FrechetInceptionDistance`` fed float64 activations in chunks.

    Args:
        real_feats: ``[N_r, D]`` activations (e.g. pool3), N_r >= 2.
        fake_feats: ``[N_f, D]`` activations, N_f >= 2.
    """
    real = _as_2d_float64(real_feats, "real_feats")
    fake = _as_2d_float64(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError("FID needs at least 2 samples per set")
    metric = FrechetInceptionDistance(
        feature=Passthrough(real.shape[1]), normalize=False, sync_on_compute=False
    )
    for feats, is_real in ((real, True), (fake, False)):
        for start in range(0, feats.shape[0], _UPDATE_CHUNK):
            metric.update(feats[start : start + _UPDATE_CHUNK], real=is_real)
    return float(metric.compute())


def feature_statistics(feats: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and ddof=1 covariance ``[D, D]`` in float64 (for cached reference stats)."""
    x = _as_2d_float64(feats, "feats")
    if x.shape[0] < 2:
        raise ValueError("statistics need at least 2 samples")
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu.numpy(), sigma.numpy()


def fid_from_stats(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    """FID from cached ``(μ, Σ)`` pairs (``FID_FROM_STATS_IMPLEMENTATION``).

    Float64, ``tr (Σ1 Σ2)^{1/2} = Σ_i Re sqrt(λ_i(Σ1 Σ2))`` (the eigenvalue form torchmetrics
    uses internally), so it agrees with :func:`frechet_distance` on the same data. Used
    when the real set is only available as stored reference statistics.
    """
    m1 = torch.as_tensor(np.asarray(mu1), dtype=torch.float64).reshape(-1)
    m2 = torch.as_tensor(np.asarray(mu2), dtype=torch.float64).reshape(-1)
    s1 = torch.as_tensor(np.asarray(sigma1), dtype=torch.float64)
    s2 = torch.as_tensor(np.asarray(sigma2), dtype=torch.float64)
    d = m1.shape[0]
    if m2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {tuple(m1.shape)}, mu2 {tuple(m2.shape)}, "
            f"sigma1 {tuple(s1.shape)}, sigma2 {tuple(s2.shape)}"
        )
    tr_covmean = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    value = (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * tr_covmean
    return float(value)


def kernel_inception_distance(
    real_feats: Tensor | np.ndarray,
    fake_feats: Tensor | np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
    notes: list[str] | None = None,
) -> tuple[float, float]:
    """KID mean and std over random subsets (``KID_IMPLEMENTATION``).

    Unbiased MMD² with kernel ``k(x, y) = (γ xᵀy + coef)^degree``, γ = 1/D by default; each
    subset draws ``subset_size`` rows without replacement from each set; std is the
    population std (ddof=0) over subsets, as torchmetrics returns it.

    Args:
        real_feats: ``[N_r, D]`` activations.
        fake_feats: ``[N_f, D]`` activations.
        subsets: Number of random subsets.
        subset_size: Rows per subset; clipped to ``min(N_r, N_f)`` with a note.
        degree: Polynomial degree.
        gamma: Kernel scale; ``None`` means ``1 / D``.
        coef: Kernel offset.
        seed: Seeds the subset draws (global RNG restored afterwards).
        notes: If given, messages about adjustments are appended (they are also logged).
    """
    real = _as_2d_float64(real_feats, "real_feats")
    fake = _as_2d_float64(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    n_min = min(real.shape[0], fake.shape[0])
    if n_min < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if subset_size > n_min:
        _note(notes, f"KID subset_size {subset_size} clipped to {n_min} (smallest sample count)")
        subset_size = n_min
    with _quiet_buffer_warning():
        metric = KernelInceptionDistance(
            feature=Passthrough(real.shape[1]),
            subsets=int(subsets),
            subset_size=int(subset_size),
            degree=int(degree),
            gamma=None if gamma is None else float(gamma),
            coef=float(coef),
            normalize=False,
            sync_on_compute=False,
        )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with _seeded_cpu_rng(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(
    logits: Tensor | np.ndarray,
    *,
    splits: int = 10,
    seed: int = 0,
    std_ddof: int = 0,
    notes: list[str] | None = None,
) -> tuple[float, float]:
    """Inception Score mean and std over ``splits`` (``IS_IMPLEMENTATION``).

    ``IS = exp(E_x KL(p(y|x) ‖ p(y)))`` per split, with ``p(y|x) = softmax(logits)`` and
    ``p(y)`` the split's mean prediction. Rows are shuffled with ``seed`` and cut into
    ``splits`` consecutive chunks (``torch.chunk``: all chunks of size ceil(N/splits)
    except the last), as torchmetrics does; StackGAN shuffles too and cuts at
    ``i*N//splits``. If ``torch.chunk`` would give fewer than ``splits`` chunks (tiny N),
    the last ``N mod splits`` rows are dropped first, with a note.

    Args:
        logits: ``[N, K]`` pre-softmax logits (for StackGAN CUB: the 50 class logits).
        splits: Number of splits (10 in the StackGAN protocol).
        seed: Seeds the shuffle (global RNG restored afterwards).
        std_ddof: 0 (default) gives ``np.std`` as in StackGAN/improved-GAN; torchmetrics
            itself returns ddof=1 and is rescaled.
        notes: If given, messages about adjustments are appended (they are also logged).
    """
    x = _as_2d_float64(logits, "logits")
    n = x.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"need 1 <= splits <= N, got splits={splits}, N={n}")
    if std_ddof not in (0, 1):
        raise ValueError(f"std_ddof must be 0 or 1, got {std_ddof}")
    if len(torch.arange(n).chunk(splits)) != splits:
        keep = n - n % splits
        _note(notes, f"IS: dropped {n - keep} of {n} rows so that {splits} splits are equal")
        x = x[:keep]
    with _quiet_buffer_warning():
        metric = InceptionScore(
            feature=Passthrough(x.shape[1]), splits=int(splits), sync_on_compute=False
        )
    metric.update(x)
    with _seeded_cpu_rng(seed), warnings.catch_warnings():
        # one split: torch warns about std with zero degrees of freedom; we return 0.
        warnings.filterwarnings("ignore", message=r".*degrees of freedom.*")
        mean, std = metric.compute()
    if splits == 1:
        return float(mean), 0.0
    std_value = float(std) if std_ddof == 1 else float(std) * math.sqrt((splits - 1) / splits)
    return float(mean), std_value


def implementation_info() -> dict[str, Any]:
    """Library versions and implementation strings for result JSONs."""
    return {
        "torchmetrics": torchmetrics.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "fid": FID_IMPLEMENTATION,
        "fid_from_stats": FID_FROM_STATS_IMPLEMENTATION,
        "kid": KID_IMPLEMENTATION,
        "inception_score": IS_IMPLEMENTATION,
    }
