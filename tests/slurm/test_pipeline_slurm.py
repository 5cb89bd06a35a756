"""The whole pipeline through sbatch on the local SLURM cluster, with the project's SLURM profile.

    .venv/bin/pytest tests/slurm/test_pipeline_slurm.py -q     # ~5-6 min on 2 cores

Both tests run ``snakemake -s <repo>/Snakefile --profile <repo>/cluster/slurm --config
preset=smoke`` from a temporary working directory. Test-only knobs, not in the profile:
``--slurm-init-seconds-before-status-checks 2`` (the default 40 s per wave of jobs would make
a run take many minutes). Every snakemake run is under ``timeout -s KILL``; whatever a test
leaves queued or running in its working directory is cancelled at teardown.

* ``test_smoke_pipeline_on_slurm``: every rule except ``all`` is one COMPLETED SLURM job
  (sacct), with the GPUs, CPUs, memory and partition that the pipeline config asks for;
  all outputs exist; the MLflow parent and child runs exist and point at the SLURM jobs.
* ``test_requeued_stage1_resumes_from_its_checkpoint``: Stage-I is made long enough to
  interrupt, and its job is requeued (``scontrol requeue``, what SLURM does to a preempted
  job with ``--requeue``) once it has written a checkpoint. SLURM reruns the same job id;
  Snakemake keeps waiting; the training resumes from the checkpoint (not step 0) and
  continues the same MLflow run (attempt 2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import merge_with_preset
from tests.helpers import SMOKE_OUTPUTS, clean_env, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "Snakefile"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PROFILE = ROOT / "cluster" / "slurm"
TEST_KNOBS = ["--slurm-init-seconds-before-status-checks", "2"]
CMD_TIMEOUT_S = 30

# (rule, wildcard value) of every job the plugin submits; `all` has no shell and
# `write_run_config` is a local rule (the workflow writes the config it holds): both run locally.
REMOTE_JOBS = Counter(
    [
        ("make_twin", None),
        ("validate_data", None),
        ("build_shards", "train"),
        ("build_shards", "test"),
        ("mlflow_parent", None),
        ("train_stage", "1"),
        ("train_stage", "2"),
        ("train_attribute_classifier", None),
        ("evaluate", "1"),
        ("evaluate", "2"),
        ("summarize", None),
    ]
)
GPU_RULES = {"train_stage:1", "train_stage:2", "evaluate"}
EVAL_CPUS = 2  # e2e override of resources.evaluate.cpus_per_task (smoke.yaml has 1)


def mem_in_mb(value: str) -> int:
    """sacct's AllocTRES memory (``2000M``, ``4G``) in MB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])", value)
    assert m, value
    return round(float(m.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)])


def expected_allocations(eval_cpus: int) -> dict[str, tuple[int, int, int]]:
    """{rule (or rule:stage for training): (CPUs, memory MB, GPUs)} that SLURM should
    allocate: from the smoke preset's
    resources section (with resources.evaluate.cpus_per_task = ``eval_cpus``), else the
    profile's default-resources; CPUs from cpus_per_task, else the rule's threads."""
    res = merge_with_preset({"preset": "smoke"})["resources"]
    profile = yaml.safe_load((PROFILE / "config.v8+.yaml").read_text())
    default_mem = profile["default-resources"]["mem_mb"]
    pre, ev = res["preprocess"], {**res["evaluate"], "cpus_per_task": eval_cpus}
    out = {
        "make_twin": (pre["cpus"], pre["mem_mb"], 0),  # threads
        "validate_data": (1, pre["mem_mb"], 0),
        "build_shards": (pre["cpus"], pre["mem_mb"], 0),  # threads
        "train_attribute_classifier": (ev["cpus_per_task"], ev["mem_mb"], 0),  # threads
        "evaluate": (ev["cpus_per_task"], ev["mem_mb"], ev["gpus"]),
        **{r: (1, default_mem, 0) for r in ("mlflow_parent", "summarize")},
    }
    for stage in (1, 2):
        t = res[f"train_stage{stage}"]
        out[f"train_stage:{stage}"] = (t["cpus_per_task"], t["mem_mb"], t["gpus"])
    assert all(out[r][2] >= 1 for r in GPU_RULES), "the smoke preset must request (fake) GPUs"
    return out


# --------------------------------------------------------------------------- helpers


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

    def __init__(self, workdir: Path, *args: str, timeout: int) -> None:
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
                env=clean_env(),
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


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Callable[..., PipelineRun]]:
    runs: list[PipelineRun] = []

    def start(*args: str, timeout: int) -> PipelineRun:
        workdir = tmp_path / f"run{len(runs)}"
        workdir.mkdir()
        runs.append(PipelineRun(workdir, *args, timeout=timeout))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


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


# --------------------------------------------------------------------------- tests


def test_smoke_pipeline_on_slurm(pipeline: Callable[..., PipelineRun]) -> None:
    # Evaluation asks for 2 CPUs here, so that CPU requests are checked with a value other
    # than the default 1 (cpus_per_task on `evaluate`, threads on the attribute classifier).
    run = pipeline(
        "--config",
        "preset=smoke",
        f"resources={{evaluate: {{cpus_per_task: {EVAL_CPUS}}}}}",
        timeout=420,
    )
    rc = run.wait()
    assert rc == 0, run.tail()
    out = run.output()
    assert "17 of 17 steps (100%) done" in out, run.tail()
    assert re.search(r"^localrule all:$", out, re.M), "`all` has no shell and runs locally"
    assert len(re.findall(r"^localrule write_run_config:$", out, re.M)) == 2, run.tail()
    assert re.search(r"^localrule mlflow_parent_params:$", out, re.M), run.tail()

    # (a) sacct: one COMPLETED job per remote rule instance, no retries.
    rows = sacct_jobs(run.run_uuid(), run.started)
    got = Counter((r["rule"], r["wildcard"]) for r in rows)
    assert got == REMOTE_JOBS, f"extra: {got - REMOTE_JOBS}, missing: {REMOTE_JOBS - got}"
    assert [r for r in rows if r["State"] != "COMPLETED"] == [], rows
    submitted = run.submitted()
    assert sorted(j for ids in submitted.values() for j in ids) == sorted(
        r["JobIDRaw"] for r in rows
    )

    expected = expected_allocations(eval_cpus=EVAL_CPUS)
    for r in rows:
        rule, tres = r["rule"], r["tres"]
        if rule == "train_stage":
            rule = f"train_stage:{r['wildcard']}"
        where = f"{rule} {r['wildcard'] or ''} job {r['JobIDRaw']}: {r['AllocTRES']}"
        cpus, mem_mb, gpus = expected[rule]
        assert tres.get("gres/gpu") == (str(gpus) if gpus else None), where
        assert tres.get("cpu") == str(cpus), where
        assert mem_in_mb(tres.get("mem", "")) == mem_mb, where
        assert tres.get("node") == "1", where
        assert r["Partition"] == "debug", where  # the cluster's default partition

    # (b) outputs.
    assert_outputs(run.workdir)
    metrics = json.loads((run.workdir / "results/smoke/stage1/metrics.json").read_text())
    assert metrics["resumed_from"] is None, metrics

    # (c) MLflow: parent + 4 children, finished; training runs know their SLURM job.
    _, parent, children = mlflow_runs(run.workdir)
    assert parent.info.status == "FINISHED"
    assert "stage2.cond_body_accuracy" in parent.data.metrics
    assert all(c.info.status == "FINISHED" for c in children.values())
    for stage in (1, 2):
        tags = children[f"stage{stage}"].data.tags
        assert tags.get("slurm.job_id") == submitted[f"train_stage:{stage}"][0], tags
        assert tags.get("slurm.partition") == "debug", tags
        assert tags.get("stackgan.attempt") == "1", tags


STAGE1_EPOCHS = 60  # 360 steps (6 per epoch): ~30 s of Stage-I training, long enough to interrupt


def test_requeued_stage1_resumes_from_its_checkpoint(pipeline: Callable[..., PipelineRun]) -> None:
    run = pipeline("--config", "preset=smoke", f"stage1={{epochs: {STAGE1_EPOCHS}}}", timeout=480)

    def stage1_job() -> str | None:
        assert run.alive(), f"snakemake ended before Stage-I was submitted:\n{run.tail()}"
        return (run.submitted().get("train_stage:1") or [None])[0]

    job = wait_until(stage1_job, 300, "train_stage1 to be submitted")

    def running_with_checkpoint() -> int | None:
        assert run.alive(), f"snakemake ended during Stage-I:\n{run.tail()}"
        state = re.search(r"\bJobState=(\S+)", sh("scontrol", "show", "job", "-o", job))
        steps = checkpoint_steps(run.workdir)
        # A checkpoint beyond step 2, so that resuming from it is distinguishable from a restart.
        return (
            steps[-1]
            if state and state.group(1) == "RUNNING" and steps and steps[-1] >= 4
            else None
        )

    step_at_requeue = wait_until(
        running_with_checkpoint, 180, "Stage-I running with a checkpoint", 0.2
    )
    total_steps = STAGE1_EPOCHS * 6
    assert step_at_requeue < total_steps - 60, "Stage-I nearly finished before the requeue"
    sh("scontrol", "requeue", job)  # like a preemption under PreemptMode=REQUEUE

    rc = run.wait()
    assert rc == 0, run.tail()
    assert_outputs(run.workdir)

    # SLURM reran the same job (no resubmission by Snakemake).
    assert run.submitted()["train_stage:1"] == [job], run.submitted()
    history = [
        r
        for r in sacct_jobs(run.run_uuid(), run.started, duplicates=True)
        if (r["rule"], r["wildcard"]) == ("train_stage", "1")
    ]
    assert {r["JobIDRaw"] for r in history} == {job}, history
    assert [r["State"] for r in history] == ["REQUEUED", "COMPLETED"], history
    assert re.search(r"\bRestarts=1\b", sh("scontrol", "show", "job", "-o", job))

    # The training resumed from its checkpoint, not from step 0.
    metrics = json.loads((run.workdir / "results/smoke/stage1/metrics.json").read_text())
    resumed = metrics["resumed_from"]
    assert resumed is not None and step_at_requeue <= resumed < total_steps, (
        step_at_requeue,
        metrics,
    )
    assert metrics["steps"] == total_steps, metrics
    log = (run.workdir / "results/smoke/logs/train_stage1.log").read_text()
    m = re.search(r"resumed from \S*training-state-0*(\d+)\.pt at step (\d+)", log)
    assert m and int(m.group(1)) == int(m.group(2)) == resumed, log[:2000]
    assert "starting at step 0" not in log

    # One Stage-I MLflow run, continued by the rerun (attempt 2), with metrics from both attempts.
    client, parent, children = mlflow_runs(run.workdir)
    stage1 = children["stage1"]
    assert stage1.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert int(stage1.data.tags["stackgan.attempt"]) >= 2, stage1.data.tags
    assert stage1.data.tags.get("slurm.job_id") == job
    assert stage1.info.run_id == metrics["mlflow_run_id"]
    steps = sorted({h.step for h in client.get_metric_history(stage1.info.run_id, "loss_d")})
    assert steps[0] <= step_at_requeue and steps[-1] == total_steps, steps
    assert any(s > resumed for s in steps), steps
    assert children["stage2"].data.tags.get("stackgan.attempt") == "1"


def test_stop_signal_saves_the_signal_step_and_the_job_requeues_itself(
    pipeline: Callable[..., PipelineRun],
) -> None:
    """``scancel --signal=USR1`` of the running Stage-I job: what SLURM sends to the job's
    steps at ``--signal=USR1@180`` and, with ``preempt_send_user_signal``, at preemption.
    Periodic checkpoints only every 100 steps, so the signal step's state is told apart from
    them: the rank saves at the signal step and exits 75, the launcher requeues its own job
    (same job id, Restarts=1), and the rerun resumes from the signal step."""
    run = pipeline(
        "--config",
        "preset=smoke",
        f"stage1={{epochs: {STAGE1_EPOCHS}}}",
        "train={checkpoint_every_steps: 100}",
        timeout=480,
    )
    log = run.workdir / "results/smoke/logs/train_stage1.log"

    def stage1_past_step_130() -> tuple[str, int] | None:
        assert run.alive(), f"snakemake ended during Stage-I:\n{run.tail()}"
        job = (run.submitted().get("train_stage:1") or [None])[0]
        steps = re.findall(r"step (\d+)/", log.read_text()) if log.is_file() else []
        return (job, int(steps[-1])) if job and steps and int(steps[-1]) >= 130 else None

    job, step = wait_until(stage1_past_step_130, 300, "Stage-I past step 130", 0.2)
    assert step < STAGE1_EPOCHS * 6 - 60, "Stage-I nearly finished before the signal"
    sh("scancel", "--signal=USR1", job)

    rc = run.wait()
    assert rc == 0, run.tail()
    assert_outputs(run.workdir)
    assert run.submitted()["train_stage:1"] == [job], run.submitted()  # not resubmitted
    assert re.search(r"\bRestarts=1\b", sh("scontrol", "show", "job", "-o", job))
    history = [
        r
        for r in sacct_jobs(run.run_uuid(), run.started, duplicates=True)
        if (r["rule"], r["wildcard"]) == ("train_stage", "1")
    ]
    assert [r["State"] for r in history] == ["REQUEUED", "COMPLETED"], history
    # The rerun resumed from the state saved at the signal (the next step boundary after
    # it), not from the periodic one at step 100 (the signal step's own log line went with
    # the first attempt's log, which SLURM and Snakemake start afresh on a rerun).
    metrics = json.loads((run.workdir / "results/smoke/stage1/metrics.json").read_text())
    resumed = metrics["resumed_from"]
    assert resumed is not None and step <= resumed < step + 40 and resumed % 100, (step, metrics)
    assert metrics["steps"] == STAGE1_EPOCHS * 6
