"""The whole pipeline through sbatch on the local SLURM cluster, with the project's SLURM profile.

    .venv/bin/pytest tests/slurm/test_pipeline_slurm.py -q     # ~5 min on 2 cores

Both tests run the smoke pipeline through ``tests/slurm/pipeline_runs.py`` (the profile, one
test-only knob, a hard timeout; whatever a test leaves queued or running in its working
directory is cancelled at teardown). ``scontrol requeue`` of a running training job, and a
node failure, are tested on two nodes (``test_multinode_slurm.py``).

* ``test_smoke_pipeline_on_slurm``: every rule except ``all`` is one COMPLETED SLURM job
  (sacct), with the GPUs, CPUs, memory and partition that the pipeline config asks for;
  all outputs exist; the MLflow parent and child runs exist and point at the SLURM jobs.
* ``test_stop_signal_saves_the_signal_step_and_the_job_requeues_itself``: SIGUSR1 to the
  running Stage-I job's steps; the rank saves at the signal step, exits 75, the launcher
  requeues its own job, and the rerun resumes from that step.
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


STAGE1_EPOCHS = 60  # 360 steps (6 per epoch): ~30 s of Stage-I training, long enough to interrupt


def test_stop_signal_saves_the_signal_step_and_the_job_requeues_itself(
    pipeline: Callable[..., PipelineRun],
) -> None:
    """``scancel --signal=USR1`` of the running Stage-I job: what SLURM sends to the job's
    steps at ``--signal=USR1@180`` and, with ``preempt_send_user_signal``, at preemption.
    Periodic checkpoints only every 100 steps, so the signal step's state is told apart from
    them: the rank saves at the signal step and exits 75, the launcher requeues its own job
    (same job id, Restarts=1), and the rerun resumes from the signal step."""
    config = [
        "--config",
        "preset=smoke",
        f"stage1={{epochs: {STAGE1_EPOCHS}}}",
        "train={checkpoint_every_steps: 100}",
    ]
    run = pipeline(
        *config, timeout=480, prepare=lambda workdir: build_inputs_locally(workdir, *config)
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
