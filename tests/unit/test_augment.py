"""DiffAugment policies: exact pixel moves, masks, gradients, determinism, config errors."""

from __future__ import annotations

import pytest
import torch

from stackgan.augment import cutout, diff_augment, translate
from stackgan.config import ConfigError, TrainConfig, from_dict


def _images(b: int = 6, c: int = 3, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w) + 1.0


def test_translation_moves_whole_images_by_integer_offsets_and_fills_zeros():
    x = _images()
    gen = torch.Generator().manual_seed(3)
    out = translate(x, generator=gen)
    h, w = x.shape[-2:]
    offsets = []
    for b in range(x.shape[0]):
        # Recover the offset from where the first image value landed, then check every pixel.
        found = None
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(x[b])
                for i in range(h):
                    for j in range(w):
                        if 0 <= i + dy < h and 0 <= j + dx < w:
                            ref[:, i, j] = x[b, :, i + dy, j + dx]
                if torch.equal(ref, out[b]):
                    found = (dy, dx)
        assert found is not None, f"image {b} is not a shifted copy of its input"
        offsets.append(found)
    # Offsets are drawn per image: not all images move the same way.
    assert len(set(offsets)) > 1


def test_translation_range_is_an_eighth_of_the_side():
    x = torch.ones(400, 1, 16, 16)
    out = translate(x, generator=torch.Generator().manual_seed(0))
    zero_rows = (out[:, 0].sum(dim=2) == 0).sum(dim=1)  # rows shifted out of the image
    assert int(zero_rows.max()) == 2 and int(zero_rows.min()) == 0


def test_cutout_zeros_one_square_of_half_the_side_at_most():
    x = torch.ones(200, 3, 16, 16)
    out = cutout(x, generator=torch.Generator().manual_seed(1))
    zeros = (out[:, 0] == 0).float()
    assert torch.equal(out[:, 0], out[:, 1])  # the same mask on every channel
    per_image = zeros.sum(dim=(1, 2))
    assert int(per_image.max()) == 64  # an 8x8 square fully inside
    assert int(per_image.min()) >= 16  # clipped at a corner: at least a quarter remains
    for z in zeros[:20]:  # the zeros form one axis-aligned rectangle
        rows, cols = z.sum(dim=1).nonzero().flatten(), z.sum(dim=0).nonzero().flatten()
        assert z[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].eq(1).all()
        assert int(z.sum()) == len(rows) * len(cols)


def test_gradient_reaches_the_input_through_both_policies():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = diff_augment(x, ("translation", "cutout"), torch.Generator().manual_seed(2))
    out.sum().backward()
    # Each kept pixel contributes gradient 1; dropped pixels 0.
    assert x.grad is not None
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(x.grad.mean()) < 1


def test_same_generator_state_same_augmentation_and_channels_last_kept():
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    a = diff_augment(x, ("translation", "cutout"), torch.Generator().manual_seed(5))
    b = diff_augment(x, ("translation", "cutout"), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert diff_augment(x, (), None) is x


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="colour"):
        diff_augment(torch.zeros(1, 3, 8, 8), ("colour",))
    with pytest.raises(ConfigError, match=r"train\.d_augment"):
        from_dict(TrainConfig, {"d_augment": ["color"]}, prefix="train")
    with pytest.raises(ConfigError, match=r"train\.d_augment"):
        from_dict(TrainConfig, {"d_augment": ["cutout", "cutout"]}, prefix="train")
    assert from_dict(TrainConfig, {"d_augment": ["translation"]}).d_augment == ("translation",)
