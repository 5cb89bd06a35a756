"""Multi-node DDP through the pipeline, on a 2-node local SLURM cluster.

    .venv/bin/pytest tests/slurm/test_multinode_slurm.py -q     # ~5 min on 2 cores

The module switches the local cluster to two nodes (``up.sh --nodes 2``: node1 and node2,
each slurmd in its own network namespace with its own hostname and address) and back to the
single-node default at the end. The pipeline launches training as in production: an
``mpi`` job of 2 nodes whose rule runs ``srun`` + one ``torchrun`` per node, meeting at a
c10d rendezvous on the first node, gloo between the nodes.

* ``test_two_nodes_have_their_own_hostname_address_and_spool``: what the cluster is.
* ``test_two_node_training_survives_a_requeue_and_a_node_failure``: the smoke pipeline up to
  both stages' training outputs (no evaluation), both stages on 2 nodes x 1 rank. Stage-I's
  job is requeued after a checkpoint (resumes on both nodes), then node2's part of the job
  step is SIGKILLed (the job fails cleanly, Snakemake resubmits it, and it resumes again).
  The final Stage-I weights equal, bit for bit, those of the same run config trained as
  1 node x 2 ranks without interruption.
* ``test_down_removes_the_node_namespaces``: ``down.sh`` leaves no namespace or bridge.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from stackgan.networkfile import read_network
from tests.helpers import clean_env, wait_until
from tests.slurm.pipeline_runs import (
    PipelineRun,
    build_inputs_locally,
    checkpoint_steps,
    sacct_jobs,
    sh,
    training_outputs,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "cluster" / "local-slurm"
BASE = Path(os.environ.get("STACKGAN_SLURM_BASE", "/tmp/stackgan-slurm"))
NET = os.environ.get("STACKGAN_SLURM_NET", "10.77.0")
NODES = {"node1": f"{NET}.11", "node2": f"{NET}.12"}
STAGE1_EPOCHS = 40  # 120 steps at 3 per epoch with 2 ranks: long enough for two interruptions
CHECKPOINT_EVERY = 10
TWO_NODES = "{nodes: 2, ranks_per_node: 1}"
# Both training stages' outputs (and so the data, the classifier for in-training evaluation
# and the MLflow parent run); evaluation and the summary are not what is tested here.
TRAINING_OUTPUTS = training_outputs(1, 2)
TARGETS = training_outputs(2)


def up(*args: str) -> str:
    proc = subprocess.run(
        [str(SCRIPTS / "up.sh"), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"up.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module", autouse=True)
def two_node_cluster() -> Iterator[str]:
    """The cluster as 2 nodes for this module; the single-node default again afterwards."""
    out = up("--nodes", "2")
    yield out
    up()


def test_two_nodes_have_their_own_hostname_address_and_spool(two_node_cluster: str) -> None:
    where = ", ".join(f"{node} {addr}" for node, addr in NODES.items())
    assert f"local SLURM cluster up: 2 nodes ({where};" in two_node_cluster, two_node_cluster
    # one task per node: its hostname, its eth0 address, and the address node1 resolves to
    probe = (
        "import socket, subprocess; "
        "addr = subprocess.run(['ip', '-o', '-4', 'addr', 'show', 'eth0'], capture_output=True, "
        "text=True).stdout.split()[3]; "
        "print(socket.gethostname(), addr, socket.gethostbyname('node1'))"
    )
    out = sh("srun", "-N2", "-n2", "--ntasks-per-node=1", "-t", "1", sys.executable, "-c", probe)
    rows = sorted(line.split() for line in out.splitlines())
    assert rows == [
        ["node1", f"{NODES['node1']}/24", NODES["node1"]],
        ["node2", f"{NODES['node2']}/24", NODES["node1"]],
    ], out
    for node, addr in NODES.items():
        shown = sh("scontrol", "show", "node", node, "-o")
        assert f"NodeAddr={addr} " in shown and "State=IDLE" in shown, shown
        pid = int((BASE / f"slurmd-{node}.pid").read_text())
        assert psutil.Process(pid).name() == "slurmd"
        assert (BASE / "spool" / node).is_dir()
        assert (BASE / "log" / f"slurmd-{node}.log").is_file()
        # its own network namespace: not the one of this (the controller's) process
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    # the controller listens on the bridge address, which every node namespace reaches
    config = sh("scontrol", "show", "config")
    assert re.search(rf"SlurmctldHost\[0\]\s*=\s*\S+\({re.escape(NET)}\.1\)", config), config


# --------------------------------------------------------------------------- helpers


def stage1_log(run: PipelineRun) -> str:
    log = run.workdir / "results/smoke/logs/train_stage1.log"
    return log.read_text() if log.is_file() else ""


def job_state(job: str) -> tuple[str, int]:
    shown = sh("scontrol", "show", "job", "-o", job)
    state = re.search(r"\bJobState=(\S+)", shown)
    restarts = re.search(r"\bRestarts=(\d+)", shown)
    return (state.group(1) if state else "?", int(restarts.group(1)) if restarts else 0)


def node_processes(job: str, node: str) -> list[psutil.Process]:
    """Every process of ``job``'s srun step on ``node`` (torchrun agent, rank, loader workers).
    All nodes share this machine's process table; SLURM puts the node and step in their
    environment."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if (
            env.get("SLURM_JOB_ID") == job
            and env.get("SLURMD_NODENAME") == node
            and env.get("SLURM_STEP_ID") not in (None, "batch", "extern")
            and "stackgan.cli.train" in " ".join(p.info["cmdline"] or [])
        ):
            found.append(p)
    return found


def placement_line(log: str) -> str:
    m = re.search(r"process group: gloo, 2 ranks on 2 host\(s\); rendezvous .*", log)
    assert m, log[-3000:]
    return m.group(0)


def reference_run(run: PipelineRun, out: Path) -> Path:
    """The pipeline's Stage-I command, as 1 node x 2 ranks (torchrun --standalone), with no
    tracking and its own work directory and outputs; the network file it wrote."""
    launch = re.search(r"^launch: (.*)$", stage1_log(run), re.M)
    assert launch, stage1_log(run)[:2000]
    argv = shlex.split(launch.group(1))
    train = argv[argv.index("stackgan.cli.train") + 1 :]
    keep: list[str] = []
    skip_value = {
        "--tracking-uri",
        "--experiment",
        "--run-name",
        "--parent-run-id-file",
        "--preset",
        "--dataset-name",
        "--workdir",
        "--out",
        "--metrics-out",
        "--loss-curve",
        "--grid-out",
    }
    it = iter(train)
    for arg in it:
        if arg in skip_value:
            next(it)
        elif arg != "--no-system-metrics":
            keep.append(arg)
    net = out / "network-final.pt"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.launch",
        "--nodes",
        "1",
        "--ranks-per-node",
        "2",
        "--",
        "-m",
        "stackgan.cli.train",
        *keep,
        "--workdir",
        str(out / "work"),
        "--out",
        str(net),
    ]
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(
        cmd, cwd=run.workdir, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "process group: gloo, 2 ranks on 1 host(s)" in proc.stderr, proc.stderr[-3000:]
    return net


def generator_weights(path: Path) -> dict[str, torch.Tensor]:
    """G and, when the run keeps one, its EMA copy."""
    net = read_network(path)
    weights = {f"G.{k}": v for k, v in net.G.items()}
    weights.update({f"G_ema.{k}": v for k, v in (net.G_ema or {}).items()})
    return weights


# --------------------------------------------------------------------------- the pipeline


def test_two_node_training_survives_a_requeue_and_a_node_failure(
    pipeline: Callable[..., PipelineRun], tmp_path: Path
) -> None:
    config = [
        "--config",
        "preset=smoke",
        f"stage1={{epochs: {STAGE1_EPOCHS}}}",
        f"train={{checkpoint_every_steps: {CHECKPOINT_EVERY}, deterministic: true}}",
        f"resources={{train_stage1: {TWO_NODES}, train_stage2: {TWO_NODES}}}",
    ]

    run = pipeline(
        *TARGETS,
        *config,
        timeout=480,
        env={"OMP_NUM_THREADS": "1"},  # deterministic CPU settings, as in the reference run
        prepare=lambda workdir: build_inputs_locally(workdir, *TARGETS, *config),
    )
    total = STAGE1_EPOCHS * 3

    # 1. Stage-I runs on both nodes; requeue it once it has a checkpoint (as a preemption).
    def running_with_checkpoint() -> tuple[str, int] | None:
        assert run.alive(), f"snakemake ended during Stage-I:\n{run.tail()}"
        job = (run.submitted().get("train_stage:1") or [None])[0]
        steps = checkpoint_steps(run.workdir)
        if job and steps and job_state(job)[0] == "RUNNING":
            return job, steps[-1]
        return None

    job, ckpt = wait_until(running_with_checkpoint, 300, "Stage-I with a checkpoint", 0.2)
    assert ckpt < total - 60, "Stage-I nearly finished before the requeue"
    first_log = stage1_log(run)
    sh("scontrol", "requeue", job)

    # 2. The rerun (same job id) resumes on both nodes; then node2's processes die.
    def resumed_and_checkpointed() -> int | None:
        assert run.alive(), f"snakemake ended during Stage-I:\n{run.tail()}"
        state, restarts = job_state(job)
        m = re.search(r"all 2 ranks resumed at step (\d+) \(hosts node1, node2\)", stage1_log(run))
        if restarts == 1 and state == "RUNNING" and m:
            resumed = int(m.group(1))
            if checkpoint_steps(run.workdir)[-1] > resumed and node_processes(job, "node2"):
                return resumed
        return None

    resumed = wait_until(resumed_and_checkpointed, 240, "the requeued Stage-I to resume", 0.2)
    assert ckpt <= resumed, (ckpt, resumed)
    second_log = stage1_log(run)
    killed = node_processes(job, "node2")
    for p in killed:
        p.send_signal(signal.SIGKILL)
    assert checkpoint_steps(run.workdir)[-1] < total - 20, "Stage-I nearly done before the kill"

    rc = run.wait()
    assert rc == 0, run.tail()
    assert all((run.workdir / p).stat().st_size > 0 for p in TRAINING_OUTPUTS)

    # sacct: Stage-I = the requeued-then-failed job and Snakemake's retry; every training
    # job (and its srun step) on both nodes.
    stage1_jobs = run.submitted()["train_stage:1"]
    assert stage1_jobs[0] == job and len(stage1_jobs) == 2, run.submitted()
    history = [
        r
        for r in sacct_jobs(run.run_uuid(), run.started, duplicates=True)
        if r["rule"] == "train_stage"
    ]
    states = [(r["JobIDRaw"], r["wildcard"], r["State"]) for r in history]
    assert [s for s in states if s[1] == "1"] == [
        (job, "1", "REQUEUED"),
        (job, "1", "FAILED"),
        (stage1_jobs[1], "1", "COMPLETED"),
    ], states
    assert [s[2] for s in states if s[1] == "2"] == ["COMPLETED"], states
    for jid in {r["JobIDRaw"] for r in history}:
        rows = sh("sacct", "-j", jid, "-P", "-n", "--format=JobID,NNodes,NodeList,NTasks")
        lines = [line.split("|") for line in rows.splitlines()]
        assert [jid, "2", "node[1-2]"] == lines[0][:3], rows  # the allocation
        steps = [row for row in lines if re.fullmatch(rf"{jid}\.\d+", row[0])]
        assert steps and all(row[1:] == ["2", "node[1-2]", "2"] for row in steps), rows

    # The logs: srun + torchrun with the rendezvous on node1 (not localhost), a rank on each
    # node, and every attempt after the first resumed on both nodes.
    final_log = stage1_log(run)
    for log in (first_log, second_log, final_log):
        launch = re.search(r"^launch: srun --nodes=2 --ntasks=2 .*--rdzv-endpoint=(\S+)", log, re.M)
        assert launch and launch.group(1).startswith("node1:"), log[:2000]
        where = placement_line(log)
        # torchrun gives the workers the store on the rendezvous host (another port)
        assert re.search(rf"rendezvous node1:\d+ \({NODES['node1']}\);", where), where
        assert "rank 0 on node1, rank 1 on node2" in where, where
    assert "starting at step 0" in first_log and "resumed" not in first_log
    last = re.search(r"all 2 ranks resumed at step (\d+) \(hosts node1, node2\)", final_log)
    assert last and int(last.group(1)) >= resumed, final_log[-3000:]
    metrics = json.loads((run.workdir / "results/smoke/stage1/metrics.json").read_text())
    assert metrics["resumed_from"] == int(last.group(1)) and metrics["steps"] == total, metrics
    stage2_log = (run.workdir / "results/smoke/logs/train_stage2.log").read_text()
    assert "rank 0 on node1, rank 1 on node2" in placement_line(stage2_log)

    # MLflow: one Stage-I run, continued by every attempt, with metrics up to the end.
    client = MlflowClient(tracking_uri=f"sqlite:///{run.workdir / 'results/mlflow.db'}")
    exp = client.get_experiment_by_name("stackgan-smoke")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["smoke", "stage1", "stage2"], sorted(runs)
    stage1 = runs["stage1"]
    assert stage1.info.status == "FINISHED" and runs["stage2"].info.status == "FINISHED"
    assert stage1.data.tags["mlflow.parentRunId"] == runs["smoke"].info.run_id
    assert stage1.data.tags["stackgan.attempt"] == "3", stage1.data.tags
    assert stage1.data.tags["slurm.job_id"] == stage1_jobs[1], stage1.data.tags
    assert stage1.info.run_id == metrics["mlflow_run_id"]
    logged = sorted({h.step for h in client.get_metric_history(stage1.info.run_id, "loss_d")})
    assert logged[0] <= ckpt and logged[-1] == total, logged

    # Bit-identical to the same run config as 1 node x 2 ranks, never interrupted.
    ref = reference_run(run, tmp_path / "one-node")
    got = generator_weights(run.workdir / "results/smoke/stage1/network-final.pt")
    want = generator_weights(ref)
    assert got.keys() == want.keys()
    different = [k for k in got if not torch.equal(got[k], want[k])]
    assert not different, different


def test_down_removes_the_node_namespaces() -> None:
    proc = subprocess.run(
        [str(SCRIPTS / "down.sh")], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "stackgan-node" not in namespaces, namespaces
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert "stackgan-br0" not in links and "sgveth" not in links, links
    alive = [
        p.pid
        for p in psutil.process_iter(["name", "status"])
        if p.info["name"] == "slurmd" and p.info["status"] != psutil.STATUS_ZOMBIE
    ]
    assert not alive, f"slurmd still running after down.sh: {alive}"
