"""How the attribute classifier reads 256 px images (``read_back``) and the Stage-II skip base."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stackgan.evaluation.attributes.model import READ_BACKS, AttributeClassifier, read_back
from stackgan.networks.stage2 import skip_base


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_protocol_read_back_is_antialiased_bilinear_and_the_classifier_uses_it():
    """The evaluation protocol's read-back (the default) is unchanged: antialiased bilinear,
    and a 256 px image is classified as its read-back is."""
    high = _images(size=256)
    want = F.interpolate(high, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(read_back(high), want, rtol=0, atol=0)
    clf = AttributeClassifier(width=8).eval()
    with torch.no_grad():
        for got, ref in zip(clf(high), clf(want), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_area_read_back_returns_the_image_under_a_blockwise_constant_upsample():
    low = _images()
    up = F.interpolate(low, scale_factor=4, mode="nearest")
    torch.testing.assert_close(read_back(up, "area"), low, rtol=0, atol=1e-6)  # float means
    # the bilinear skip base is not blockwise constant: no read-back returns the image
    for mode in READ_BACKS:
        assert (read_back(skip_base(low, 256), mode) - low).abs().max() > 1e-2, mode


def test_bicubic_read_back_reproduces_a_pil_bicubic_reduction():
    """``bicubic_aa`` is the filter the data's 64 px images were made with (PIL bicubic):
    within rounding of PIL's uint8 output; the protocol's bilinear is not."""
    rng = np.random.default_rng(0)
    big = np.asarray(
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).resize(
            (256, 256), Image.Resampling.BICUBIC
        )
    )
    small = np.asarray(Image.fromarray(big).resize((64, 64), Image.Resampling.BICUBIC))

    def as_float(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1

    x, y = as_float(big), as_float(small)
    grey_levels = {m: float((read_back(x, m) - y).abs().max()) * 127.5 for m in READ_BACKS}
    assert grey_levels["bicubic_aa"] <= 1.5
    assert grey_levels["bilinear_aa"] > 5


def test_read_back_passes_64px_images_and_names_its_modes():
    low = _images()
    for mode in READ_BACKS:
        assert read_back(low, mode) is low
    with pytest.raises(ValueError, match="bilinear_aa"):
        read_back(_images(size=256), "lanczos")
    with pytest.raises(ValueError, match="multiples of 64"):
        read_back(_images(size=100), "area")
