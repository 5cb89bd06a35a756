"""Torchvision-free FID Inception: key layout, strict loading, preprocessing, extractors."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stackgan.metrics.extractors import (
    TEST_EXTRACTOR_LABEL,
    InceptionExtractor,
    TestExtractor,
    extract,
)
from stackgan.metrics.inception import (
    FIDInceptionV3,
    _pool3x3_same,
    load_cub_classifier,
    load_fid_inception,
    load_state_dict_strict,
    state_dict_layout,
)

KEYS_FILE = Path(__file__).resolve().parents[1] / "data" / "pt_inception-2015-12-05_keys.txt"

Layout = list[tuple[str, tuple[int, ...]]]


def _read_layout(path: Path) -> Layout:
    layout = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape = line.split("\t")
        dims = () if shape == "()" else tuple(int(s) for s in shape.split(","))
        layout.append((name, dims))
    return layout


def _random_state_dict(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """Finite random tensors with the given names/shapes (BN variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(0, dtype=torch.long)
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=gen) + 0.5
        elif name.endswith("conv.weight"):
            fan_in = math.prod(shape[1:])
            sd[name] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        elif name.endswith("bn.weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:  # bn.bias, running_mean, fc.*
            sd[name] = 0.05 * torch.randn(shape, generator=gen)
    return sd


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def file_layout() -> Layout:
    return _read_layout(KEYS_FILE)


@pytest.fixture(scope="module")
def fid_file(tmp_path_factory: pytest.TempPathFactory, file_layout: Layout) -> Path:
    path = tmp_path_factory.mktemp("weights") / "fake_pt_inception.pth"
    torch.save(_random_state_dict(file_layout, seed=0), path)
    return path


@pytest.fixture(scope="module")
def fid_net(fid_file: Path) -> tuple[FIDInceptionV3, str]:
    return load_fid_inception(fid_file, sha256_prefix=None)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def small_images() -> torch.Tensor:
    """75x75 is the smallest input the trunk accepts; used with resizing off to save time."""
    return torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(6)) * 2 - 1


@contextlib.contextmanager
def _no_resize(*models: FIDInceptionV3) -> Iterator[None]:
    """Run shape-agnostic checks on small inputs (a 299 forward costs ~1 s on CPU)."""
    for m in models:
        m.resize_input = False
    try:
        yield
    finally:
        for m in models:
            m.resize_input = True


# ---------------------------------------------------------------- layout


def test_module_layout_matches_checked_in_key_list(file_layout: Layout) -> None:
    assert state_dict_layout(FIDInceptionV3()) == file_layout


def test_key_list_cross_checks_public_layout(file_layout: Layout) -> None:
    shapes = dict(file_layout)
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048)
    assert not any(name.startswith("AuxLogits") for name in shapes)
    n_convs = sum(name.endswith("conv.weight") for name in shapes)
    n_counters = sum(name.endswith("num_batches_tracked") for name in shapes)
    assert n_convs == n_counters == 94
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(math.prod(s) for name, s in file_layout if not name.endswith(buffers))
    assert n_params == sum(p.numel() for p in FIDInceptionV3().parameters())
    assert 23.7e6 < n_params < 23.9e6  # public figure: ~23.8M for the 1008-class model


# ---------------------------------------------------------------- loading


def test_strict_load_prefix_disabled_and_full_hash(
    fid_file: Path, fid_net: tuple[FIDInceptionV3, str], file_layout: Layout
) -> None:
    model, digest = fid_net
    assert digest == _sha256(fid_file)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    saved = torch.load(fid_file, map_location="cpu", weights_only=True)
    assert list(saved) == [name for name, _ in file_layout]
    loaded = model.state_dict()
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_7b.branch_pool.bn.running_var", "fc.bias"):
        assert torch.equal(loaded[key], saved[key])
    again, digest2 = load_fid_inception(
        fid_file, expected_sha256=digest.upper(), sha256_prefix=None
    )
    assert digest2 == digest
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_forward_shapes_at_299(fid_net: tuple[FIDInceptionV3, str], images: torch.Tensor) -> None:
    model, _ = fid_net
    with torch.no_grad():
        feats, logits = model(images)  # 64x64 input, resized to 299x299 inside
    assert feats.shape == (2, 2048)
    assert logits.shape == (2, 1008)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()
    assert (feats >= 0).all()  # pool3 averages ReLU outputs
    torch.testing.assert_close(logits, feats @ model.fc.weight.T + model.fc.bias)


def test_inception_extractor_imagenet_logits(
    fid_net: tuple[FIDInceptionV3, str], small_images: torch.Tensor
) -> None:
    model, digest = fid_net
    extractor = InceptionExtractor(model, digest)
    biased = InceptionExtractor(model, digest, imagenet_logits="biased")
    with _no_resize(model), torch.no_grad():
        feats, logits = model(small_images)
        f2, unbiased = extractor(small_images)
        _, with_bias = biased(small_images)
    torch.testing.assert_close(f2, feats)
    torch.testing.assert_close(unbiased, feats @ model.fc.weight.T)
    torch.testing.assert_close(with_bias, logits)
    assert extractor.metadata() == {
        "extractor": "pt_inception-2015-12-05",
        "weights_sha256": digest,
        "feature_dim": 2048,
        "num_classes": 1008,
        "resize": "bilinear-299",
        "logits": "pt_inception-2015-12-05 fc (unbiased)",
        "logits_weights_sha256": digest,
    }


def test_tf_pooling_quirks(fid_net: tuple[FIDInceptionV3, str]) -> None:
    model, _ = fid_net
    assert model.Mixed_7c.pool == "max"  # 2015-12-05 graph quirk in the last block
    assert model.Mixed_7b.pool == "avg"
    ones = torch.ones(1, 2, 5, 5)
    # TF "SAME" average pooling ignores the padding: a constant map stays constant
    assert torch.equal(_pool3x3_same(ones, "avg"), ones)
    ramp = torch.arange(25.0).reshape(1, 1, 5, 5)
    assert _pool3x3_same(ramp, "max")[0, 0, 0, 0] == ramp[0, 0, 1, 1]
    assert _pool3x3_same(ramp, "avg")[0, 0, 0, 0] == ramp[0, 0, :2, :2].mean()


def test_state_dict_without_batch_counters_loads(file_layout: Layout) -> None:
    sd = _random_state_dict(file_layout, seed=2)
    trimmed = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = FIDInceptionV3()
    load_state_dict_strict(model, trimmed)
    assert torch.equal(model.Mixed_6a.branch3x3.conv.weight, sd["Mixed_6a.branch3x3.conv.weight"])


def test_preprocess_equals_pytorch_fid_convention() -> None:
    model = FIDInceptionV3()
    x = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    u = (x + 1) / 2  # pytorch-fid input range [0, 1]
    reference = 2 * F.interpolate(u, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(model.preprocess(x), reference, atol=1e-6, rtol=0)
    full = torch.rand(1, 3, 299, 299) * 2 - 1
    assert torch.equal(model.preprocess(full), full)
    with pytest.raises(TypeError, match="float"):
        model.preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        model.preprocess(torch.zeros(1, 1, 8, 8))


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_fid_inception(missing)


def test_hash_mismatch_names_file_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"x": torch.zeros(1)}, path)
    actual = _sha256(path)
    assert not actual.startswith("6726825d")
    with pytest.raises(ValueError, match=r"wrong\.pth") as err:
        load_fid_inception(path)
    assert "6726825d" in str(err.value) and actual in str(err.value)
    with pytest.raises(ValueError, match=r"wrong\.pth") as err:
        load_fid_inception(path, expected_sha256="ab" * 32)
    assert "ab" * 32 in str(err.value) and actual in str(err.value)


def test_key_mismatch_names_file_and_keys(tmp_path: Path, file_layout: Layout) -> None:
    path = tmp_path / "badkeys.pth"
    sd = {"AuxLogits.fc.weight": torch.zeros(2, 2)}
    sd.update({name: torch.zeros(shape) for name, shape in file_layout[:3]})
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"badkeys\.pth") as err:
        load_fid_inception(path, sha256_prefix=None)
    message = str(err.value)
    assert "AuxLogits.fc.weight" in message
    first_missing = next(n for n, _ in file_layout[3:] if not n.endswith("num_batches_tracked"))
    assert "missing" in message and first_missing in message


def test_cub_classifier_drops_background_logit(
    tmp_path: Path, fid_net: tuple[FIDInceptionV3, str], small_images: torch.Tensor
) -> None:
    cub_layout = state_dict_layout(FIDInceptionV3(51))
    assert dict(cub_layout)["fc.weight"] == (51, 2048)
    path = tmp_path / "cub.pth"
    torch.save(_random_state_dict(cub_layout, seed=4), path)
    cub, cub_digest = load_cub_classifier(path)
    assert cub.Mixed_7c.pool == "avg"
    model, digest = fid_net
    extractor = InceptionExtractor(model, digest, cub_classifier=cub, cub_sha256=cub_digest)
    with _no_resize(model, cub), torch.no_grad():
        feats, logits = extractor(small_images)
        _, full = cub(small_images)
    assert feats.shape == (2, 2048)
    assert logits.shape == (2, 50)
    torch.testing.assert_close(logits, full[:, 1:])
    meta = extractor.metadata()
    assert meta["num_classes"] == 50
    assert meta["logits_weights_sha256"] == cub_digest
    assert "background" in meta["logits"]


# ---------------------------------------------------------------- test extractor


def test_test_extractor_is_deterministic_and_labelled() -> None:
    x = torch.rand(5, 3, 40, 40, generator=torch.Generator().manual_seed(5)) * 2 - 1
    rng_state = torch.get_rng_state()
    a, b, c = TestExtractor(seed=0), TestExtractor(seed=0), TestExtractor(seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)
    fa, la = extract(a, x, batch_size=2)
    fb, lb = extract(b, list(x.split(3)), batch_size=4)  # iterable, re-batched
    fc, _ = extract(c, x)
    assert fa.dtype == np.float32 and fa.shape == (5, 64) and la.shape == (5, 10)
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fa, fc)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert "TEST-EXTRACTOR" in a.name
    assert a.metadata()["warning"] == TEST_EXTRACTOR_LABEL
    assert "not comparable" in TEST_EXTRACTOR_LABEL


def test_extract_rejects_images_outside_range() -> None:
    ext = TestExtractor()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        extract(ext, torch.full((1, 3, 8, 8), 255.0))
    with pytest.raises(TypeError, match="float"):
        extract(ext, torch.zeros((1, 3, 8, 8), dtype=torch.uint8))
