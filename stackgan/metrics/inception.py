"""Torchvision-free InceptionV3 for FID (and the StackGAN CUB Inception Score).

``FIDInceptionV3`` reproduces the network behind ``pt_inception-2015-12-05-6726825d.pth``:
the PyTorch port of TensorFlow's 2015-12-05 Inception graph distributed by pytorch-fid
(mseitzer/pytorch-fid, Apache-2.0) and re-hosted by torch-fidelity as
``weights-inception-2015-12-05-6726825d.pth``. The module tree and therefore the
state-dict key names follow torchvision's ``Inception3`` with ``aux_logits=False`` and
1008 classes; the blocks carry the TF-graph quirks that pytorch-fid patches in:

* every 3x3/stride-1 average pool inside the mixed blocks excludes the zero padding from
  the average (``count_include_pad=False``, TF "SAME" semantics);
* the pool branch of the last block (``Mixed_7c``) is a 3x3 **max** pool, not an average
  pool (a quirk of the 2015-12-05 graph).

This file is written from a reading of those public sources, not copied from them.

Weights are never downloaded here: callers pass a local path (see docs/evaluation.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CUB_BACKGROUND_INDEX",
    "CUB_NUM_CLASSES",
    "FEATURE_DIM",
    "FID_NUM_CLASSES",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_SHA256_PREFIX",
    "INPUT_SIZE",
    "FIDInceptionV3",
    "drop_background_logit",
    "load_cub_classifier",
    "load_fid_inception",
    "load_state_dict_strict",
    "state_dict_layout",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
FID_NUM_CLASSES = 1008
CUB_NUM_CLASSES = 51  # 50 CUB test classes + background logit at index 0
CUB_BACKGROUND_INDEX = 0
INPUT_SIZE = 299
FEATURE_DIM = 2048

PoolKind = Literal["avg", "max"]


class ConvBN(nn.Module):
    """Bias-free convolution, batch norm (eps 1e-3) and ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv → BN → ReLU."""
        return F.relu(self.bn(self.conv(x)))


def _pool3x3_same(x: Tensor, kind: PoolKind) -> Tensor:
    """3x3 stride-1 pool with TF "SAME" padding (padding never enters an average)."""
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block (torchvision ``InceptionA`` layout, TF average pool)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the four branches along channels."""
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_pool3x3_same(x, "avg"))
        return torch.cat([self.branch1x1(x), b5, b3, bp], dim=1)


class MixedB(nn.Module):
    """35→17 grid reduction (torchvision ``InceptionB`` layout)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the strided conv branches and a 3x3/2 max pool."""
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], dim=1)


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``InceptionC`` layout, TF average pool)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the four branches along channels."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(_pool3x3_same(x, "avg"))
        return torch.cat([self.branch1x1(x), b7, bd, bp], dim=1)


class MixedD(nn.Module):
    """17→8 grid reduction (torchvision ``InceptionD`` layout)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the strided conv branches and a 3x3/2 max pool."""
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class MixedE(nn.Module):
    """8x8 block with split 1x3/3x1 heads (``InceptionE`` layout); pool kind is configurable."""

    def __init__(self, in_channels: int, pool: PoolKind = "avg") -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool: PoolKind = pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate 1x1, split-3x3, split-double-3x3 and pool branches."""
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)
        bp = self.branch_pool(_pool3x3_same(x, self.pool))
        return torch.cat([self.branch1x1(x), b3, bd, bp], dim=1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 with the key layout of ``pt_inception-2015-12-05-6726825d.pth``.

    Args:
        num_classes: Rows of ``fc``: 1008 for the FID/ImageNet graph, 51 for the StackGAN
            CUB classifier (background logit at index 0 + 50 CUB test classes).
        last_block_pool: Pool of ``Mixed_7c``'s pool branch. ``"max"`` reproduces the
            2015-12-05 graph (FID); ``"avg"`` is the standard slim InceptionV3 that the
            StackGAN CUB classifier was fine-tuned from.
        resize_input: Resize inputs to 299x299 (bilinear, ``align_corners=False``).
    """

    def __init__(
        self,
        num_classes: int = FID_NUM_CLASSES,
        *,
        last_block_pool: PoolKind = "max",
        resize_input: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, pool_features=32)
        self.Mixed_5c = MixedA(256, pool_features=64)
        self.Mixed_5d = MixedA(288, pool_features=64)
        self.Mixed_6a = MixedB(288)
        self.Mixed_6b = MixedC(768, channels_7x7=128)
        self.Mixed_6c = MixedC(768, channels_7x7=160)
        self.Mixed_6d = MixedC(768, channels_7x7=160)
        self.Mixed_6e = MixedC(768, channels_7x7=192)
        self.Mixed_7a = MixedD(768)
        self.Mixed_7b = MixedE(1280, pool="avg")
        self.Mixed_7c = MixedE(2048, pool=last_block_pool)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def preprocess(self, x: Tensor) -> Tensor:
        """Bring images in [-1, 1] to the network's 299x299 [-1, 1] input.

        Inputs are float tensors ``[N, 3, H, W]`` in [-1, 1] (the generator's tanh range).
        They are resized with ``F.interpolate(mode="bilinear", align_corners=False)`` and
        not rescaled. pytorch-fid instead takes ``u`` in [0, 1], resizes it the same way
        and then maps ``2u - 1``. Bilinear resizing is a convex combination of pixels
        (weights sum to 1), so ``resize(2u - 1) = 2 resize(u) - 1``: with ``x = 2u - 1``
        both give the same network input up to float32 rounding (~1e-7). A 299x299 input
        passes through unchanged (the interpolation is then the identity).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [-1, 1], got dtype {x.dtype}")
        x = x.to(torch.float32)
        if self.resize_input and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
            )
        return x

    def pool3(self, x: Tensor) -> Tensor:
        """Run the convolutional trunk on a preprocessed batch; return ``[N, 2048]``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map images in [-1, 1] to ``(pool3 features [N, 2048], logits [N, num_classes])``.

        Features are taken after the global average pool, before dropout/fc (dropout is
        the identity at evaluation and is omitted).
        """
        feats = self.pool3(self.preprocess(x))
        return feats, self.fc(feats)

    def unbiased_logits(self, features: Tensor) -> Tensor:
        """``features @ fc.weight.T`` without the bias, as improved-GAN's ImageNet IS does."""
        return features @ self.fc.weight.T


def drop_background_logit(logits: Tensor) -> Tensor:
    """Remove the CUB classifier's background logit (column 0) before the softmax."""
    if logits.shape[-1] != CUB_NUM_CLASSES:
        raise ValueError(f"expected {CUB_NUM_CLASSES} CUB logits, got {logits.shape[-1]}")
    return logits[..., CUB_BACKGROUND_INDEX + 1 :]


def state_dict_layout(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Ordered ``(key, shape)`` pairs of a module's state dict."""
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_hash(path: Path, actual: str, expected: str | None, prefix: str | None) -> None:
    if expected is not None:
        if actual.lower() != expected.lower():
            raise ValueError(
                f"{path}: SHA-256 mismatch: expected {expected.lower()}, file has {actual}"
            )
    elif prefix is not None and not actual.startswith(prefix.lower()):
        raise ValueError(
            f"{path}: SHA-256 {actual} does not start with the expected prefix {prefix.lower()} "
            f"(torch.hub convention for {FID_WEIGHTS_FILENAME})"
        )


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "<state dict>"
) -> None:
    """Strictly load ``state_dict`` into ``model`` with readable errors.

    BatchNorm ``num_batches_tracked`` counters are unused at evaluation; when a checkpoint
    lacks them (files written before PyTorch 0.4.1 or by converters that only export
    weight/bias/running stats) they are filled with 0 so that loading stays strict for
    every real tensor. Any other missing, unexpected or mis-shaped key raises
    ``ValueError`` naming ``source``.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    for key, value in own.items():
        if key.endswith(".num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or bad_shape:
        parts = [f"{source}: state dict does not match {type(model).__name__}"]
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatch(es), e.g. {bad_shape[:3]}")
        raise ValueError("; ".join(parts))
    model.load_state_dict(sd, strict=True)


def _load_checked(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    expected_sha256: str | None,
    sha256_prefix: str | None,
    what: str,
) -> str:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: {what} weights file not found (expected a local copy; nothing is "
            "downloaded, see docs/evaluation.md)"
        )
    actual = _sha256(file)
    _check_hash(file, actual, expected_sha256, sha256_prefix)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{file}: expected a state dict of tensors, got {type(state).__name__}")
    load_state_dict_strict(model, state, source=str(file))
    model.eval()
    model.requires_grad_(False)
    return actual


def load_fid_inception(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    sha256_prefix: str | None = FID_WEIGHTS_SHA256_PREFIX,
) -> tuple[FIDInceptionV3, str]:
    """Load the FID Inception from a local ``pt_inception-2015-12-05-6726825d.pth``.

    Args:
        path: Local file; never downloaded.
        expected_sha256: Full hex SHA-256 to enforce; takes precedence over the prefix.
        sha256_prefix: Required hash prefix (torch.hub convention, ``6726825d``); ``None``
            disables the check when no full hash is given.

    Returns:
        The module in eval mode without gradients, and the file's full SHA-256.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Hash or state-dict keys/shapes do not match.
    """
    model = FIDInceptionV3(FID_NUM_CLASSES, last_block_pool="max")
    digest = _load_checked(
        path,
        model,
        expected_sha256=expected_sha256,
        sha256_prefix=sha256_prefix,
        what="FID Inception (pt_inception-2015-12-05)",
    )
    return model, digest


def load_cub_classifier(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    last_block_pool: PoolKind = "avg",
) -> tuple[FIDInceptionV3, str]:
    """Load a StackGAN CUB-fine-tuned Inception converted to a PyTorch state dict.

    The file must use this module's key names with ``fc.weight`` ``[51, 2048]`` and
    ``fc.bias`` ``[51]``: logit 0 is the background class, logits 1..50 the CUB test
    classes; use :func:`drop_background_logit` before the softmax. The original is a TF
    checkpoint (``birds_valid299/model.ckpt-5000``, EMA variables) that users convert
    themselves (docs/evaluation.md).

    Args:
        path: Local state-dict file.
        expected_sha256: Full hex SHA-256 to enforce (converted files have no canonical hash).
        last_block_pool: ``"avg"`` matches the slim InceptionV3 the checkpoint comes from.

    Returns:
        The 51-class module in eval mode, and the file's full SHA-256.
    """
    model = FIDInceptionV3(CUB_NUM_CLASSES, last_block_pool=last_block_pool)
    digest = _load_checked(
        path,
        model,
        expected_sha256=expected_sha256,
        sha256_prefix=None,
        what="StackGAN CUB Inception classifier",
    )
    return model, digest
