"""Shared fixtures: small synthetic CUB twins and their shards, built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image twin (8 classes: 30 train / 10 test images), read-only by convention."""
    from stackgan.data.twin import TwinSpec, write_twin

    out = tmp_path_factory.mktemp("twin") / "birds"
    write_twin(
        TwinSpec(num_classes=8, images_per_class=5, seed=0, min_side=96, max_side=200),
        out,
        progress=False,
    )
    return out


@pytest.fixture
def twin_copy(tiny_twin: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny twin (for corruption tests)."""
    dst = tmp_path / "birds"
    shutil.copytree(tiny_twin, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_shards(tiny_twin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards + indexes of the tiny twin (both splits)."""
    from stackgan.data.cub import DataPaths
    from stackgan.data.shards import ShardOptions, build_shards

    out = tmp_path_factory.mktemp("shards")
    build_shards(
        DataPaths.from_root(tiny_twin), out, ShardOptions(workers=1, min_shards=4), progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_stage1_network(
    tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(network file, its directory): a tiny Stage-I G trained 14 steps on the tiny twin."""
    from tests.helpers import python_cmd, run, run_config, train_args, write_config

    tmp = tmp_path_factory.mktemp("stage1")
    cfg = write_config(tmp / "s1.yaml", run_config(1, epochs=2))
    out = tmp / "net1.pt"
    run(
        python_cmd(
            *train_args(
                cfg,
                tiny_shards / "train-64",
                tmp / "work",
                out,
                "--metrics-out",
                str(tmp / "m.json"),
            )
        )
    )
    return out, tmp


@pytest.fixture(scope="session")
def tiny_stage2_network(
    tiny_shards: Path,
    tiny_stage1_network: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A tiny Stage-II network file (2 steps on the tiny Stage-I G): both stages in one file."""
    from tests.helpers import python_cmd, run, run_config, train_args, write_config

    tmp = tmp_path_factory.mktemp("stage2")
    cfg = write_config(tmp / "s2.yaml", run_config(2, max_steps=2))
    out = tmp / "net2.pt"
    extra = ("--stage1-generator", str(tiny_stage1_network[0]))
    run(python_cmd(*train_args(cfg, tiny_shards / "train-256", tmp / "work", out, *extra)))
    return out


@pytest.fixture(scope="session")
def tiny_classifier(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A twin attribute classifier trained briefly on the tiny twin's real images."""
    import numpy as np
    import torch

    from stackgan.evaluation.attributes.model import save_classifier
    from stackgan.evaluation.attributes.train import load_real_set, train_classifier

    x, y = zip(
        *(
            load_real_set(tiny_shards / f"{s}-64", tiny_shards / f"{s}-index.h5")
            for s in ("train", "test")
        ),
        strict=True,
    )
    model = train_classifier(torch.cat(x), np.concatenate(y), epochs=3, seed=0)
    path = tmp_path_factory.mktemp("classifier") / "attribute_classifier.pt"
    save_classifier(model, path, {"fixture": "tiny"})
    return path


@pytest.fixture(scope="session")
def tiny_real_stats(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real test statistics of the tiny twin, written by ``stackgan evaluate real-stats`` with
    the TEST extractor (the file the pipeline's real_stats rule writes with Inception)."""
    from tests.helpers import python_cmd, run

    path = tmp_path_factory.mktemp("real") / "real-test-256.h5"
    run(
        python_cmd(
            "-m",
            "stackgan.cli.evaluate",
            "real-stats",
            "--shards",
            str(tiny_shards / "test-256"),
            "--out",
            str(path),
            "--test-extractor",
        )
    )
    return path
