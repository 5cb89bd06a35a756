"""Tracking layer against a REAL MLflow sqlite store (no mocks of mlflow).

One store per module keeps the runtime down (creating and migrating the database takes
seconds). Fault injection wraps the real ``MlflowClient`` (see ``FaultyClient``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stackgan.cli import track
from stackgan.tracking import (
    ATTEMPT_TAG,
    PARENT_RUN_TAG,
    STAGE_TAG,
    MLflowTracker,
    NullTracker,
    RetryPolicy,
    Tracker,
    TrackingStoreError,
    check_tracking_store,
    ensure_experiment,
    read_run_id,
    resolve_tracking_uri,
    tags,
    tracker_for_rank,
)

EXPERIMENT = "unit"
PARENT = "mlflow.parentRunId"
SUBPROCESS_ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("store")
    uri = resolve_tracking_uri(None, root)
    check_tracking_store(uri)  # creates and migrates the database once
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp_id = ensure_experiment(uri, EXPERIMENT, (root / "mlartifacts").as_uri())
    return {"root": root, "uri": uri, "client": client, "exp_id": exp_id}


def start(store: dict[str, Any], name: str, **kwargs: Any) -> MLflowTracker:
    kwargs.setdefault("log_system_metrics", False)
    return MLflowTracker.start(
        tracking_uri=store["uri"], experiment=EXPERIMENT, run_name=name, **kwargs
    )


def steps_of(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


class FaultyClient:
    """Fault injection AROUND THE REAL MlflowClient (not a mock).

    Calls named in ``methods`` may block on ``gate``, or fail (after ``delay_s``) with a
    transient ``TEMPORARILY_UNAVAILABLE`` error; every other call and every call that is
    let through goes to the real client and the real sqlite store.
    """

    def __init__(self, real: Any, methods: tuple[str, ...] = ("log_batch", "set_terminated")):
        self._real = real
        self._methods = methods
        self.fail_next = 0
        self.always_fail = False
        self.delay_s = 0.0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.failures = 0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name not in self._methods:
            return attr

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

            self.calls += 1
            self.entered.set()
            if self.gate is not None:
                self.gate.wait(20)
            if self.always_fail or self.fail_next > 0:
                self.fail_next -= 1
                self.failures += 1
                time.sleep(self.delay_s)
                raise MlflowException("injected: store unavailable", TEMPORARILY_UNAVAILABLE)
            return attr(*args, **kwargs)

        return wrapped


# --------------------------------------------------------------------------- store helpers


def test_resolve_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://mlflow.example:5000"
    assert resolve_tracking_uri("http://other:1", tmp_path) == "http://other:1"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/m.db", Path("x")) == (
        f"sqlite:///{tmp_path.resolve()}/rel/m.db"
    )


def test_ensure_experiment_is_race_safe(store: dict[str, Any]) -> None:
    barrier = threading.Barrier(4)
    ids: list[str] = []

    def worker() -> None:
        barrier.wait()
        ids.append(ensure_experiment(store["uri"], "raced", None))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 4 and len(set(ids)) == 1
    assert store["client"].get_experiment(ids[0]).name == "raced"


def test_experiments_open_in_the_training_view(store: dict[str, Any]) -> None:
    """MLflow 3's UI picks the view from ``mlflow.experimentKind``: new experiments get
    ``custom_model_development``, and so does an older one on first use."""
    client = store["client"]
    new = ensure_experiment(store["uri"], "fresh", None)
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("made-before")
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert ensure_experiment(store["uri"], "made-before", None) == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_fresh_sqlite_store_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    """Several jobs that open a new sqlite store at the same moment all succeed (MLflow
    creates and migrates the tables without a lock; the losers of that race failed with
    "duplicate column name")."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = textwrap.dedent(
        f"""
        import time, sys
        from stackgan.tracking.store import ensure_experiment
        time.sleep(max(0.0, {time.time() + 3.0} - time.time()))  # start together
        print(ensure_experiment({uri!r}, "race"))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    failed = [err.decode()[-800:] for rc, _, err in results if rc != 0]
    assert not failed, failed
    assert len({out.strip() for _, out, _ in results}) == 1  # one experiment, same id


def test_fail_fast_sqlite_unusable_locations(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path}/does/not/exist/mlflow.db"
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    under_file = f"sqlite:///{a_file}/mlflow.db"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database" * 100)
    not_a_db = f"sqlite:///{garbage}"
    for uri in (missing, under_file, not_a_db):
        started = time.monotonic()
        with pytest.raises(TrackingStoreError) as info:
            check_tracking_store(uri, timeout_s=5)
        assert uri in str(info.value)
        assert time.monotonic() - started < 6
    assert not (tmp_path / "does").exists()


def test_fail_fast_http_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(TrackingStoreError, match="refused") as info:
        check_tracking_store(uri, timeout_s=3)
    assert uri in str(info.value)
    assert time.monotonic() - started < 4
    assert track.main(["check", "--tracking-uri", uri, "--timeout-s", "2"]) == 1


def test_tracker_for_rank_builds_only_on_rank_zero() -> None:
    calls: list[int] = []

    def factory() -> Tracker:
        calls.append(1)
        return NullTracker()

    assert isinstance(tracker_for_rank(1, factory), NullTracker) and calls == []
    tracker_for_rank(0, factory)
    assert calls == [1]
    assert isinstance(NullTracker(), Tracker) and NullTracker().run_id is None


# --------------------------------------------------------------------------- logging


def test_params_flattened_truncated_and_batched(store: dict[str, Any]) -> None:
    params = {"model": {"arch": "paper", "gf_dim": 128}, "big": "x" * 7000}
    params["many"] = {f"p{i:03d}": i for i in range(230)}  # > 2 log_batch calls
    tracker = start(store, "params")
    tracker.log_params(params)
    tracker.close()
    logged = store["client"].get_run(tracker.run_id).data.params
    assert logged["model.arch"] == "paper" and logged["model.gf_dim"] == "128"
    assert len(logged) == 233
    assert logged["many.p229"] == "229"
    assert len(logged["big"]) == 6000 and logged["big"].endswith("...[truncated]")


def test_metrics_images_artifacts_and_checkpoint_path(
    store: dict[str, Any], tmp_path: Path
) -> None:
    tracker = start(store, "logging", tags={"stage": "stage1"})
    for step in range(5):
        tracker.log_metrics({"loss_d": 1.0 / (step + 1), "loss_g": float(step)}, step=step)
    tracker.log_image(np.full((32, 48, 3), 200, np.uint8), key="samples", step=50)
    tracker.log_dict({"fid": 51.2}, "eval/metrics.json")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    tracker.log_artifact(note, "notes")
    tracker.log_checkpoint_path(tmp_path / "network-final.pt")
    tracker.close()
    client, run_id = store["client"], tracker.run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert steps_of(client, run_id, "loss_g") == [0, 1, 2, 3, 4]
    assert run.data.metrics["loss_g"] == 4.0
    assert run.data.tags["stage"] == "stage1"
    assert run.data.tags["checkpoint_path"] == str((tmp_path / "network-final.pt").resolve())
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any("samples+step+50+" in p and p.endswith(".png") for p in images), images
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/metrics.json"]
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
    with pytest.raises(ValueError, match="uint8"):
        tracker.log_image(np.zeros((4, 4, 3), np.float32), key="samples")


def test_system_metrics_on_explicit_run_id(store: dict[str, Any]) -> None:
    tracker = start(store, "sysmetrics", log_system_metrics=True, system_metrics_interval_s=0.2)
    deadline = time.monotonic() + 10
    names: set[str] = set()
    while time.monotonic() < deadline and "system/cpu_utilization_percentage" not in names:
        time.sleep(0.2)
        names = set(store["client"].get_run(tracker.run_id).data.metrics)
    tracker.close()
    assert "system/cpu_utilization_percentage" in names
    assert "system/system_memory_usage_megabytes" in names


# --------------------------------------------------------------------------- run identity


def test_parent_child_linkage_across_processes(store: dict[str, Any], tmp_path: Path) -> None:
    parent_file = tmp_path / "parent_run_id.txt"
    cli_args = ["--tracking-uri", store["uri"], "--experiment", EXPERIMENT]
    cli_args += ["--run-name", "pipeline", "--out", str(parent_file)]
    subprocess.run(
        [sys.executable, "-m", "stackgan.cli.track", "start-parent", *cli_args],
        check=True,
        env=SUBPROCESS_ENV,
        timeout=120,
    )
    parent_id = read_run_id(parent_file)
    assert parent_id is not None
    child = textwrap.dedent(
        f"""
        from pathlib import Path
        from stackgan.tracking import MLflowTracker
        t = MLflowTracker.start(tracking_uri={store["uri"]!r}, experiment={EXPERIMENT!r},
            run_name="stage1", parent_run_id={parent_id!r}, log_system_metrics=False,
            run_id_file=Path({str(tmp_path / "stage1_run_id.txt")!r}))
        t.log_metrics({{"loss": 1.5}}, step=0)
        t.close()
        """
    )
    # MLFLOW_RUN_ID pointing at the parent must not hijack the child's run.
    env = {**SUBPROCESS_ENV, "MLFLOW_RUN_ID": parent_id}
    subprocess.run([sys.executable, "-c", child], check=True, env=env, timeout=120)
    child_id = read_run_id(tmp_path / "stage1_run_id.txt")
    found = store["client"].search_runs(
        [store["exp_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert [r.info.run_id for r in found] == [child_id]
    assert found[0].data.metrics == {"loss": 1.5}
    assert store["client"].get_run(parent_id).data.metrics == {}


def test_continuation_after_preemption_is_one_run(store: dict[str, Any], tmp_path: Path) -> None:
    run_id_file = tmp_path / "work" / "mlflow_run_id.txt"
    first = start(store, "continued", run_id_file=run_id_file)
    assert read_run_id(run_id_file) == first.run_id  # written before any logging
    first.log_params({"lr": 2e-4, "git": {"commit": "aaa"}})
    for step in range(3):
        first.log_metrics({"loss": float(step)}, step=step)
    first.close("KILLED")
    client = store["client"]
    assert client.get_run(first.run_id).info.status == "KILLED"

    second = start(store, "continued", run_id_file=run_id_file)
    assert second.run_id == first.run_id
    assert client.get_run(second.run_id).info.status == "RUNNING"
    # The retry runs other code: a changed param keeps its first value, the rest land.
    second.log_params({"lr": 2e-4, "git": {"commit": "bbb"}, "resumed_from": 3})
    for step in range(3, 5):
        second.log_metrics({"loss": float(step)}, step=step)
    second.close()
    run = client.get_run(first.run_id)
    assert run.data.params == {"lr": "0.0002", "git.commit": "aaa", "resumed_from": "3"}
    assert run.info.status == "FINISHED" and run.data.tags[ATTEMPT_TAG] == "2"
    assert steps_of(client, first.run_id, "loss") == [0, 1, 2, 3, 4]
    same_name = client.search_runs([store["exp_id"]], "attributes.run_name = 'continued'")
    assert len(same_name) == 1


def test_mlflow_run_id_env_does_not_hijack(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = start(store, "victim")
    victim.close()
    monkeypatch.setenv("MLFLOW_RUN_ID", victim.run_id)
    tracker = start(store, "own-run")
    tracker.log_metrics({"x": 1.0}, step=0)
    tracker.close()
    assert tracker.run_id != victim.run_id
    assert "MLFLOW_RUN_ID" not in os.environ  # not inherited by child processes either
    assert store["client"].get_run(victim.run_id).data.metrics == {}
    assert store["client"].get_run(tracker.run_id).data.metrics == {"x": 1.0}


# --------------------------------------------------------------------------- robustness


def test_transient_errors_are_retried_without_blocking_training(
    store: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    faulty = FaultyClient(MlflowClient(store["uri"]))
    tracker = start(
        store, "flaky", client=faulty, retry=RetryPolicy(3, initial_backoff_s=0.05, budget_s=5)
    )
    faulty.fail_next = 2
    faulty.delay_s = 0.2
    durations = []
    with caplog.at_level(logging.WARNING, logger="stackgan.tracking"):
        for step in range(30):
            started = time.perf_counter()
            tracker.log_metrics({f"m{k}": float(step) for k in range(12)}, step=step)
            durations.append(time.perf_counter() - started)
            time.sleep(0.01)
        tracker.close()
    assert faulty.failures == 2
    assert max(durations) < 0.05, max(durations)
    assert steps_of(store["client"], tracker.run_id, "m11") == list(range(30))
    assert sum("attempt" in r.getMessage() for r in caplog.records) == 2


def test_metrics_are_merged_into_few_log_batch_calls(store: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    counting = FaultyClient(MlflowClient(store["uri"]), methods=("log_batch",))
    tracker = start(store, "merged", client=counting, metrics_interval_s=0.5)
    for step in range(40):
        tracker.log_metrics({f"m{k}": float(step) for k in range(12)}, step=step)
        time.sleep(0.005)
    tracker.close()
    assert counting.calls <= 3, counting.calls  # 40 steps in ~0.2 s: 1-2 batches
    assert steps_of(store["client"], tracker.run_id, "m5") == list(range(40))


def test_full_queue_drops_oldest_metrics(store: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    faulty = FaultyClient(MlflowClient(store["uri"]), methods=("log_batch",))
    tracker = start(store, "dropping", client=faulty, queue_size=5)
    faulty.gate = threading.Event()
    tracker.log_metrics({"loss": 0.0}, step=0)
    assert faulty.entered.wait(10)  # the worker holds step 0 and is blocked
    for step in range(1, 20):
        started = time.perf_counter()
        tracker.log_metrics({"loss": float(step)}, step=step)
        assert time.perf_counter() - started < 0.05
    assert tracker.dropped == {"metrics": 14, "image": 0}
    faulty.gate.set()
    tracker.close()
    assert steps_of(store["client"], tracker.run_id, "loss") == [0, 15, 16, 17, 18, 19]


def test_close_is_bounded_when_store_is_dead(store: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    faulty = FaultyClient(MlflowClient(store["uri"]), methods=("log_batch", "set_terminated"))
    tracker = start(
        store,
        "dead",
        client=faulty,
        retry=RetryPolicy(3, initial_backoff_s=0.1, budget_s=1.0),
        flush_timeout_s=1.5,
    )
    faulty.always_fail = True
    faulty.delay_s = 0.3
    for step in range(50):
        started = time.perf_counter()
        tracker.log_metrics({"loss": 1.0}, step=step)
        assert time.perf_counter() - started < 0.05
        tracker.set_tags({"step": str(step)})
    started = time.monotonic()
    tracker.close()
    assert time.monotonic() - started < 3.0
    assert store["client"].get_run(tracker.run_id).info.status == "RUNNING"


# --------------------------------------------------------------------------- track CLI


def test_track_cli_parent_lifecycle(store: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "parent_run_id.txt"
    config = tmp_path / "resolved.yaml"
    config.write_text("model:\n  arch: paper\ntrain:\n  epochs: 2\n")
    args = ["--tracking-uri", store["uri"], "--experiment", EXPERIMENT, "--run-name", "pipe"]
    args += ["--out", str(out), "--config", str(config), "--tag", "run=base", "--param", "seed=3"]
    assert track.main(["start-parent", *args]) == 0
    parent_id = read_run_id(out)
    assert track.main(["start-parent", *args]) == 0  # idempotent: same run
    assert read_run_id(out) == parent_id

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"metrics": {"fid": 51.2, "is": {"mean": 3.1}, "ok": True}}))
    common = ["--tracking-uri", store["uri"], "--parent-run-id-file", str(out)]
    assert track.main(["log-summary", *common, "--metrics", str(results)]) == 0
    assert track.main(["log-summary", *common, "--metrics", str(results), "--prefix", "s2."]) == 0
    assert track.main(["finish-parent", *common, "--status", "FAILED"]) == 0

    client = store["client"]
    run = client.get_run(parent_id)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "FAILED"
    assert run.data.metrics == {"fid": 51.2, "is.mean": 3.1, "s2.fid": 51.2, "s2.is.mean": 3.1}
    assert run.data.params == {"model.arch": "paper", "train.epochs": "2", "seed": "3"}
    assert run.data.tags["run"] == "base" and "mlflow.parentRunId" not in run.data.tags
    assert [a.path for a in client.list_artifacts(parent_id, "config")] == ["config/resolved.yaml"]
    assert len(client.search_runs([store["exp_id"]], "attributes.run_name = 'pipe'")) == 1
    missing = ["--tracking-uri", store["uri"], "--parent-run-id-file", str(tmp_path / "none")]
    assert track.main(["finish-parent", *missing]) == 2  # a bad input file: exit 2


def test_finish_parent_logs_metrics_and_artifacts_in_one_call(
    store: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "parent_run_id.txt"
    args = ["--tracking-uri", store["uri"], "--experiment", EXPERIMENT, "--run-name", "one"]
    assert track.main(["start-parent", *args, "--out", str(out)]) == 0
    parent_id = read_run_id(out)
    results = tmp_path / "summary.json"
    results.write_text(json.dumps({"metrics": {"stage1": {"body": 0.75}}}))
    report = tmp_path / "report.html"
    report.write_text("<html></html>")
    common = ["--tracking-uri", store["uri"], "--parent-run-id-file", str(out)]
    gone = ["--metrics", str(results), "--artifact", str(tmp_path / "absent.html")]
    assert track.main(["finish-parent", *common, *gone]) == 2  # nothing logged, run still open
    client = store["client"]
    assert client.get_run(parent_id).info.status == "RUNNING"
    assert client.get_run(parent_id).data.metrics == {}
    both = ["--metrics", str(results), "--artifact", str(report)]
    assert track.main(["finish-parent", *common, *both]) == 0
    run = client.get_run(parent_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "FINISHED"
    assert run.data.metrics == {"stage1.body": 0.75}
    assert [a.path for a in client.list_artifacts(parent_id)] == ["report.html"]


def test_start_parent_rerun_with_a_changed_param_keeps_its_first_value(
    store: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "parent_run_id.txt"
    args = ["--tracking-uri", store["uri"], "--experiment", EXPERIMENT, "--run-name", "rerun"]
    args += ["--out", str(out)]
    assert track.main(["start-parent", *args, "--param", "seed=3", "--param", "lr=1"]) == 0
    assert track.main(["start-parent", *args, "--param", "seed=4", "--param", "bs=8"]) == 0
    assert track.main(["start-parent", *args, "--param", "seed=5"]) == 0  # a batch of one
    params = store["client"].get_run(read_run_id(out)).data.params
    assert params == {"seed": "3", "lr": "1", "bs": "8"}


def test_tag_vocabulary_is_what_the_writers_write() -> None:
    assert (STAGE_TAG, ATTEMPT_TAG, PARENT_RUN_TAG) == ("stage", "stackgan.attempt", PARENT)
    assert [tags.training_stage(s) for s in (1, 2)] == ["1", "2"]
    assert [tags.evaluation_stage(s) for s in (1, 2)] == ["eval1", "eval2"]
    assert (tags.PIPELINE_STAGE, tags.ROLE_TAG, tags.PIPELINE_ROLE) == (
        "pipeline",
        "stackgan.role",
        "pipeline",
    )
    assert tags.RUN_STATUSES == ("FINISHED", "FAILED", "KILLED")


def test_sqlite_store_check_allows_a_busy_machine(tmp_path: Path, monkeypatch) -> None:
    """A local sqlite store gets at least SQLITE_TIMEOUT_S to open and migrate (it fails at
    once when unusable); an http store keeps the caller's short timeout."""
    from stackgan.tracking import store as store_mod

    seen: list[float] = []
    real = store_mod.call_with_timeout

    def spy(fn, timeout_s):
        seen.append(timeout_s)
        return real(fn, timeout_s)

    monkeypatch.setattr(store_mod, "call_with_timeout", spy)
    check_tracking_store(f"sqlite:///{tmp_path}/mlflow.db", timeout_s=2)
    assert seen == [store_mod.SQLITE_TIMEOUT_S] and store_mod.SQLITE_TIMEOUT_S >= 30
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TrackingStoreError):
        check_tracking_store(f"http://127.0.0.1:{port}", timeout_s=2)
    assert seen[-1] == 3.0  # timeout_s + 1 around the HTTP call's own 2 s
