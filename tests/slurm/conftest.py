"""Fixtures for the real-SLURM tests: bring up the local cluster (cluster/local-slurm).

``slurm_cluster`` (session, autouse) runs ``install.sh`` and then ``up.sh``; both are idempotent
(about 1 s when everything is already up) and serialize on a lock, so concurrent sessions
share one cluster. Like ``test_local_cluster.py`` it needs root and never stops the cluster.

CI rule: when the cluster cannot be brought up (no root, scripts failing or timing out,
SLURM binaries missing, controller not answering) the tests FAIL if ``CI=true`` -- a CI
job that is meant to test SLURM must not go green by skipping -- and are skipped with the
reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.slurm.pipeline_runs import PipelineRun

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "cluster" / "local-slurm"
INSTALL_TIMEOUT_S = 600  # may apt-get install ~33 packages first
UP_TIMEOUT_S = 300
CLIENTS = ("sbatch", "sacct", "squeue", "scontrol", "scancel", "srun")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"local SLURM cluster unavailable in CI (CI=true): {reason}", pytrace=False)
    pytest.skip(f"local SLURM cluster unavailable: {reason}")


def _run_script(name: str, timeout: int) -> subprocess.CompletedProcess | str:
    try:
        return subprocess.run(
            [str(SCRIPTS / name)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"{name} did not finish within {timeout} s"
    except OSError as err:
        return f"{name} could not be started: {err}"


def _answers(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> None:
    """The local single-node cluster with accounting, up and answering.

    Autouse for everything under tests/slurm, so that test_local_cluster.py follows the same
    CI rule (its own module fixture then finds the controller answering and does nothing)."""
    if os.geteuid() != 0:
        unavailable("install.sh/up.sh need root (they start munged, MariaDB and the SLURM daemons)")
    for name, timeout in (("install.sh", INSTALL_TIMEOUT_S), ("up.sh", UP_TIMEOUT_S)):
        proc = _run_script(name, timeout)
        if isinstance(proc, str):
            unavailable(proc)
        if proc.returncode != 0:
            unavailable(
                f"{name} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-3000:]}\n"
                f"stderr:\n{proc.stderr[-3000:]}"
            )
    missing = [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        unavailable(f"SLURM client binaries missing after install.sh: {missing}")
    if not _answers(["scontrol", "ping"]):
        unavailable("up.sh succeeded but `scontrol ping` fails")
    # The Snakemake plugin's default status command: sacct needs slurmdbd.
    if not _answers(["sacct", "-X", "-n", "--starttime", "now-1minutes"]):
        unavailable("sacct fails (slurmdbd not reachable); the plugin would never see jobs finish")


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Callable[..., PipelineRun]]:
    """Start smoke-style pipeline runs, each in its own working directory; at the end, kill
    what is still running and cancel the SLURM jobs each left behind."""
    runs: list[PipelineRun] = []

    def start(
        *args: str,
        timeout: int,
        env: dict[str, str] | None = None,
        prepare: Callable[[Path], None] | None = None,
    ) -> PipelineRun:
        workdir = tmp_path / f"run{len(runs)}"
        workdir.mkdir()
        if prepare is not None:  # e.g. build the inputs locally first
            prepare(workdir)
        runs.append(PipelineRun(workdir, *args, timeout=timeout, env=env))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()
