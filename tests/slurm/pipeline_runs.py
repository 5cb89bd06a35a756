"""Snakemake pipeline runs on the local SLURM cluster, and what sacct, the logs and MLflow say
about them (shared by the SLURM pipeline tests).

Every snakemake run is ``snakemake -s <repo>/Snakefile --profile <repo>/cluster/slurm`` from a
temporary working directory, under ``timeout -s KILL``, with one test-only knob not in the
profile: ``--slurm-init-seconds-before-status-checks 2`` (the default 40 s per wave of jobs
would make a run take many minutes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.helpers import SMOKE_OUTPUTS, clean_env

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "Snakefile"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PROFILE = ROOT / "cluster" / "slurm"
TEST_KNOBS = ["--slurm-init-seconds-before-status-checks", "2"]
CMD_TIMEOUT_S = 30


def training_outputs(*stages: int) -> list[str]:
    """The declared outputs of the smoke run's training rule for ``stages`` (as targets)."""
    names = ("network-final.pt", "metrics.json", "loss_curves.png", "samples.png")
    return [f"results/smoke/stage{s}/{name}" for s in stages for name in names]


def sh(*args: str, timeout: float = CMD_TIMEOUT_S, check: bool = True) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


class PipelineRun:
    """``snakemake --profile cluster/slurm`` in the background, output in
    ``<workdir>/snakemake.log``.
    """

    def __init__(
        self, workdir: Path, *args: str, timeout: int, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.log = workdir / "snakemake.log"
        self.started = datetime.now()
        cmd = [
            "timeout",
            "-s",
            "KILL",
            str(timeout),
            str(SNAKEMAKE),
            "-s",
            str(SNAKEFILE),
            "--profile",
            str(PROFILE),
            *TEST_KNOBS,
            *args,
        ]
        self.timeout = timeout
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env={**clean_env(), **(env or {})},
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def wait(self) -> int:
        try:
            rc = self.proc.wait(timeout=self.timeout + 30)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"snakemake did not end:\n{self.tail()}") from None
        assert rc not in (-9, 137), f"snakemake killed after {self.timeout} s:\n{self.tail()}"
        return rc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run_uuid(self) -> str:
        m = re.search(r"^SLURM run ID: ([0-9a-f-]{36})$", self.output(), re.M)
        assert m, f"no SLURM run ID in the log:\n{self.tail()}"
        return m.group(1)

    def submitted(self) -> dict[str, list[str]]:
        """{rule or rule:wildcard: [SLURM job ids]} from the "has been submitted" lines (the
        plugin logs to ``slurm_logs/rule_<rule>[/<wildcards>]/<jobid>.log``)."""
        out: dict[str, list[str]] = {}
        for m in re.finditer(
            r"has been submitted with SLURM jobid (\d+) "
            r"\(log: \S*/rule_(\w+)/(?:([^/\s]+)/)?\d+\.log\)",
            self.output(),
        ):
            key = m.group(2) if m.group(3) is None else f"{m.group(2)}:{m.group(3)}"
            out.setdefault(key, []).append(m.group(1))
        return out

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # Jobs of this working directory still queued or running.
        listing = sh("squeue", "-h", "-o", "%i|%Z", check=False)
        ids = [
            jid
            for jid, _, wd in (line.partition("|") for line in listing.splitlines())
            if Path(wd.strip()) == self.workdir
        ]
        if ids:
            sh("scancel", *ids, check=False)
        # The local cluster tracks job processes by their process tree (proctrack/linuxproc,
        # no cgroups here): a job process whose parent died first, as when a test kills a
        # node's ranks, is reparented to init and outlives its job (seen: an idle Snakemake
        # job step). Whatever still runs in this working directory is such a process.
        kill_processes_in(self.workdir)


def kill_processes_in(workdir: Path) -> int:
    """SIGKILL every process other than this one whose working directory is ``workdir`` or
    below it; returns how many."""
    import psutil

    killed = 0
    for proc in psutil.process_iter(["pid", "cwd"]):
        cwd = proc.info.get("cwd")
        if proc.info["pid"] != os.getpid() and cwd and Path(cwd).is_relative_to(workdir):
            try:
                proc.kill()
                killed += 1
            except psutil.NoSuchProcess:
                pass
    return killed


SACCT_FIELDS = ["JobIDRaw", "JobName", "State", "AllocTRES", "Partition", "Comment", "SubmitLine"]


def sacct_jobs(run_uuid: str, since: datetime, duplicates: bool = False) -> list[dict[str, Any]]:
    """The allocation rows of this Snakemake run (job name = run uuid), with the rule parsed
    from the plugin's ``--comment rule_<rule>[_wildcards_<value>]``. The Comment column stays
    empty unless slurmdbd stores comments (AccountingStoreFlags=job_comment), so the comment
    is taken from the recorded submit line."""
    out = sh(
        "sacct",
        "-X",
        "-P",
        "-n",
        *(["-D"] if duplicates else []),
        "--name",
        run_uuid,
        "--starttime",
        (since - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S"),
        f"--format={','.join(SACCT_FIELDS)}",
    )
    rows = []
    for line in out.splitlines():
        row = dict(zip(SACCT_FIELDS, line.split("|", len(SACCT_FIELDS) - 1), strict=True))
        submitted = re.search(r"--comment (\S+)", row["SubmitLine"])
        comment = row["Comment"] or (submitted.group(1) if submitted else "")
        m = re.fullmatch(r"rule_(?P<rule>\w+?)(?:_wildcards_(?P<wc>\S+))?", comment)
        assert m, f"job {row['JobIDRaw']} has no rule comment: {row}"
        row["rule"], row["wildcard"] = m.group("rule"), m.group("wc")
        row["tres"] = dict(item.split("=", 1) for item in row["AllocTRES"].split(",") if item)
        rows.append(row)
    return rows


def mlflow_runs(workdir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(client, parent run, {child run name: run}) of the smoke run's sqlite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results/mlflow.db'}")
    exp = client.get_experiment_by_name("stackgan-smoke")
    assert exp is not None
    parents = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'pipeline'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    pid = parents[0].info.run_id
    assert (workdir / "results/smoke/mlflow/parent_run_id.txt").read_text().strip() == pid
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{pid}'"
    )
    names = [c.info.run_name for c in children]
    assert sorted(names) == ["eval-stage1", "eval-stage2", "stage1", "stage2"], names
    all_runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(all_runs) == 5, [r.info.run_name for r in all_runs]  # nothing duplicated
    return client, parents[0], {c.info.run_name: c for c in children}


def assert_outputs(workdir: Path) -> None:
    missing = [p for p in SMOKE_OUTPUTS if not (workdir / p).is_file()]
    assert not missing, missing
    assert not [p for p in SMOKE_OUTPUTS if (workdir / p).stat().st_size == 0]


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(
        int(m.group(1))
        for p in (workdir / "results/smoke/work/stage1").glob("training-state-*.pt")
        if (m := re.fullmatch(r"training-state-(\d+)\.pt", p.name))
    )


def build_inputs_locally(workdir: Path, *args: str) -> None:
    """Run everything upstream of training (data, classifier, MLflow parent run) in
    ``workdir`` with the local executor; ``args`` are the targets and ``--config`` of the
    SLURM run that follows. For tests about training: a SLURM job per data rule adds about
    a minute of scheduling, and test_smoke_pipeline_on_slurm runs those rules on SLURM."""
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--cores", "2", "--omit-from", "train_stage"]
    proc = subprocess.run(
        [*cmd, *args], cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
