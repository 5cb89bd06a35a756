"""The reference bounding-box crop and the load-size resize.

Crop (identical in StackGAN TF/PyTorch, StackGAN-v2, AttnGAN, DF-GAN): boxes are read
as integers (the references load ``bounding_boxes.txt`` with ``.astype(int)``), then::

    R  = int(0.75 * max(w, h))
    cx = int((2x + w) / 2),  cy = int((2y + h) / 2)
    box = [max(0, cx - R), max(0, cy - R), min(W, cx + R), min(H, cy + R)]

A crop clipped at the border is not square and is stretched by the square resize,
as in the references.

Resize modes (``resize`` option):

* ``tf_bicubic`` (default; the TensorFlow code behind the paper's CUB numbers,
  ``misc/preprocess_birds.py``): bicubic resize of the crop to 304, then the 76 px
  image is a bicubic resize of the 304 px image. ``scipy.misc.imresize`` used PIL's
  resize, so PIL ``BICUBIC`` reproduces it.
* ``bilinear`` (StackGAN-Pytorch ``datasets.py``): PIL bilinear resize of the crop
  directly to each load size.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Literal

from PIL import Image

ResizeMode = Literal["tf_bicubic", "bilinear"]
RESIZE_MODES: tuple[str, ...] = ("tf_bicubic", "bilinear")
LR_LOAD_SIZE = 76  # = int(64 * 76 / 64): Stage-I load size, random-cropped to 64
HR_LOAD_SIZE = 304  # = int(256 * 76 / 64): Stage-II load size, random-cropped to 256


def reference_crop_box(
    bbox: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int]:
    """Crop box ``(left, top, right, bottom)`` for a CUB ``(x, y, w, h)`` box, clipped to
    the image.
    """
    x, y, w, h = (int(v) for v in bbox)
    r = int(max(w, h) * 0.75)
    cx = int((2 * x + w) / 2)
    cy = int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def load_rgb(source: str | Path | BinaryIO) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open an image, decode it fully (truncation raises) and convert it to RGB.

    Returns:
        (rgb_image, original_mode, (width, height))
    """
    with Image.open(source) as img:
        img.load()
        return img.convert("RGB"), img.mode, img.size


def crop_and_resize(
    image: Image.Image,
    bbox: tuple[float, float, float, float] | None,
    *,
    resize: ResizeMode = "tf_bicubic",
    lr_size: int = LR_LOAD_SIZE,
    hr_size: int = HR_LOAD_SIZE,
) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """Crop around ``bbox`` (whole image if ``None``) and resize to the two load sizes.

    Returns:
        (lr_image, hr_image, crop_box)
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    width, height = image.size
    box = reference_crop_box(bbox, width, height) if bbox is not None else (0, 0, width, height)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"empty crop {box} for bbox {bbox} in a {width}x{height} image")
    cropped = image.crop(box)
    if resize == "tf_bicubic":
        hr = cropped.resize((hr_size, hr_size), Image.Resampling.BICUBIC)
        lr = hr.resize((lr_size, lr_size), Image.Resampling.BICUBIC)
    else:
        hr = cropped.resize((hr_size, hr_size), Image.Resampling.BILINEAR)
        lr = cropped.resize((lr_size, lr_size), Image.Resampling.BILINEAR)
    return lr, hr, box
