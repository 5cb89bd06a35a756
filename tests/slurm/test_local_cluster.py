"""The local single-node SLURM cluster (cluster/local-slurm) behaves like a real one.

Run with ``.venv/bin/pytest tests/slurm/test_local_cluster.py -q -m slurm``. The module fixture
brings the cluster up with ``cluster/local-slurm/up.sh`` when ``scontrol ping`` fails (idempotent;
needs root) and leaves it running. Every subprocess call has a hard timeout, and every wait on the
cluster polls with a deadline.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.slurm.conftest import unavailable

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
UP_SH = ROOT / "cluster" / "local-slurm" / "up.sh"
CMD_TIMEOUT_S = 30  # hard limit for any single client command
UP_TIMEOUT_S = 300  # up.sh may have to apt-get install first
NODE = socket.gethostname().split(".")[0]  # the node is named after `hostname -s`


def sh(*args: str, timeout: float = CMD_TIMEOUT_S, check: bool = True) -> str:
    """Run a command with a hard timeout; return stdout (stderr is included in failures)."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


def node_gpus() -> int:
    match = re.search(r"\bGres=gpu:(\d+)", sh("scontrol", "show", "node", NODE, "-o"))
    return int(match.group(1)) if match else 0


def cluster_answers() -> bool:
    try:
        return (
            subprocess.run(
                ["scontrol", "ping"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module", autouse=True)
def local_cluster() -> None:
    """Require the local cluster; start it with up.sh when the controller does not answer."""
    if cluster_answers():
        return
    if os.geteuid() != 0:
        unavailable("the cluster is not running and up.sh needs root")
    proc = subprocess.run(
        [str(UP_SH)], capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, f"up.sh failed:\n{proc.stdout}\n{proc.stderr}"
    assert cluster_answers(), f"up.sh succeeded but scontrol ping fails:\n{proc.stdout}"


class Jobs:
    """Submits batch jobs for one test and cancels whatever is left at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ids: list[str] = []
        self.names: dict[str, str] = {}

    def submit(self, *args: str, script: str | None = None) -> str:
        name = f"stackgan-test-{uuid.uuid4().hex[:12]}"
        cmd = [
            "sbatch",
            "--parsable",
            "-J",
            name,
            "-D",
            str(self.workdir),
            "-o",
            str(self.workdir / "slurm-%j.out"),
            "-t",
            "5",
            *args,
        ]
        if script is not None:
            path = self.workdir / f"{name}.sh"
            path.write_text("#!/bin/bash\n" + script)
            cmd.append(str(path))
        job_id = sh(*cmd).strip().split(";")[0]
        assert job_id.isdigit(), job_id
        self.ids.append(job_id)
        self.names[job_id] = name
        return job_id

    def show(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (finished jobs stay for MinJobAge = 600 s)."""
        out = sh("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def state(self, job_id: str) -> str:
        return self.show(job_id).get("JobState", "")

    def wait_state(self, job_id: str, states: set[str], timeout: float) -> str:
        return wait_until(
            lambda: (s := self.state(job_id)) in states and s,
            timeout,
            f"job {job_id} to reach {states} (now {self.state(job_id)})",
        )

    def sacct_row(self, job_id: str) -> dict[str, str] | None:
        """This job's allocation row in sacct, matched by name too: job ids restart at 1 when the
        state directory is wiped but the accounting DB is kept."""
        out = sh(
            "sacct",
            "-X",
            "-P",
            "-n",
            "-j",
            job_id,
            "--format=JobIdRaw,JobName,State,AllocTRES",
            check=False,
        )
        for line in out.splitlines():
            jid, name, state, tres = line.split("|", 3)
            if jid == job_id and name == self.names[job_id]:
                return {"State": state, "AllocTRES": tres}
        return None

    def cancel_all(self) -> None:
        if self.ids:
            sh("scancel", *self.ids, check=False)


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    j = Jobs(tmp_path)
    yield j
    j.cancel_all()


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_config_matches_the_documented_cluster() -> None:
    show = sh("scontrol", "show", "node", NODE, "-o")
    assert re.search(r"\bCPUTot=\d+", show) and re.search(r"\bRealMemory=\d+", show), show
    assert node_gpus() >= 2, f"the GPU tests need >= 2 (fake) GPUs: {show}"
    partitions = sh("sinfo", "-h", "-o", "%P").split()
    assert "debug*" in partitions and "gpu" in partitions, partitions  # '*' = default
    conf = sh("scontrol", "show", "config")
    assert re.search(r"^JobRequeue\s+= 1$", conf, re.M), "batch jobs must be requeueable"
    assert re.search(r"^MinJobAge\s+= 600 sec$", conf, re.M)
    assert re.search(r"^AccountingStorageType\s+= accounting_storage/slurmdbd$", conf, re.M)
    assert re.search(r"^PreemptType\s+= preempt/qos$", conf, re.M)


def test_gpu_job_gets_devices_and_is_accounted(jobs: Jobs, tmp_path: Path) -> None:
    out = tmp_path / "cuda.txt"
    job = jobs.submit("--gres=gpu:2", "-c", "2", "--wrap", f"echo $CUDA_VISIBLE_DEVICES > {out}")
    jobs.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=20)
    assert jobs.state(job) == "COMPLETED"

    devices = out.read_text().strip().split(",")
    assert len(devices) == 2 and len(set(devices)) == 2, devices
    assert all(d.isdigit() and int(d) < node_gpus() for d in devices), devices

    # Accounting records arrive 1-2 s after the job ends.
    row = wait_until(
        lambda: (r := jobs.sacct_row(job)) and r["State"] == "COMPLETED" and r,
        timeout=20,
        what=f"sacct to record job {job} as COMPLETED",
    )
    tres = dict(item.split("=", 1) for item in row["AllocTRES"].split(","))
    assert tres.get("gres/gpu") == "2", row
    assert tres.get("cpu") == "2", row


def test_scontrol_requeue_reruns_the_batch_script(jobs: Jobs, tmp_path: Path) -> None:
    log = tmp_path / "restarts.txt"
    # First run waits to be requeued; the rerun (SLURM_RESTART_COUNT=1) finishes at once.
    script = f"""
echo "${{SLURM_RESTART_COUNT:-0}}" >> {log}
if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 60; fi
echo done >> {log}
"""
    job = jobs.submit(script=script)
    wait_until(lambda: read_lines(log) == ["0"], 15, "first run to start")

    sh("scontrol", "requeue", job)
    # A requeued job may start again only after AuthInfo=cred_expire (10 s) + 1 s.
    wait_until(lambda: "1" in read_lines(log), 25, "the requeued job to run again")
    jobs.wait_state(job, {"COMPLETED"}, timeout=10)
    assert read_lines(log) == ["0", "1", "done"]
    assert jobs.show(job)["Restarts"] == "1"


BATCH_TRAPS = """
f={log}
trap 'echo batch-USR1 >> $f; exit 0' USR1
trap 'echo batch-TERM >> $f; exit 0' TERM
echo ready >> $f
# `sleep & wait`: bash runs a trap only after a foreground command ends, but `wait` returns at once.
for i in $(seq 60); do sleep 1 & wait $!; done
echo batch-end >> $f
"""


@pytest.mark.parametrize(
    ("scancel_args", "expected"),
    [
        (["--signal=USR1", "--batch"], "batch-USR1"),  # only the batch shell
        (["--signal=TERM", "--full"], "batch-TERM"),  # batch shell and all its children
    ],
)
def test_scancel_signal_reaches_the_batch_shell(
    jobs: Jobs, tmp_path: Path, scancel_args: list[str], expected: str
) -> None:
    log = tmp_path / "signals.txt"
    job = jobs.submit(script=BATCH_TRAPS.format(log=log))
    wait_until(lambda: "ready" in read_lines(log), 15, "the batch script to set its traps")

    sh("scancel", *scancel_args, job)
    wait_until(lambda: expected in read_lines(log), 10, f"{expected} in {log}")
    jobs.wait_state(job, {"COMPLETED"}, timeout=10)  # the trap exits 0: signalled, not cancelled
    assert read_lines(log) == ["ready", expected]


def test_scancel_signal_without_flags_reaches_steps_not_the_batch_shell(
    jobs: Jobs, tmp_path: Path
) -> None:
    log = tmp_path / "signals.txt"
    step = tmp_path / "step.sh"
    step.write_text(f"""#!/bin/bash
trap 'echo step-USR1 >> {log}; exit 0' USR1
echo step-ready >> {log}
for i in $(seq 60); do sleep 1 & wait $!; done
echo step-end >> {log}
""")
    script = f"""
trap 'echo batch-USR1 >> {log}' USR1
srun -n1 bash {step}
echo batch-end >> {log}
"""
    job = jobs.submit(script=script)
    wait_until(lambda: "step-ready" in read_lines(log), 15, "the srun step to set its trap")

    sh("scancel", "--signal=USR1", job)
    jobs.wait_state(job, {"COMPLETED"}, timeout=15)
    assert read_lines(log) == ["step-ready", "step-USR1", "batch-end"]


def test_second_partition_gpu_accepts_jobs(jobs: Jobs, tmp_path: Path) -> None:
    out = tmp_path / "partition.txt"
    job = jobs.submit(
        "-p",
        "gpu",
        "--gres=gpu:1",
        "--wrap",
        f"echo $SLURM_JOB_PARTITION $CUDA_VISIBLE_DEVICES > {out}",
    )
    jobs.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=20)
    assert jobs.state(job) == "COMPLETED"
    partition, device = out.read_text().split()
    assert partition == "gpu" and device.isdigit()
    assert jobs.show(job)["Partition"] == "gpu"


def test_qos_high_preempts_and_requeues_a_normal_job(jobs: Jobs, tmp_path: Path) -> None:
    """Opt-in preemption: a --qos=high job takes the GPUs of a running normal job, which gets
    its --signal at once (preempt_send_user_signal), GraceTime 10 s, and is requeued."""
    log = tmp_path / "victim.txt"
    victim = jobs.submit(
        f"--gres=gpu:{node_gpus()}",  # all GPUs, so that the preemptor needs the victim's
        # Time-limit signal due 30 s before the 5-min limit (>= 210 s from now even with Slurm's
        # up-to-60-s-early resolution), so a USR1 within the test can only come from preemption.
        "--signal=B:USR1@30",
        script=f"""
trap 'echo "USR1 restart=${{SLURM_RESTART_COUNT:-0}}" >> {log}' USR1
echo "start restart=${{SLURM_RESTART_COUNT:-0}}" >> {log}
for i in $(seq 120); do sleep 1 & wait $!; done
""",
    )
    wait_until(lambda: "start restart=0" in read_lines(log), 15, "the victim to start")
    hi = jobs.submit("--qos=high", "--gres=gpu:1", "--wrap", "true")

    wait_until(lambda: "USR1 restart=0" in read_lines(log), 15, "the preemption signal")
    jobs.wait_state(hi, {"COMPLETED"}, timeout=30)
    wait_until(lambda: jobs.show(victim).get("Restarts") == "1", 5, "victim requeued")
    assert jobs.state(victim) in {"PENDING", "RUNNING"}  # requeued, not cancelled
