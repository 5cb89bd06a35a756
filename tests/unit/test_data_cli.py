"""The data command lines (make-twin, validate-data, build-shards) and generate's reader."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from stackgan.cli import build_shards as build_shards_cli
from stackgan.cli import generate as generate_cli
from stackgan.cli import make_twin as make_twin_cli
from stackgan.cli import validate_data as validate_data_cli
from stackgan.data import format as fmt
from stackgan.data.cub import DataPaths, read_split
from stackgan.data.twin import TwinSpec, write_twin
from stackgan.generate import load_embeddings


def _tree_bytes(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_make_twin_cli_writes_what_the_library_writes(tmp_path, capsys):
    args = ["--classes", "4", "--images-per-class", "2", "--min-side", "64", "--max-side", "96"]
    assert (
        make_twin_cli.main([*args, "--out", str(tmp_path / "cli"), "--workers", "1", "--quiet"])
        == 0
    )
    spec = TwinSpec(num_classes=4, images_per_class=2, min_side=64, max_side=96)
    write_twin(spec, tmp_path / "lib", progress=False)
    assert _tree_bytes(tmp_path / "cli") == _tree_bytes(tmp_path / "lib")


def test_make_twin_cli_refuses_a_bad_spec_as_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        make_twin_cli.main(["--out", str(tmp_path), "--classes", "1"], prog="stackgan make-twin")
    assert exit_.value.code == 2
    assert "num_classes must be in [2, 200]" in capsys.readouterr().err


def test_validate_data_cli_prints_the_summary_and_writes_the_report(tiny_twin, tmp_path, capsys):
    assert validate_data_cli.main(["--root", str(tiny_twin)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cub_dir"] == str(tiny_twin / "CUB_200_2011")
    assert printed["splits"]["train"]["images"] == 30 and printed["splits"]["test"]["images"] == 10
    report = tmp_path / "validation.json"
    assert validate_data_cli.main(["--root", str(tiny_twin), "--report", str(report)]) == 0
    assert json.loads(report.read_text()) == printed


def test_validate_data_cli_exit_codes(twin_copy, capsys):
    with pytest.raises(SystemExit) as exit_:  # --cub-dir alone is not enough
        validate_data_cli.main(["--cub-dir", str(twin_copy / "CUB_200_2011")])
    assert exit_.value.code == 2
    capsys.readouterr()
    sample = read_split(DataPaths.from_root(twin_copy), "test").samples[2]
    sample.image_path.unlink()
    assert validate_data_cli.main(["--root", str(twin_copy)]) == 1  # inconsistent data
    err = capsys.readouterr().err
    assert err.startswith("validate-data: 2 data problem(s):") and str(sample.image_path) in err
    assert "(use --on-bad-image skip to skip these images)" in err
    assert validate_data_cli.main(["--root", str(twin_copy), "--on-bad-image", "skip"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [p["index"] for p in summary["splits"]["test"]["problems"]] == [2]
    (twin_copy / "test" / "class_info.pickle").write_bytes(b"\x80\x02garbage")  # corrupt pickle
    assert validate_data_cli.main(["--root", str(twin_copy), "--splits", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("validate-data: ")


def test_build_shards_cli_writes_the_sets_and_reports_bad_data(twin_copy, tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["--root", str(twin_copy), "--out", str(out), "--splits", "test", "--min-shards", "2"]
    assert build_shards_cli.main([*args, "--workers", "1", "--quiet"]) == 0
    for res in fmt.RESOLUTIONS:
        manifest = json.loads((out / fmt.set_name("test", res) / fmt.MANIFEST).read_text())
        assert manifest["num_samples"] == 10 and len(manifest["shards"]) == 2
    with pytest.raises(SystemExit) as exit_:
        build_shards_cli.main([*args, "--jpeg-quality", "0"])
    assert exit_.value.code == 2 and "jpeg_quality" in capsys.readouterr().err
    read_split(DataPaths.from_root(twin_copy), "test").samples[0].image_path.unlink()
    assert build_shards_cli.main([*args, "--workers", "1", "--quiet"]) == 1
    err = capsys.readouterr().err  # after the log lines (warnings)
    assert "\nbuild-shards: 2 data problem(s):\n" in err and "image file not found" in err


def test_load_embeddings_from_the_index_and_from_npy(tiny_shards, tmp_path):
    index = tiny_shards / "test-index.h5"
    with h5py.File(index) as h5:
        raw = h5["embeddings"][:]
        keys = [k.decode() for k in h5["keys"][:]]
    emb, labels = load_embeddings(index, 3, 4)
    np.testing.assert_array_equal(emb.numpy(), raw[:4, 3])
    assert labels == [f"{k} caption 3" for k in keys[:4]]
    emb, labels = load_embeddings(index, None, None)
    np.testing.assert_array_equal(emb.numpy(), raw.mean(axis=1).astype(np.float32))
    assert labels == [f"{k} (mean of all captions)" for k in keys]
    np.save(tmp_path / "e.npy", raw[:2, 0])
    emb, labels = load_embeddings(tmp_path / "e.npy", 0, None)
    np.testing.assert_array_equal(emb.numpy(), raw[:2, 0])
    assert labels == ["row0", "row1"]
    with pytest.raises(ValueError, match="--caption 10: the embeddings have 10 captions"):
        load_embeddings(index, 10, None)
    with pytest.raises(ValueError, match=r"expected an HDF5 index \(\.h5\) or a \.npy array"):
        load_embeddings(tmp_path / "e.txt", 0, None)


def test_generate_cli_reports_a_missing_network_in_one_line(tiny_shards, tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    argv = ["--network", str(missing), "--embeddings", str(tiny_shards / "test-index.h5")]
    assert generate_cli.main([*argv, "--out", str(tmp_path / "g"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("stackgan generate: ")
    assert str(missing) in err and not (tmp_path / "g").exists()
