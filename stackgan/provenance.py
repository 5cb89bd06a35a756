"""Where a result came from: code version, package versions, data version, cluster job."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackgan.data.format import MANIFEST
from stackgan.fileio import sha256_bytes

if TYPE_CHECKING:
    from stackgan.tracking.protocol import InputRecord

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


def shard_set_input(set_dir: str | Path, context: str) -> InputRecord:
    """A shard set as a run input: its name, manifest hash, path, split and resolution."""
    import json

    from stackgan.tracking.protocol import InputRecord

    set_dir = Path(set_dir)
    raw = (set_dir / MANIFEST).read_bytes()
    manifest = json.loads(raw)
    extra: dict[str, str] = {}
    described = set_dir.parent.parent / "data_config.json"  # the pipeline's data directory
    if described.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            data = json.loads(described.read_text(encoding="utf-8"))
            extra = {"data_key": str(data["key"]), "data_sha256": str(data["sha256"])}
    return InputRecord(
        name=str(manifest.get("set", set_dir.name)),
        sha256=sha256_bytes(raw),  # = manifest_hash(set_dir), from the bytes read once
        source=str(set_dir.resolve()),
        context=context,
        tags={
            "split": str(manifest.get("split", "")),
            "resolution": str(manifest.get("resolution", "")),
            "num_samples": str(manifest.get("num_samples", "")),
            **extra,
        },
    )


def network_input(
    path: str | Path, context: str = "conditioning", sha256: str | None = None
) -> InputRecord:
    """A network file as a run input (Stage-II's frozen Stage-I), with the MLflow run id
    that trained it when its ``metrics.json`` sibling records one; ``sha256``: the file's
    hash when the caller has it already."""
    import json

    from stackgan.fileio import sha256_file
    from stackgan.tracking.protocol import InputRecord

    path = Path(path)
    run_id = "unknown"
    sibling = path.with_name("metrics.json")
    if sibling.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            recorded = json.loads(sibling.read_text(encoding="utf-8")).get("mlflow_run_id")
            run_id = str(recorded) if recorded else run_id
    return InputRecord(
        name=path.parent.name + "-network" if path.parent.name else "network",
        sha256=sha256 or sha256_file(path),
        source=str(path.resolve()),
        context=context,
        tags={"mlflow_run_id": run_id},
    )


def index_input(index: str | Path, context: str = "evaluation") -> InputRecord:
    """A split index (captions and embeddings of the evaluated requests) as a run input."""
    from stackgan.fileio import sha256_file
    from stackgan.tracking.protocol import InputRecord

    index = Path(index)
    return InputRecord(
        name=index.stem,
        sha256=sha256_file(index),
        source=str(index.resolve()),
        context=context,
        tags={"split": index.stem.split("-")[0]},
    )
