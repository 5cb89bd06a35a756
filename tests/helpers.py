"""Shared test helpers: tiny run configs and training commands."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = {
    "arch": "paper",
    "gf_dim": 16,
    "df_dim": 8,
    "cond_dim": 16,
    "d_text_dim": 16,
    "z_dim": 16,
    "r_num": 1,
}


def run_config(stage: int, model: dict[str, Any] | None = None, **train: Any) -> dict[str, Any]:
    """A tiny, fast run config; ``train`` overrides the training section."""
    base_train = {
        "seed": 0,
        "batch_size": 4,
        "epochs": 2,
        "num_workers": 0,
        "shuffle_buffer": 40,
        "log_every": 1,
        "sample_every": 0,
        "checkpoint_every_minutes": 0,
        "keep_checkpoints": 3,
        "lr_decay_epochs": 0,
    }
    return {
        "stage": stage,
        "model": {**TINY_MODEL, **(model or {})},
        "train": {**base_train, **train},
    }


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_args(cfg: Path, data: Path, workdir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "stackgan.cli.train",
        "--config",
        str(cfg),
        "--data",
        str(data),
        "--workdir",
        str(workdir),
        "--out",
        str(out),
        *extra,
    ]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT)
    e["OMP_NUM_THREADS"] = "1"
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *args,
    ]


def run(
    cmd: list[str], timeout: float = 240, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_state_equal(a: dict[str, Any], b: dict[str, Any], where: str = "") -> None:
    """Recursively assert bit-identical tensors and equal primitives."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ {set(a) ^ set(b)}"
        for k in a:
            assert_state_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_state_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        )
        assert torch.equal(a, b), (
            f"{where}: tensors differ (max abs diff {(a.float() - b.float()).abs().max().item()})"
        )
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def preset_data_dir(preset: str, **user: Any) -> str:
    """The data directory (relative to the working directory) of a preset's pipeline run."""
    from pipeline.settings import data_key, merge_with_preset

    config = merge_with_preset({"preset": preset, **user})
    dataset = "twin" if config["data"]["source"] == "twin" else "cub"
    return f"results/data/{dataset}-{data_key(config)}"


SMOKE_DATA = preset_data_dir("smoke")

# Every declared output of the smoke run (relative to its working directory).
SMOKE_OUTPUTS = [
    f"{SMOKE_DATA}/data_config.json",
    f"{SMOKE_DATA}/raw/twin.json",
    f"{SMOKE_DATA}/validation.json",
    *(
        f"{SMOKE_DATA}/shards/{split}-{res}/manifest.json"
        for split in ("train", "test")
        for res in (64, 256)
    ),
    f"{SMOKE_DATA}/shards/train-index.h5",
    f"{SMOKE_DATA}/shards/test-index.h5",
    f"{SMOKE_DATA}/attribute_classifier.pt",
    f"{SMOKE_DATA}/attribute_classifier.json",
    "results/smoke/mlflow/parent_run_id.txt",
    *(
        f"results/smoke/stage{s}/{name}"
        for s in (1, 2)
        for name in (
            "run_config.yaml",
            "network-final.pt",
            "metrics.json",
            "loss_curves.png",
            "samples.png",
        )
    ),
    *(
        f"results/smoke/eval/stage{s}/{name}"
        for s in (1, 2)
        for name in ("metrics.json", "grid.png")
    ),
    "results/smoke/summary.json",
    "results/smoke/report.html",
]


# Metrics every training run logs per step (metrics.jsonl and MLflow).
TRAIN_METRICS = {
    "loss_d",
    "loss_g",
    "kl",
    "d_real",
    "d_wrong",
    "d_fake",
    "lr_g",
    "img_per_s",
    "data_wait_frac",
}


def clean_env() -> dict[str, str]:
    """This environment without anything that would redirect MLflow or fake a SLURM job."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "SLURM_", "SBATCH_", "SRUN_"))
    }
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class ReferenceUnpickler(pickle.Unpickler):
    """The standard library's unpickler (an independent reference for the project's own
    restricted loader) with globals limited to numpy's array reconstruction: what the
    StackGAN bundle's pickles need, and nothing that could run other code."""

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.") and name == "_reconstruct":
            import numpy as np

            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct
        return super().find_class(module, name)


def reference_unpickle(path: Path, encoding: str = "ASCII") -> Any:
    """Read ``path`` with :class:`ReferenceUnpickler` (``encoding`` as ``pickle.load``'s)."""
    with open(path, "rb") as fh:
        return ReferenceUnpickler(fh, encoding=encoding).load()
