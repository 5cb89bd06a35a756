"""bench/gpu_acceptance.py: the CPU dry run checks its plumbing (CI has no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, env

pytestmark = pytest.mark.slow


def test_dry_run_runs_every_section_it_can_on_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/gpu_acceptance.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    status = {name: sec["status"] for name, sec in report["sections"].items()}
    assert status == {
        "environment": "ok",
        "peak": "ok",
        "gpu_tests": "ok",
        "agreement": "ok",
        "syncbn": "skipped",  # needs CUDA
        "nccl_vs_gloo": "ok",  # gloo against gloo on CPU
        "throughput": "ok",
        "loader": "ok",
        "estimate": "ok",
    }, report
    sections = report["sections"]
    assert sections["nccl_vs_gloo"]["result"]["max_weight_diff"] == 0.0
    assert {(r["stage"], r["mode"]) for r in sections["throughput"]["result"]} == {
        (1, "fp32"),
        (1, "bf16"),
        (2, "fp32"),
    }
    assert all(r["img_per_s"] > 0 for r in sections["throughput"]["result"])
    assert {r["resolution"] for r in sections["loader"]["result"]} == {64, 256}
    est = sections["estimate"]["result"]
    assert est["images_per_stage"] == 8855 * 600 and est["total_gpu_hours"] > 0
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "dry run on CPU" in md and "| throughput | ok |" in md


def test_without_cuda_a_real_run_is_refused_with_a_hint():
    proc = subprocess.run(
        [sys.executable, "bench/gpu_acceptance.py"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
    wrapper = subprocess.run(
        ["bash", "bench/gpu_acceptance.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert wrapper.returncode == 2 and "no Python here has a CUDA build" in wrapper.stderr
