"""Shards, index and manifest: read-back, determinism, bad-image policy, atomicity."""

from __future__ import annotations

import hashlib
import io
import json

import h5py
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from stackgan.data import format as fmt
from stackgan.data.cub import DataPaths, DataValidationError, read_split
from stackgan.data.pickles import load_pickle, materialize
from stackgan.data.shards import ShardOptions, build_shards, samples_per_shard


def _read_set(set_dir):
    urls = fmt.shard_urls(set_dir)
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_read_back_holds_exactly_the_inputs(tiny_twin, tiny_shards):
    for split in ("train", "test"):
        keys = load_pickle(tiny_twin / split / "filenames.pickle")
        classes = load_pickle(tiny_twin / split / "class_info.pickle")
        embs = materialize(load_pickle(tiny_twin / split / "char-CNN-RNN-embeddings.pickle"))
        for res, member, size in ((64, "png", 76), (256, "jpg", 304)):
            samples = _read_set(tiny_shards / fmt.set_name(split, res))
            assert len(samples) == len(keys)
            seen = set()
            for s in samples:
                meta = json.loads(s["json"])
                i = meta["index"]
                seen.add(i)
                assert s["__key__"] == fmt.sample_key(i)
                assert meta["key"] == keys[i] and int(s["cls"]) == classes[i] == meta["class_id"]
                emb = np.load(io.BytesIO(s["emb.npy"]))
                assert emb.dtype == np.float32 and np.array_equal(emb, embs[i])  # lossless
                assert len(meta["captions"]) == 10
                with Image.open(io.BytesIO(s[member])) as img:
                    assert img.size == (size, size) and img.mode == "RGB"
            assert seen == set(range(len(keys)))
        with h5py.File(tiny_shards / fmt.index_name(split)) as h5:
            assert [k.decode() for k in h5["keys"][:]] == keys
            np.testing.assert_array_equal(h5["embeddings"][:], np.stack(embs))
            np.testing.assert_array_equal(h5["class_ids"][:], classes)
            assert h5["captions"].shape == (len(keys), 10)


def test_manifest_records_counts_checksums_and_parameters(tiny_shards):
    manifest = json.loads((tiny_shards / "train-64" / fmt.MANIFEST).read_text())
    assert manifest["num_samples"] == 30 == sum(s["count"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        data = (tiny_shards / "train-64" / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    assert manifest["preprocessing"]["resize"] == "tf_bicubic"
    assert "train/char-CNN-RNN-embeddings.pickle" in manifest["inputs"]
    assert manifest["skipped"] == []


def test_shard_count_rule():
    opts = ShardOptions(min_shards=32, max_per_shard=250)
    assert samples_per_shard(8855, opts) == 250  # 36 shards for CUB train
    assert samples_per_shard(2933, opts) == 92  # 32 shards for CUB test
    assert -(-2933 // samples_per_shard(2933, opts)) >= 32


def _digest_dir(root):
    digest = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        digest.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()


def test_byte_identical_on_rerun_and_with_more_workers(tiny_twin, tmp_path):
    paths = DataPaths.from_root(tiny_twin)
    build_shards(paths, tmp_path / "a", ShardOptions(workers=1, min_shards=4), progress=False)
    build_shards(paths, tmp_path / "b", ShardOptions(workers=2, min_shards=4), progress=False)
    assert _digest_dir(tmp_path / "a") == _digest_dir(tmp_path / "b")
    build_shards(
        paths, tmp_path / "a", ShardOptions(workers=2, min_shards=4), progress=False
    )  # rebuild in place
    assert _digest_dir(tmp_path / "a") == _digest_dir(tmp_path / "b")


def _corrupt(path, how):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncate" else b"\x00garbage" * 50)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_bad_image_errors_by_default_and_leaves_no_complete_set(twin_copy, tmp_path, how):
    sample = read_split(DataPaths.from_root(twin_copy), "test").samples[3]
    _corrupt(sample.image_path, how)
    out = tmp_path / "out"
    with pytest.raises(DataValidationError, match=rf"unreadable or corrupt image .*{sample.key}"):
        build_shards(
            DataPaths.from_root(twin_copy),
            out,
            ShardOptions(workers=1, min_shards=4),
            ["test"],
            progress=False,
        )
    for res in (64, 256):
        set_dir = out / fmt.set_name("test", res)
        assert not (set_dir / fmt.MANIFEST).exists()
        assert not list(set_dir.glob("*.tmp")) and not list(set_dir.glob(".*"))
    assert not (out / fmt.index_name("test")).exists()


def test_skip_policy_records_each_item(twin_copy, tmp_path):
    samples = read_split(DataPaths.from_root(twin_copy), "train").samples
    _corrupt(samples[1].image_path, "truncate")
    samples[6].image_path.unlink()
    opts = ShardOptions(workers=2, min_shards=4, on_bad_image="skip")
    build_shards(DataPaths.from_root(twin_copy), tmp_path, opts, ["train"], progress=False)
    manifest = json.loads((tmp_path / "train-256" / fmt.MANIFEST).read_text())
    assert manifest["num_samples"] == 28
    assert [(s["index"], s["reason"]) for s in manifest["skipped"]] == [
        (1, "bad_image"),
        (6, "missing_image"),
    ]
    kept = {json.loads(s["json"])["index"] for s in _read_set(tmp_path / "train-64")}
    assert kept == set(range(30)) - {1, 6}
    with h5py.File(tmp_path / fmt.index_name("train")) as h5:
        assert 1 not in h5["indices"][:] and 6 not in h5["indices"][:] and len(h5["keys"]) == 28


def test_missing_image_errors_by_default(twin_copy, tmp_path):
    sample = read_split(DataPaths.from_root(twin_copy), "train").samples[0]
    sample.image_path.unlink()
    with pytest.raises(DataValidationError, match=r"image file not found.*\n.*on_bad_image: skip"):
        build_shards(
            DataPaths.from_root(twin_copy),
            tmp_path,
            ShardOptions(workers=1),
            ["train"],
            progress=False,
        )


def test_stale_manifest_is_removed_before_rewriting(tiny_twin, twin_copy, tmp_path):
    build_shards(
        DataPaths.from_root(tiny_twin),
        tmp_path,
        ShardOptions(workers=1, min_shards=4),
        ["test"],
        progress=False,
    )
    assert (tmp_path / "test-64" / fmt.MANIFEST).exists()
    _corrupt(read_split(DataPaths.from_root(twin_copy), "test").samples[0].image_path, "garbage")
    with pytest.raises(DataValidationError):
        build_shards(
            DataPaths.from_root(twin_copy),
            tmp_path,
            ShardOptions(workers=1, min_shards=4),
            ["test"],
            progress=False,
        )
    assert not (tmp_path / "test-64" / fmt.MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        fmt.shard_urls(tmp_path / "test-64")


def test_png_option_for_the_256_set(tiny_twin, tmp_path):
    opts = ShardOptions(workers=1, min_shards=2, hr_format="png")
    build_shards(DataPaths.from_root(tiny_twin), tmp_path, opts, ["test"], progress=False)
    sample = _read_set(tmp_path / "test-256")[0]
    assert "png" in sample and "jpg" not in sample
    assert json.loads((tmp_path / "test-256" / fmt.MANIFEST).read_text())["image_member"] == "png"


def _slow_square(job):
    import time

    time.sleep(0.001 * (job % 3))  # uneven job times, so chunks finish out of order
    return job * job


def test_bounded_imap_keeps_order_across_window_refills(monkeypatch):
    from stackgan.data import shards

    monkeypatch.setattr(shards, "_process", _slow_square)  # inherited by the forked workers
    jobs = list(range(53))
    assert list(shards._bounded_imap(jobs, workers=2, window=8, chunk=3)) == [j * j for j in jobs]
    assert list(shards._bounded_imap(jobs, workers=1)) == [j * j for j in jobs]
