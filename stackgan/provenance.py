"""Where a result came from: code version, package versions, data version, cluster job."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from stackgan.data.format import MANIFEST
from stackgan.fileio import sha256_bytes

PACKAGES = (
    "torch",
    "numpy",
    "webdataset",
    "h5py",
    "mlflow",
    "torchmetrics",
    "snakemake",
    "pillow",
    "scipy",
)


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (default: this package)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that matter for reproducibility."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def slurm_info(env: dict[str, str] | None = None) -> dict[str, str]:
    """SLURM job id, nodes and restart count when running under SLURM (empty otherwise)."""
    env = dict(os.environ if env is None else env)
    keys = {
        "SLURM_JOB_ID": "job_id",
        "SLURM_JOB_NODELIST": "nodes",
        "SLURM_RESTART_COUNT": "restart_count",
        "SLURM_JOB_PARTITION": "partition",
    }
    return {short: env[k] for k, short in keys.items() if env.get(k)}


def manifest_hash(set_dir: str | Path) -> str:
    """sha256 of a shard set's manifest: identifies the exact data version."""
    return sha256_bytes((Path(set_dir) / MANIFEST).read_bytes())
