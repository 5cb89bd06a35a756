"""Which run a work directory's training states belong to.

A work directory resumes only the run that wrote it. That run is named by its identity:
the run config without the settings that may change between a state and its resumption
(run length, logging, checkpoint and evaluation cadence; :data:`RESUMABLE`), the data
manifest hash and, for Stage-II, the hash of the frozen Stage-I network file. It is kept in
``<workdir>/run_identity.json``. When a job finds another identity there (the config, the
shards or the Stage-I network changed since), resuming would silently continue the old run,
so the job either stops with the differences (``error``) or moves the old run's files to
``<workdir>/superseded/<UTC time>/`` and starts at step 0 (``restart``, what the pipeline
asks for: a changed setting reruns the job, and the rerun must train with that setting).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from stackgan.config import RunConfig, flatten, to_dict
from stackgan.fileio import write_json

IDENTITY_FILE = "run_identity.json"
UNREADABLE = "(unreadable record)"
SUPERSEDED_DIR = "superseded"
OnChange = Literal["error", "restart"]

# Settings that do not change the weights a run trains, or only lengthen it: a state may be
# resumed under other values of these.
RESUMABLE = frozenset(
    f"train.{k}"
    for k in (
        "epochs",
        "max_steps",
        "log_every",
        "sample_every",
        "grid_captions",
        "grid_samples",
        "eval_every",
        "eval_captions",
        "eval_samples_per_caption",
        "eval_batch_size",
        "checkpoint_every_minutes",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "num_workers",
        "compile",
        "deterministic",
    )
)


def run_identity(
    cfg: RunConfig, data_manifest_sha256: str, stage1_sha256: str | None
) -> dict[str, Any]:
    """The identity of a run: its config less :data:`RESUMABLE`, flattened, and its inputs."""
    config = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in RESUMABLE}
    inputs = {"data.manifest_sha256": data_manifest_sha256}
    if stage1_sha256 is not None:
        inputs["stage1.network_sha256"] = stage1_sha256
    return json.loads(json.dumps({"config": config, "inputs": inputs}))  # as read back


def recorded_identity(workdir: Path) -> dict[str, Any] | None:
    """The identity of the run that owns ``workdir``; None when it holds no run yet. A work
    directory from before identities were recorded is judged by its ``run_config.yaml``."""
    path, legacy = workdir / IDENTITY_FILE, workdir / "run_config.yaml"
    try:
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
                raise ValueError(f"{path}: expected an object with a 'config' object")
            return record
        if legacy.is_file() and any(workdir.glob("training-state-*.pt")):
            cfg = RunConfig.from_yaml(str(legacy))
            return {"config": run_identity(cfg, "", None)["config"], "inputs": {}}
    except (ValueError, OSError, yaml.YAMLError) as err:  # ConfigError is a ValueError
        # Unreadable: it cannot be shown to be this run, so it is treated as another one.
        return {UNREADABLE: f"{err}"}
    return None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "..."


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting and input that differs (inputs the old record
    does not name are not compared)."""
    if UNREADABLE in old:
        return [f"{UNREADABLE}: {old[UNREADABLE]}"]
    changes = []
    for section in ("config", "inputs"):
        before, after = old.get(section, {}), new.get(section, {})
        keys = sorted(set(before) | set(after)) if section == "config" else sorted(before)
        for key in keys:
            if before.get(key) != after.get(key):
                changes.append(f"{key}: {_short(before.get(key))} -> {_short(after.get(key))}")
    return changes


def supersede(workdir: Path) -> Path:
    """Move everything in ``workdir`` (but earlier superseded runs) to
    ``<workdir>/superseded/<UTC time>/``; returns that directory. Nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = workdir / SUPERSEDED_DIR / stamp, 1
    while target.exists():
        target, n = workdir / SUPERSEDED_DIR / f"{stamp}-{n}", n + 1
    target.mkdir(parents=True)
    for entry in sorted(workdir.iterdir()):
        if entry.name != SUPERSEDED_DIR:
            entry.rename(target / entry.name)
    return target


def record_identity(workdir: Path, identity: dict[str, Any]) -> None:
    """Write ``<workdir>/run_identity.json`` (atomically)."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / IDENTITY_FILE, identity)
