"""FID / KID / IS math on torchmetrics, checked against independent numpy/scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from stackgan.metrics.scores import (
    feature_statistics,
    fid_from_stats,
    frechet_distance,
    implementation_info,
    inception_score,
    kernel_inception_distance,
)


def _features(seed: int, n: int, d: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


def _fid_reference(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False, ddof=1), np.cov(y, rowvar=False, ddof=1)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb / d + 1)³, written out directly."""
    n, d = x.shape
    m = y.shape[0]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    term_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


# ---------------------------------------------------------------- FID


def test_fid_matches_scipy_sqrtm_reference() -> None:
    x = _features(0, 400, 24)
    y = _features(1, 300, 24, scale=1.3, shift=0.2)
    expected = _fid_reference(x, y)
    assert expected > 1.0
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    # float32 inputs (as cached in HDF5) are promoted to float64 before the math
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    got32 = frechet_distance(torch.from_numpy(x32), torch.from_numpy(y32))
    ref32 = _fid_reference(x32.astype(np.float64), y32.astype(np.float64))
    assert got32 == pytest.approx(ref32, rel=1e-6)


def test_fid_identity_symmetry_and_mean_shift() -> None:
    x = _features(2, 300, 16)
    y = _features(3, 350, 16, scale=0.8)
    assert abs(frechet_distance(x, x)) < 1e-8
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)
    delta = np.random.default_rng(4).normal(size=16)
    shifted = frechet_distance(x, x + delta)
    assert shifted == pytest.approx(float(delta @ delta), rel=1e-6, abs=1e-8)


def test_fid_from_stats_agrees_with_features() -> None:
    x = _features(5, 200, 12)
    y = _features(6, 220, 12, shift=0.5)
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    np.testing.assert_allclose(s1, np.cov(x, rowvar=False, ddof=1), rtol=1e-10, atol=1e-12)
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(_fid_reference(x, y), rel=1e-6)
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(x, y), rel=1e-9)
    with pytest.raises(ValueError, match="shape mismatch"):
        fid_from_stats(mu1, s1, mu2[:5], s2)


def test_fid_rejects_bad_input() -> None:
    x = _features(7, 10, 4)
    with pytest.raises(ValueError, match="feature dims differ"):
        frechet_distance(x, x[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(x, x[:1])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(bad, x)


# ---------------------------------------------------------------- KID


def test_kid_matches_hand_computed_unbiased_mmd() -> None:
    x = _features(8, 60, 10)
    y = _features(9, 60, 10, scale=1.4, shift=0.3)
    expected = _kid_reference(x, y)
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=60)
    assert mean == pytest.approx(expected, rel=1e-9)
    assert std == 0.0
    # same data → unbiased estimate near 0; different data → clearly larger
    same_mean, _ = kernel_inception_distance(x, _features(10, 60, 10), subsets=1, subset_size=60)
    assert abs(same_mean) < mean


def test_kid_clips_subset_size_with_note() -> None:
    x = _features(11, 40, 8)
    y = _features(12, 40, 8, shift=1.0)
    notes: list[str] = []
    mean, _ = kernel_inception_distance(x, y, subsets=1, subset_size=1000, notes=notes)
    assert mean == pytest.approx(_kid_reference(x, y), rel=1e-9)
    assert len(notes) == 1
    assert "clipped to 40" in notes[0]


def test_kid_seed_is_deterministic_and_leaves_global_rng_alone() -> None:
    x = _features(13, 80, 8)
    y = _features(14, 70, 8, shift=0.4)
    state = torch.get_rng_state()
    a = kernel_inception_distance(x, y, subsets=6, subset_size=20, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = kernel_inception_distance(x, y, subsets=6, subset_size=20, seed=1)
    c = kernel_inception_distance(x, y, subsets=6, subset_size=20, seed=2)
    assert a == b
    assert a != c
    assert a[1] > 0.0


# ---------------------------------------------------------------- IS


def test_is_uniform_predictions_give_one() -> None:
    logits = np.zeros((50, 7))
    mean, std = inception_score(logits, splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_is_confident_even_one_hot_gives_number_of_classes() -> None:
    k = 8
    logits = 60.0 * np.eye(k)[np.arange(16 * k) % k]
    mean, std = inception_score(logits, splits=1)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == 0.0


def test_is_splits_follow_seeded_shuffle_and_population_std() -> None:
    # Confident one-hot predictions: the IS of a split is exp(entropy of its class
    # histogram). Reproduce torchmetrics' seeded shuffle + torch.chunk independently.
    k, n, splits, seed = 5, 53, 4, 3
    labels = np.random.default_rng(0).integers(0, k, size=n)
    logits = 60.0 * np.eye(k)[labels]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    per_split = []
    size = math.ceil(n / splits)  # torch.chunk: equal ceil-sized chunks, shorter last one
    for chunk in np.split(labels[perm], range(size, n, size)):
        p = np.bincount(chunk, minlength=k) / len(chunk)
        p = p[p > 0]
        per_split.append(math.exp(-(p * np.log(p)).sum()))
    mean, std = inception_score(logits, splits=splits, seed=seed)
    assert mean == pytest.approx(np.mean(per_split), rel=1e-9)
    assert std == pytest.approx(np.std(per_split), rel=1e-9)  # ddof=0, as StackGAN
    _, std1 = inception_score(logits, splits=splits, seed=seed, std_ddof=1)
    assert std1 == pytest.approx(np.std(per_split, ddof=1), rel=1e-9)
    other_mean, _ = inception_score(logits, splits=splits, seed=seed + 1)
    assert other_mean != mean


def test_is_seed_leaves_global_rng_alone_and_drops_remainder_when_needed() -> None:
    logits = np.random.default_rng(1).normal(size=(11, 6)) * 4
    state = torch.get_rng_state()
    notes: list[str] = []
    inception_score(logits, splits=10, notes=notes)  # chunk(11, 10) would give 6 chunks
    assert torch.equal(torch.get_rng_state(), state)
    assert notes == ["IS: dropped 1 of 11 rows so that 10 splits are equal"]
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits, splits=12)


def test_implementation_info_names_versions() -> None:
    info = implementation_info()
    import torchmetrics

    assert info["torchmetrics"] == torchmetrics.__version__
    assert info["fid"].startswith(f"torchmetrics-{torchmetrics.__version__} ")
    assert {"kid", "inception_score", "fid_from_stats", "torch"} <= info.keys()
