"""Evaluation end to end: CLI outputs, caches, skipping, sharded coverage, conditional accuracy."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import python_cmd, run, torchrun_cmd

CAPTIONS = 3  # per test image -> 10 test images x 3 = 30 requests


def _eval_args(network, shards, out, *extra):
    return [
        "-m", "stackgan.cli.evaluate", "--network", str(network),
        "--index", str(shards / "test-index.h5"), "--out", str(out),
        "--captions-per-image", str(CAPTIONS), "--batch-size", "4", "--is-splits", "2",
        "--kid-subsets", "4", "--kid-subset-size", "8",
        "--grid-captions", "2", "--grid-samples", "2", *extra,
    ]  # fmt: skip


def test_real_stats_file(tiny_real_stats):
    with h5py.File(tiny_real_stats) as h5:
        assert (
            h5["features"].shape == (10, 64)
            and h5["mu"].shape == (64,)
            and h5["sigma"].shape == (64, 64)
        )
        assert (
            h5.attrs["split"] == "test"
            and int(h5.attrs["count"]) == 10
            and int(h5.attrs["image_size"]) == 256
        )
        assert "TEST-EXTRACTOR" in h5.attrs["extractor"] and len(h5.attrs["weights_sha256"]) == 64
        np.testing.assert_allclose(h5["mu"][:], h5["features"][:].mean(0), rtol=1e-5, atol=1e-6)


def test_evaluate_end_to_end_with_test_extractor(
    tiny_stage1_network, tiny_shards, tiny_real_stats, tmp_path
):
    network = tiny_stage1_network[0]
    out = tmp_path / "eval"
    proc = run(
        python_cmd(
            *_eval_args(
                network, tiny_shards, out, "--test-extractor", "--real-stats", str(tiny_real_stats)
            )
        )
    )
    result = json.loads((out / "metrics.json").read_text())
    assert result["samples"] == 10 * CAPTIONS
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std"):
        assert np.isfinite(result["metrics"][key]), key
    assert result["metrics"]["fid"] > 0 and result["metrics"]["is_mean"] >= 1.0
    assert "TEST EXTRACTOR" in result["extractor"]["warning"]
    assert (
        result["reference_set"]["split"] == "test" and len(result["reference_set"]["sha256"]) == 64
    )
    assert result["implementation"]["torchmetrics"] and result["network"]["stage"] == 1
    assert result["skipped"] == {
        "conditional_accuracy": "no attribute classifier (synthetic twin only)"
    }
    with h5py.File(out / "activations.h5") as h5:
        assert h5["features"].shape == (30, 64) and h5["logits"].shape == (30, 10)
        np.testing.assert_array_equal(h5["request"][:], np.arange(30))
        np.testing.assert_array_equal(h5["caption_index"][:6], [0, 1, 2, 0, 1, 2])
    with Image.open(out / "grid.png") as grid:
        assert grid.mode == "RGB" and grid.size[0] > 100
    assert "generated 30 images" in proc.stderr

    # Cached activations are reused; the metrics come out identical.
    again = run(
        python_cmd(
            *_eval_args(
                network, tiny_shards, out, "--test-extractor", "--real-stats", str(tiny_real_stats)
            )
        )
    )
    assert "using cached activations" in again.stderr
    assert json.loads((out / "metrics.json").read_text())["metrics"] == result["metrics"]
    # A fresh generation with the same seed gives identical images (features), another seed differs.
    before = h5py.File(out / "activations.h5")["features"][:]
    run(
        python_cmd(
            *_eval_args(
                network,
                tiny_shards,
                out,
                "--test-extractor",
                "--real-stats",
                str(tiny_real_stats),
                "--recompute",
            )
        )
    )
    np.testing.assert_array_equal(h5py.File(out / "activations.h5")["features"][:], before)
    run(
        python_cmd(
            *_eval_args(network, tiny_shards, tmp_path / "seed", "--test-extractor", "--seed", "7")
        )
    )
    assert not np.array_equal(
        h5py.File(tmp_path / "seed" / "activations.h5")["features"][:], before
    )
    # channels_last generation: the protocol records it, the images agree to float rounding
    run(
        python_cmd(
            *_eval_args(
                network, tiny_shards, tmp_path / "cl", "--test-extractor", "--channels-last"
            )
        )
    )
    assert json.loads((tmp_path / "cl" / "metrics.json").read_text())["protocol"]["channels_last"]
    assert result["protocol"]["channels_last"] is False
    np.testing.assert_allclose(
        h5py.File(tmp_path / "cl" / "activations.h5")["features"][:], before, rtol=0, atol=1e-4
    )


def test_without_weights_metrics_are_skipped_or_required(
    tiny_stage1_network, tiny_shards, tmp_path
):
    network = tiny_stage1_network[0]
    run(python_cmd(*_eval_args(network, tiny_shards, tmp_path / "a")))
    result = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(result["skipped"]) == {"is", "fid", "kid", "conditional_accuracy"}
    assert "no Inception weights" in result["skipped"]["fid"] and result["metrics"] == {}
    assert (tmp_path / "a" / "grid.png").is_file()  # grids still come out
    proc = run(
        python_cmd(*_eval_args(network, tiny_shards, tmp_path / "b", "--require-metrics")),
        check=False,
    )
    assert proc.returncode == 2 and "--require-metrics: no Inception weights" in proc.stderr
    assert not (tmp_path / "b" / "metrics.json").exists()


@pytest.mark.distributed
def test_two_ranks_cover_every_request_exactly_once(tiny_stage1_network, tiny_shards, tmp_path):
    network = tiny_stage1_network[0]
    # 30 requests in chunks of 4 over 2 ranks: 8 chunks, the last one partial.
    run(python_cmd(*_eval_args(network, tiny_shards, tmp_path / "one", "--test-extractor")))
    run(torchrun_cmd(2, *_eval_args(network, tiny_shards, tmp_path / "two", "--test-extractor")))
    one, two = (
        h5py.File(tmp_path / "one" / "activations.h5"),
        h5py.File(tmp_path / "two" / "activations.h5"),
    )
    np.testing.assert_array_equal(two["request"][:], np.arange(30))  # no drops, no duplicates
    np.testing.assert_allclose(two["features"][:], one["features"][:], rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "two").glob(".activations.rank*"))  # part files merged and removed


@pytest.fixture(scope="module")
def colour_twin(tmp_path_factory):
    """A 400-image twin (20 classes) with shards, for the colour classifier."""
    from stackgan.data.cub import DataPaths
    from stackgan.data.shards import ShardOptions, build_shards
    from stackgan.data.twin import TwinSpec, write_twin

    root = tmp_path_factory.mktemp("colour")
    write_twin(
        TwinSpec(num_classes=20, images_per_class=20, seed=3, min_side=64, max_side=96),
        root / "raw",
        progress=False,
    )
    build_shards(
        DataPaths.from_root(root / "raw"),
        root / "shards",
        ShardOptions(workers=2, min_shards=4),
        progress=False,
    )
    return root / "shards"


def test_conditional_accuracy_real_shuffled_random(colour_twin, tmp_path):
    shards = colour_twin
    args = [
        "-m", "stackgan.cli.attr_classifier",
        "--train-shards", str(shards / "train-64"), "--train-index", str(shards / "train-index.h5"),
        "--test-shards", str(shards / "test-64"), "--test-index", str(shards / "test-index.h5"),
        "--out", str(tmp_path / "attr.pt"), "--report", str(tmp_path / "attr.json"),
    ]  # fmt: skip
    run(python_cmd(*args), timeout=300)
    scores = json.loads((tmp_path / "attr.json").read_text())["scores"]
    real, shuffled, random_images = scores["real"], scores["shuffled"], scores["random_images"]
    assert real["count"] == 80  # every 5th of 400 images held out
    assert real["body_accuracy"] >= 0.95 and real["wing_accuracy"] >= 0.95, real
    for name, s in (("shuffled", shuffled), ("random", random_images)):
        for attr in ("body", "wing"):
            # at chance: within sampling noise of sum_c p_caption(c) p_pred(c) (80 pairs)
            assert abs(s[f"{attr}_accuracy"] - s[f"{attr}_chance"]) < 0.12, (name, attr, s)
            assert s[f"{attr}_accuracy"] < 0.4, (name, attr, s)


def test_conditional_accuracy_ignores_unnamed_attributes():
    """Rows whose caption names no colour for an attribute do not count for it."""
    from stackgan.evaluation.attributes.model import AttributeClassifier, predict
    from stackgan.evaluation.attributes.score import accuracy, attribute_labels

    torch.manual_seed(0)
    preds = predict(AttributeClassifier().eval(), torch.rand(6, 3, 256, 256) * 2 - 1)
    assert preds.shape == (6, 2)
    wanted = attribute_labels(
        ["a red bird with blue wings."] * 3 + ["a green bird with a small beak."] * 3
    )
    assert wanted[3, 1] == -1  # no wing colour named: ignored for the wing score
    scores = accuracy(preds, wanted)
    assert scores["count"] == 3 and 0.0 <= scores["body_accuracy"] <= 1.0
