"""The whole pipeline through sbatch on the local SLURM cluster, with the project's SLURM profile.

    .venv/bin/pytest tests/slurm/test_pipeline_slurm.py -q     # ~5 min on 2 cores

Both tests run the smoke pipeline through ``tests/slurm/pipeline_runs.py`` (the profile, one
test-only knob, a hard timeout; whatever a test leaves queued or running in its working
directory is cancelled at teardown). ``scontrol requeue`` of a running training job, and a
node failure, are tested on two nodes (``test_multinode_slurm.py``).

* ``test_smoke_pipeline_on_slurm``: every rule except ``all`` is one COMPLETED SLURM job
  (sacct), with the GPUs, CPUs, memory and partition that the pipeline config asks for;
  all outputs exist; the MLflow parent and child runs exist and point at the SLURM jobs.
* ``test_time_limit_and_sigterm_to_every_process_save_the_signal_step``: Stage-I stopped
  by the launcher before its time limit (it requeues itself), then by SIGTERM to every
  process of the job and a requeue; each rerun resumes from the state saved at the stop.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable

import pytest
import yaml

from pipeline.settings import merge_with_preset
from tests.helpers import wait_until
from tests.slurm.pipeline_runs import (
    PROFILE,
    PipelineRun,
    assert_outputs,
    build_inputs_locally,
    mlflow_runs,
    sacct_jobs,
    sh,
    training_outputs,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


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


STAGE1_EPOCHS = 200  # 1200 steps (6 per epoch): the first stop comes ~20 s into training
STAGE1_OUTPUTS = training_outputs(1)


def test_time_limit_and_sigterm_to_every_process_save_the_signal_step(
    pipeline: Callable[..., PipelineRun],
) -> None:
    """Stage-I on one node, without periodic checkpoints (so every resume is from a state
    saved at a stop signal), through its two stops:

    1. the time limit: the job has 3 minutes and ``stop_before_limit_s: 145``, so the
       launcher sends SIGUSR1 about 35 s into the job; the rank saves at that step and exits
       75, and the launcher requeues its own job (same id). Before the rerun starts, the test
       extends the time limit to 10 minutes (the rerun's launcher reads it again);
    2. ``scancel --signal=TERM --full`` (SIGTERM to every process of the job: batch shell,
       Snakemake, launcher, rank, loader workers, as at preemption or the time limit) and at
       once ``scontrol requeue``: the rank saves at that step, the rerun resumes from it.
    """
    config = [
        "--config",
        "preset=smoke",
        f"stage1={{epochs: {STAGE1_EPOCHS}}}",
        "train={checkpoint_every_steps: 0}",
        "resources={train_stage1: {runtime: 3, stop_before_limit_s: 145}}",
    ]
    run = pipeline(
        *STAGE1_OUTPUTS,
        *config,
        timeout=480,
        prepare=lambda workdir: build_inputs_locally(workdir, *STAGE1_OUTPUTS, *config),
    )
    log = run.workdir / "results/smoke/logs/train_stage1.log"
    total = STAGE1_EPOCHS * 6

    def log_has(pattern: str) -> re.Match | None:
        assert run.alive(), f"snakemake ended during Stage-I:\n{run.tail()}"
        return re.search(pattern, log.read_text()) if log.is_file() else None

    def saved() -> re.Match | None:
        return log_has(r"stop signal received: saved state at step (\d+); exiting with code 75")

    # 1. The launcher's stop before the time limit; the job requeues itself.
    armed_at = r"launch: job (\d+) has (\d+) s left: the training is asked to stop 145 s before"
    armed = wait_until(lambda: log_has(armed_at), 240, "the launcher to arm its stop timer")
    job = armed.group(1)
    assert run.submitted()["train_stage:1"] == [job], run.submitted()
    assert 145 < int(armed.group(2)) <= 180, armed.group(0)
    step1 = int(wait_until(saved, 120, "the stop before the time limit", 0.1).group(1))
    assert 0 < step1 < total - 60, step1
    wait_until(lambda: log_has(rf"requeued SLURM job {job} to resume"), 30, "the self-requeue")
    sh("scontrol", "update", f"JobId={job}", "TimeLimit=10")

    # 2. The rerun (10 minutes left) resumes from step1; 150 steps before the end (so that
    # the third run is short), SIGTERM to all of its processes, then a requeue.
    wait_until(lambda: log_has(rf"resumed from \S+ at step {step1}\n"), 240, "the rerun", 0.1)
    rearmed = log_has(r"launch: job \d+ has (\d+) s left")
    assert rearmed and int(rearmed.group(1)) > 500, log.read_text()[:3000]

    def steps_done() -> int:
        done = re.findall(rf"step (\d+)/{total}", log.read_text())
        return int(done[-1]) if done else 0

    wait_until(
        lambda: steps_done() >= max(step1 + 20, total - 150), 300, "150 steps before the end", 0.1
    )
    sh("scancel", "--signal=TERM", "--full", job)
    sh("scontrol", "requeue", job)
    step2 = int(wait_until(saved, 30, "the state saved at the SIGTERM", 0.05).group(1))
    assert step1 + 20 <= step2 < total, (step1, step2)

    rc = run.wait()
    assert rc == 0, run.tail()
    assert all((run.workdir / p).stat().st_size > 0 for p in STAGE1_OUTPUTS)
    assert run.submitted()["train_stage:1"] == [job], run.submitted()  # never resubmitted
    assert re.search(r"\bRestarts=2\b", sh("scontrol", "show", "job", "-o", job))
    history = [
        r
        for r in sacct_jobs(run.run_uuid(), run.started, duplicates=True)
        if (r["rule"], r["wildcard"]) == ("train_stage", "1")
    ]
    assert [r["State"] for r in history] == ["REQUEUED", "REQUEUED", "COMPLETED"], history
    # The last run resumed from the state saved at the SIGTERM (there are no others).
    metrics = json.loads((run.workdir / "results/smoke/stage1/metrics.json").read_text())
    assert metrics["resumed_from"] == step2 and metrics["steps"] == total, (step2, metrics)
    assert "resumed from" in log.read_text() and "stop signal received" not in log.read_text()
