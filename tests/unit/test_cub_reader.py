"""Validation of the real CUB + birds-bundle layout, on a twin written in the exact formats."""

from __future__ import annotations

import numpy as np
import pytest

from stackgan.data.cub import DataPaths, DataValidationError, read_dataset, read_split
from stackgan.data.pickles import dump_py2_pickle, load_pickle, materialize


def _paths(root):
    return DataPaths.from_root(root)


def test_reads_a_valid_twin(tiny_twin):
    data = read_dataset(_paths(tiny_twin))
    train, test = data["train"], data["test"]
    assert len(train.samples) == 30 and len(test.samples) == 10
    assert not train.problems and not test.problems
    assert {s.class_id for s in train.samples}.isdisjoint({s.class_id for s in test.samples})
    keys = load_pickle(tiny_twin / "train" / "filenames.pickle")
    assert [s.key for s in train.samples] == keys
    emb = materialize(load_pickle(tiny_twin / "train" / "char-CNN-RNN-embeddings.pickle"))
    np.testing.assert_array_equal(train.embeddings[3], emb[3])
    s = train.samples[0]
    assert s.image_path.is_file() and s.bbox is not None and len(s.captions) == 10


def _rewrite(path, mutate):
    obj = materialize(load_pickle(path))
    dump_py2_pickle(mutate(obj), path)


def test_duplicate_key_names_index(twin_copy):
    _rewrite(twin_copy / "train" / "filenames.pickle", lambda k: [*k[:5], k[2], *k[6:]])
    with pytest.raises(
        DataValidationError, match=r"filenames\.pickle\[5\]: duplicate key .* \(first at index 2\)"
    ):
        read_split(_paths(twin_copy), "train")


def test_embedding_count_mismatch(twin_copy):
    _rewrite(twin_copy / "train" / "char-CNN-RNN-embeddings.pickle", lambda e: e[:-1])
    with pytest.raises(DataValidationError, match=r"has 29 embedding rows, expected 30"):
        read_split(_paths(twin_copy), "train")


def test_wrong_embedding_shape_names_index(twin_copy):
    def mutate(e):
        e[7] = e[7][:9]
        return e

    _rewrite(twin_copy / "test" / "char-CNN-RNN-embeddings.pickle", mutate)
    with pytest.raises(
        DataValidationError,
        match=r"embeddings\.pickle\[7\]: shape \(9, 1024\), expected \(10, 1024\)",
    ):
        read_split(_paths(twin_copy), "test")


def test_nonfinite_embedding(twin_copy):
    def mutate(e):
        e[1][3, 5] = np.nan
        return e

    _rewrite(twin_copy / "test" / "char-CNN-RNN-embeddings.pickle", mutate)
    with pytest.raises(DataValidationError, match=r"embeddings\.pickle\[1\]: contains NaN"):
        read_split(_paths(twin_copy), "test")


def test_class_info_count_mismatch(twin_copy):
    _rewrite(twin_copy / "train" / "class_info.pickle", lambda c: c[:-2])
    with pytest.raises(
        DataValidationError, match=r"class_info\.pickle: has 28 class ids, expected 30"
    ):
        read_split(_paths(twin_copy), "train")


def test_missing_image_is_reported_per_item(twin_copy):
    data = read_split(_paths(twin_copy), "train")
    victim = data.samples[4]
    victim.image_path.unlink()
    data = read_split(_paths(twin_copy), "train")
    assert [(p.index, p.kind) for p in data.problems] == [(4, "missing_image")]
    assert str(victim.image_path) in data.problems[0].detail


def test_missing_bbox_is_reported_per_item(twin_copy):
    bbox_file = twin_copy / "CUB_200_2011" / "bounding_boxes.txt"
    lines = bbox_file.read_text().splitlines()
    target = read_split(_paths(twin_copy), "test").samples[2]
    bbox_file.write_text("\n".join(x for x in lines if x.split()[0] != str(target.image_id)) + "\n")
    data = read_split(_paths(twin_copy), "test")
    assert [(p.index, p.kind) for p in data.problems] == [(2, "missing_bbox")]
    assert f"image id {target.image_id}" in data.problems[0].detail


def test_malformed_bbox_line_names_line(twin_copy):
    bbox_file = twin_copy / "CUB_200_2011" / "bounding_boxes.txt"
    lines = bbox_file.read_text().splitlines()
    lines[6] = "7 10.0 twelve 30.0 40.0"
    bbox_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataValidationError, match=r"bounding_boxes\.txt:7: expected '<image_id> <x> <y> <w> <h>'"
    ):
        read_split(_paths(twin_copy), "train")


def test_duplicate_bbox_and_image_ids(twin_copy):
    cub = twin_copy / "CUB_200_2011"
    lines = (cub / "images.txt").read_text().splitlines()
    (cub / "images.txt").write_text("\n".join([*lines, lines[0].replace(".jpg", "_x.jpg")]) + "\n")
    with pytest.raises(
        DataValidationError, match=rf"images\.txt:{len(lines) + 1}: duplicate image id 1"
    ):
        read_split(_paths(twin_copy), "train")


def test_caption_count_names_file(twin_copy):
    sample = read_split(_paths(twin_copy), "train").samples[3]
    cap = twin_copy / "text_c10" / f"{sample.key}.txt"
    cap.write_text("\n".join(cap.read_text().splitlines()[:9]) + "\n")
    with pytest.raises(
        DataValidationError, match=rf"{sample.key.split('/')[1]}\.txt: 9 captions, expected 10"
    ):
        read_split(_paths(twin_copy), "train")


def test_missing_pickle_names_file(twin_copy):
    (twin_copy / "test" / "class_info.pickle").unlink()
    with pytest.raises(DataValidationError, match=r"test/class_info\.pickle: file not found"):
        read_split(_paths(twin_copy), "test")


def test_error_lists_every_problem(twin_copy):
    def mutate(e):
        e[0] = e[0][:, :10]
        e[5][0, 0] = np.inf
        return e

    _rewrite(twin_copy / "train" / "char-CNN-RNN-embeddings.pickle", mutate)
    with pytest.raises(DataValidationError) as info:
        read_split(_paths(twin_copy), "train")
    assert len(info.value.problems) == 2
    assert "[0]: shape (10, 10)" in str(info.value) and "[5]: contains NaN or infinite" in str(
        info.value
    )


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_validate_data_refuses_an_unsafe_pickle_with_one_line_naming_the_file(twin_copy, capsys):
    """The CLI turns a refused pickle into one line and exit code 2, not a traceback."""
    import pickle

    from stackgan.cli.validate_data import main

    target = twin_copy / "train" / "filenames.pickle"
    target.write_bytes(pickle.dumps(_Evil(), protocol=2))
    assert main(["--root", str(twin_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(target) in err and "refusing to load global" in err
