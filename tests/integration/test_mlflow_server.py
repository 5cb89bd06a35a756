"""A REAL ``mlflow server`` (sqlite backend, proxied artifacts) and a separate
training-like process that logs to it over HTTP through ``MLflowTracker``.

The server spawns uvicorn, a job runner and several huey consumers; it is started in
its own session (``start_new_session=True``, i.e. setsid) and stopped by signalling the
whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackgan.tracking import TrackingStoreError, check_tracking_store, read_run_id

pytestmark = pytest.mark.slow
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("MLFLOW_RUN_ID", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_group_members(pgid: int) -> list[str]:
    """``pid state cmd`` of processes in group ``pgid`` that are not zombies.

    A zombie has already exited (it only waits for its new parent, init, to reap it).
    """
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"{stat.parent.name} {fields[0]} {text.split(' ', 2)[1]}")
    return members


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the server's whole process group; SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not live_group_members(proc.pid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        end = time.monotonic() + wait_s
        while time.monotonic() < end and live_group_members(proc.pid):
            proc.poll()  # reap the group leader (our child) once it exits
            time.sleep(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 120.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy within {deadline_s} s")


def rest(url: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + endpoint,
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server"]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    cmd += ["--artifacts-destination", str(tmp_path / "artifacts")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115  (closed in finally)
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_healthy(url, proc)
        yield {"url": url, "proc": proc, "root": tmp_path}
    finally:
        stop_group(proc)
        log.close()
        assert live_group_members(proc.pid) == []


def test_training_process_logs_to_real_server(server: dict[str, Any], tmp_path: Path) -> None:
    url = server["url"]
    check_tracking_store(url, timeout_s=5)
    run_id_file = tmp_path / "work" / "mlflow_run_id.txt"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        import numpy as np
        from stackgan.tracking import MLflowTracker
        t = MLflowTracker.start(tracking_uri={url!r}, experiment="served", run_name="stage1",
            run_id_file=Path({str(run_id_file)!r}), tags={{"stage": "stage1"}},
            system_metrics_interval_s=0.5)
        t.log_params({{"model": {{"arch": "paper"}}, "train": {{"lr": 2e-4}}}})
        for step in range(20):
            t.log_metrics({{"loss_d": 1.0 / (step + 1), "loss_g": float(step)}}, step=step)
        t.log_image(np.full((64, 64, 3), 127, np.uint8), key="samples", step=10)
        time.sleep(1.5)
        t.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], env=ENV, check=True, timeout=180)
    run_id = read_run_id(run_id_file)
    assert run_id is not None

    exp = rest(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=served")
    exp_id = exp["experiment"]["experiment_id"]
    found = rest(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    assert [r["info"]["run_id"] for r in found] == [run_id]
    run = found[0]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m for m in run["data"]["metrics"]}
    assert metrics["loss_g"]["value"] == 19.0 and metrics["loss_g"]["step"] == 19
    assert "system/cpu_utilization_percentage" in metrics
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == {"model.arch": "paper", "train.lr": "0.0002"}

    listing = rest(url, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=images")
    names = [f["path"] for f in listing.get("files", [])]
    assert any("samples+step+10+" in n and n.endswith(".png") for n in names), names
    assert list((server["root"] / "artifacts").rglob("*samples+step+10+*.png"))

    stop_group(server["proc"])
    with pytest.raises(TrackingStoreError, match="refused"):
        check_tracking_store(url, timeout_s=3)
