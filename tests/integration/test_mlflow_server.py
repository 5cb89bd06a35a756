"""A REAL ``mlflow server`` (sqlite backend, proxied artifacts) and a separate
training-like process that logs to it over HTTP through ``MLflowTracker``.

The server spawns uvicorn, a job runner and several huey consumers; it is started in
its own session (``start_new_session=True``, i.e. setsid) and stopped by signalling the
whole process group.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackgan.tracking import TrackingStoreError, check_tracking_store, read_run_id
from tests.mlflow_server import ENV, mlflow_server, rest, stop_group

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with mlflow_server(
        f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "server.log", tmp_path / "artifacts"
    ) as (url, proc):
        yield {"url": url, "proc": proc, "root": tmp_path}


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
