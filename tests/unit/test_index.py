"""The one HDF5 index reader against a written index."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stackgan.data.index import SplitIndex, evenly_spaced_rows


@pytest.fixture()
def index_file(tmp_path: Path) -> Path:
    path = tmp_path / "test-index.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        s = h5py.string_dtype("utf-8")
        h5.create_dataset("keys", data=np.array(["a/1", "b/2", "c/3"], dtype=object), dtype=s)
        h5.create_dataset("class_ids", data=np.array([1, 1, 2], dtype=np.int64))
        h5.create_dataset("embeddings", data=rng.normal(size=(3, 4, 5)).astype(np.float32))
        caps = np.array([[f"cap {r} {c}" for c in range(4)] for r in range(3)], dtype=object)
        h5.create_dataset("captions", data=caps, dtype=s)
    return path


def test_reads_what_was_written(index_file: Path) -> None:
    with h5py.File(index_file) as h5:
        emb = h5["embeddings"][:]
    with SplitIndex(index_file) as idx:
        assert (idx.num_images, idx.captions_per_image) == (3, 4)
        assert idx.keys() == ["a/1", "b/2", "c/3"] and idx.keys(2) == ["a/1", "b/2"]
        assert idx.class_ids().tolist() == [1, 1, 2]
        np.testing.assert_array_equal(idx.embeddings(), emb)
        np.testing.assert_array_equal(idx.embeddings([0, 2], 1), emb[[0, 2], 1])
        np.testing.assert_array_equal(idx.embeddings(slice(0, 2), slice(0, 3)), emb[:2, :3])
        np.testing.assert_array_equal(idx.embedding_pairs([2, 0], [3, 1]), emb[[2, 0], [3, 1]])
        assert idx.captions(slice(None), 0).tolist() == ["cap 0 0", "cap 1 0", "cap 2 0"]
        assert idx.captions(1, slice(0, 2)).tolist() == ["cap 1 0", "cap 1 1"]
        assert idx.caption_pairs([1, 2], [3, 0]) == ["cap 1 3", "cap 2 0"]


def test_bad_files_name_the_path(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not hdf5")
    with pytest.raises(OSError, match=r"bogus\.h5: cannot read"):
        SplitIndex(bogus)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5.create_dataset("keys", data=np.zeros(2))
    with pytest.raises(
        ValueError, match=r"other\.h5: not a split index \(no dataset 'class_ids'\)"
    ):
        SplitIndex(other)


def test_evenly_spaced_rows() -> None:
    assert evenly_spaced_rows(10, 3).tolist() == [0, 4, 9]  # 4.5 rounds to even
    assert evenly_spaced_rows(10, 3, rounded=False).tolist() == [0, 4, 9]
    assert evenly_spaced_rows(7, 4).tolist() == [0, 2, 4, 6]
    assert evenly_spaced_rows(7, 4, rounded=False).tolist() == [0, 2, 4, 6]
    assert evenly_spaced_rows(100, 3, rounded=False).tolist() == [0, 49, 99]
    assert evenly_spaced_rows(100, 3).tolist() == [0, 50, 99]
    assert evenly_spaced_rows(3, 10).tolist() == [0, 1, 2]
