"""twin-FID against scipy, diversity and stage consistency on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from stackgan.metrics import quality


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_twin_fid_matches_scipy_on_features():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(600, 16))
    fake = rng.normal(0.3, 1.4, size=(500, 16)) @ rng.normal(size=(16, 16)) * 0.4
    assert quality.twin_fid(real, fake) == pytest.approx(_scipy_fid(real, fake), rel=1e-6)
    # identical sets: zero (up to the sqrtm's numerical error)
    assert abs(quality.twin_fid(real, real)) < 1e-6
    # a mean shift of d in every one of 16 dims adds 16 d^2
    assert quality.twin_fid(real, real + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)


def test_pairwise_distance_on_known_points():
    pts = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5
    assert quality.mean_pairwise_distance(pts) == pytest.approx(4.0)
    groups = np.array([0, 0, 1, 1, 2])
    feats = np.array([[0.0], [2.0], [5.0], [5.0], [9.0]])  # group 2 has one member: skipped
    assert quality.grouped_pairwise_distance(feats, groups) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        quality.mean_pairwise_distance(pts[:1])


def test_diversity_is_zero_for_collapse_and_one_for_real_like_spread():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(30, 8)) * 5
    real = np.repeat(centres, 6, axis=0) + rng.normal(size=(180, 8))
    classes = np.repeat(np.arange(30), 6)
    within = quality.grouped_pairwise_distance(real, classes)
    collapsed = np.repeat(centres, 4, axis=0)  # every noise draw gives the same features
    caps = np.repeat(np.arange(30), 4)
    assert quality.diversity(collapsed, caps, within) == pytest.approx(0.0, abs=1e-9)
    like_real = collapsed + rng.normal(size=collapsed.shape)
    assert 0.85 < quality.diversity(like_real, caps, within) < 1.15
    half = collapsed + 0.5 * rng.normal(size=collapsed.shape)
    assert 0.4 < quality.diversity(half, caps, within) < 0.6


def test_low_frequency_correlation_keeps_layout_and_ignores_detail():
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(
        torch.rand(6, 3, 8, 8, generator=g) * 2 - 1, size=64, mode="bilinear"
    )
    up = torch.nn.functional.interpolate(base, size=256, mode="bicubic").clamp(-1, 1)
    checker = (torch.arange(256)[:, None] + torch.arange(256)[None, :]) % 2 * 0.4 - 0.2
    detailed = up + checker  # same layout plus pixel-level detail
    corr = quality.low_frequency_correlation(base, detailed)
    assert corr.shape == (6,) and (corr > 0.97).all()
    other = torch.rand(6, 3, 64, 64, generator=g) * 2 - 1
    assert np.abs(quality.low_frequency_correlation(base, other)).mean() < 0.3
    np.testing.assert_allclose(quality.low_frequency_correlation(base, -base), -1.0, atol=1e-9)


def test_attribute_agreement():
    a = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    b = np.array([[1, 2], [3, 0], [0, 6], [7, 8]])
    agree = quality.attribute_agreement(a, b)
    assert agree == {"body": 0.75, "wing": 0.75, "attributes": 0.75, "joint": 0.5}
