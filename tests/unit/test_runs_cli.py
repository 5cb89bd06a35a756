"""``stackgan runs`` against a REAL MLflow sqlite store with two pipelines and a child."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stackgan.cli import runs
from stackgan.tracking import check_tracking_store, resolve_tracking_uri
from stackgan.tracking.compare import BASE_COLUMNS


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("runs")
    uri = resolve_tracking_uri(None, root)
    check_tracking_store(uri)
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    exp_id = client.create_experiment("cmp", artifact_location=(root / "art").as_uri())
    other = client.create_experiment("other", artifact_location=(root / "art2").as_uri())
    ids = {}
    for name, arch, fid, is_mean, start in (
        ("paper-run", "paper", 60.5, 3.2, 1_700_000_000_000),
        ("torch-run", "pytorch", 48.25, None, 1_700_000_100_000),
    ):
        run = client.create_run(exp_id, run_name=name, start_time=start)
        ids[name] = run.info.run_id
        client.log_param(run.info.run_id, "arch", arch)
        client.log_param(run.info.run_id, "seed", "1")
        client.log_metric(run.info.run_id, "fid", fid + 10, step=0)
        client.log_metric(run.info.run_id, "fid", fid, step=1)  # the final value
        if is_mean is not None:
            client.log_metric(run.info.run_id, "is_mean", is_mean)
        client.log_batch(run.info.run_id, metrics=[Metric("system/cpu", 5.0, 0, 0)])
        client.set_terminated(run.info.run_id)
    child = client.create_run(
        exp_id,
        run_name="stage1",
        tags={"mlflow.parentRunId": ids["paper-run"], "stage": "stage1"},
        start_time=1_700_000_050_000,
    )
    ids["stage1"] = child.info.run_id
    client.log_metric(child.info.run_id, "loss_g", 0.5)
    ids["elsewhere"] = client.create_run(other, run_name="elsewhere").info.run_id
    return {"uri": uri, "ids": ids}


def run_cli(store: dict[str, Any], capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert runs.main(["--tracking-uri", store["uri"], "--experiment", "cmp", *args]) == 0
    return capsys.readouterr().out


def cells(line: str) -> list[str]:
    """Cells of a table line (columns are separated by at least two spaces)."""
    return re.split(r"\s{2,}", line.strip())


def test_table_sorted_with_requested_columns(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    args = (
        "--parents-only",
        "--params",
        "arch",
        "--metrics",
        "fid,is_mean",
        "--sort",
        "metrics.fid",
    )
    lines = run_cli(store, capsys, *args).splitlines()
    header = cells(lines[0])
    assert header == [*BASE_COLUMNS, "params.arch", "metrics.fid", "metrics.is_mean"]
    assert [cells(line)[1] for line in lines[2:]] == ["torch-run", "paper-run"]
    torch_row = cells(lines[2])
    assert torch_row[0] == store["ids"]["torch-run"][:8]
    assert torch_row[3].startswith("2023-11-")
    assert re.fullmatch(r"\d+:\d\d:\d\d", torch_row[4])  # duration: start to end
    assert torch_row[5:] == ["-", "pytorch", "48.25", "-"]  # final fid; no stage, no is_mean
    assert cells(lines[3])[-2:] == ["60.5", "3.2"]
    assert "params.seed" not in lines[0]

    desc = run_cli(store, capsys, *args, "--desc").splitlines()
    assert [cells(line)[1] for line in desc[2:]] == ["paper-run", "torch-run"]


def test_default_metrics_children_and_limit(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    header = cells(run_cli(store, capsys).splitlines()[0])
    assert header[len(BASE_COLUMNS) :] == ["metrics.fid", "metrics.loss_g"]  # the key metrics
    wide = cells(run_cli(store, capsys, "--all").splitlines()[0])
    assert wide[len(BASE_COLUMNS) :] == [
        "params.arch",
        "params.seed",
        "metrics.fid",
        "metrics.is_mean",
        "metrics.loss_g",
    ]
    children = run_cli(store, capsys, "--children-of", store["ids"]["paper-run"]).splitlines()
    assert len(children) == 3
    start = cells(children[2])[3]
    assert cells(children[2])[1:] == ["stage1", "RUNNING", start, "-", "stage1", "0.5"]
    newest = run_cli(store, capsys, "--limit", "1", "--sort", "start_time", "--desc")
    assert cells(newest.splitlines()[2])[1] == "torch-run"
    assert len(newest.splitlines()) == 3


def test_filter_and_json(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(store, capsys, "--filter", "params.arch = 'paper'", "--format", "json", "--all")
    records = json.loads(out)
    assert [r["run_name"] for r in records] == ["paper-run"]
    assert records[0]["run_id"] == store["ids"]["paper-run"]
    assert records[0]["metrics.fid"] == 60.5 and records[0]["metrics.is_mean"] == 3.2
    assert "metrics.loss_g" not in records[0]  # only metrics on the listed runs
    out = run_cli(store, capsys, "--format", "json", "--metrics", "is_mean", "--params", "nope")
    by_name = {r["run_name"]: r for r in json.loads(out)}
    assert (
        by_name["torch-run"]["metrics.is_mean"] is None
        and by_name["torch-run"]["params.nope"] is None
    )


def test_csv_through_module_entry_point(store: dict[str, Any]) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "stackgan.cli.runs", "--experiment", "cmp,other"]
    cmd += ["--format", "csv", "--params", "arch", "--metrics", "fid", "--sort", "params.arch"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=120)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["run_name"] for r in rows[:2]] == ["paper-run", "torch-run"]
    assert {r["run_name"] for r in rows[2:]} == {"stage1", "elsewhere"}
    assert rows[1]["metrics.fid"] == "48.25" and rows[2]["params.arch"] == ""


def test_errors_exit_nonzero(
    store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bad input is exit 2 with one line that names the store and what is wrong.
    assert runs.main(["--tracking-uri", store["uri"], "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and err.count("\n") == 1, err
    missing_db = f"sqlite:///{tmp_path}/none/mlflow.db"
    assert runs.main(["--tracking-uri", missing_db]) == 2
    assert not (tmp_path / "none").exists()
    assert runs.main(["--tracking-uri", store["uri"], "--sort", "bogus"]) == 2


def test_diff_prints_only_what_differs_with_children(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_cli(store, capsys, "--diff", "paper-run", store["ids"]["torch-run"])
    lines = out.splitlines()
    assert lines[0].startswith("== paper-run (") and " vs torch-run (" in lines[0]
    body = {cells(line)[0]: cells(line)[1:] for line in lines[1:] if not line.startswith("==")}
    assert body["params.arch"] == ["paper", "->", "pytorch"]
    assert body["metrics.fid"] == ["60.5", "->", "48.25"]
    assert body["metrics.is_mean"] == ["3.2", "->", "-"]
    assert "params.seed" not in body and not any(k.startswith("metrics.system") for k in body)
    assert "== child stage1: only in A" in out  # pipeline runs: their children are paired
    same = run_cli(store, capsys, "--diff", "paper-run", "paper-run")
    assert "(no differences)" in same


def test_diff_of_an_unknown_run_is_one_line(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = runs.main(["--tracking-uri", store["uri"], "--diff", "paper-run", "nope"])
    err = capsys.readouterr().err
    assert code != 0 and "no run with id or name 'nope'" in err and len(err.splitlines()) == 1
