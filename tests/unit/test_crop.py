"""Crop geometry against hand-computed boxes, and the resize modes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stackgan.data.crop import crop_and_resize, load_rgb, reference_crop_box


@pytest.mark.parametrize(
    ("bbox", "size", "expected"),
    [
        # R = int(0.75 * 80) = 60; cx = int((200 + 80) / 2) = 140; cy = int((100 + 40) / 2) = 70
        ((100.0, 50.0, 80.0, 40.0), (500, 375), (80, 10, 200, 130)),
        # floats are truncated first (the references load boxes with .astype(int)):
        # x=100, y=50, w=81, h=40 -> R = int(60.75) = 60, cx = int(281/2) = 140, cy = 70
        ((100.9, 50.7, 81.9, 40.2), (500, 375), (80, 10, 200, 130)),
        # touches the left/top border: R = int(0.75 * 120) = 90, cx = 60, cy = 25 -> clipped at 0
        ((0.0, 0.0, 120.0, 50.0), (300, 200), (0, 0, 150, 115)),
        # touches the right/bottom border: x + w = W, y + h = H
        # R = int(0.75 * 100) = 75; cx = int((2*200 + 100)/2) = 250; cy = int((2*150 + 50)/2) = 175
        ((200.0, 150.0, 100.0, 50.0), (300, 200), (175, 100, 300, 200)),
        # odd widths: cx = int((2*11 + 7)/2) = int(14.5) = 14; R = int(5.25) = 5
        ((11.0, 3.0, 7.0, 5.0), (100, 100), (9, 0, 19, 10)),
    ],
)
def test_reference_crop_box(bbox, size, expected):
    assert reference_crop_box(bbox, *size) == expected


def test_clipped_crop_is_stretched_to_square():
    img = Image.fromarray(np.full((200, 300, 3), 128, np.uint8))
    lr, hr, box = crop_and_resize(img, (0.0, 0.0, 120.0, 50.0))
    assert box == (0, 0, 150, 115)  # non-square crop ...
    assert lr.size == (76, 76) and hr.size == (304, 304)  # ... stretched by the square resize


def test_resize_modes_differ_and_follow_their_reference():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    lr_tf, hr_tf, _ = crop_and_resize(img, (50.0, 40.0, 100.0, 90.0), resize="tf_bicubic")
    lr_pt, hr_pt, box = crop_and_resize(img, (50.0, 40.0, 100.0, 90.0), resize="bilinear")
    # TF: the 76 px image is the bicubic downscale of the 304 px image.
    assert np.array_equal(
        np.asarray(lr_tf), np.asarray(hr_tf.resize((76, 76), Image.Resampling.BICUBIC))
    )
    # PyTorch: both sizes straight from the crop, bilinear.
    crop = img.crop(box)
    assert np.array_equal(
        np.asarray(lr_pt), np.asarray(crop.resize((76, 76), Image.Resampling.BILINEAR))
    )
    assert not np.array_equal(np.asarray(hr_tf), np.asarray(hr_pt))
    with pytest.raises(ValueError, match="resize must be one of"):
        crop_and_resize(img, None, resize="nearest")  # type: ignore[arg-type]


def test_load_rgb_converts_grayscale_and_cmyk(tmp_path):
    for mode in ("L", "CMYK"):
        path = tmp_path / f"{mode}.jpg"
        Image.new("RGB", (40, 30), (200, 30, 30)).convert(mode).save(path, format="JPEG")
        rgb, orig_mode, size = load_rgb(path)
        assert rgb.mode == "RGB" and orig_mode == mode and size == (40, 30)


def test_truncated_image_raises(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path
    )
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(OSError):
        load_rgb(path)
