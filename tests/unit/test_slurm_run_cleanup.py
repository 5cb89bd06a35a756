"""The SLURM pipeline tests' teardown leaves no process behind in a run's directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.slurm.pipeline_runs import kill_processes_in


def test_teardown_kills_only_the_processes_in_the_run_directory(tmp_path: Path) -> None:
    inside, outside = tmp_path / "run0" / "logs", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    orphan = subprocess.Popen(sleep, cwd=inside)
    bystander = subprocess.Popen(sleep, cwd=outside)
    try:
        assert kill_processes_in(tmp_path / "run0") == 1
        assert orphan.wait(timeout=10) == -9
        assert bystander.poll() is None
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait(timeout=10)
