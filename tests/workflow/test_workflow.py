"""The Snakemake workflow, run locally: dry runs, lint, configuration errors, a full smoke run.

    .venv/bin/pytest tests/workflow -q          # about a minute and a half on 2 cores

Every snakemake call is a real command line (``.venv/bin/snakemake -s <repo>/Snakefile``) run
from a temporary working directory under ``timeout -s KILL``, so a hang fails the test.
The full smoke run (``--profile cluster/local --config preset=smoke``) is made once per module
and shared by the MLflow, report and rerun tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import merge_with_preset
from stackgan.tracking.links import compare_url, experiment_url, run_url
from tests.browser import (
    click_text,
    headless_chromium,
    require_browser,
    screenshot,
    scroll_to_text,
    wait_for_text,
    wait_js,
)
from tests.helpers import SMOKE_DATA, SMOKE_OUTPUTS, TRAIN_METRICS, clean_env, preset_data_dir
from tests.mlflow_server import mlflow_server, rest

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "Snakefile"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
LOCAL_PROFILE = ROOT / "cluster" / "local"
SLURM_PROFILE = ROOT / "cluster" / "slurm"
PRESETS = ROOT / "pipeline" / "config" / "presets"

DRY_TIMEOUT_S = 90
RUN_TIMEOUT_S = 360  # the smoke run takes ~40 s on 2 idle cores

# Jobs of the twin presets (demo, smoke) and of the paper preset (real CUB: no twin, no
# attribute classifier, no conditional accuracy).
TWIN_JOBS = {
    "make_twin": 1,
    "validate_data": 1,
    "build_shards": 2,
    "mlflow_parent": 1,
    "write_data_config": 1,
    "write_pipeline_config": 1,
    "mlflow_parent_params": 1,
    "write_run_config": 2,
    "train_stage": 2,
    "train_attribute_classifier": 1,
    "evaluate": 2,
    "summarize": 1,
    "all": 1,
}
PAPER_JOBS = {
    k: v for k, v in TWIN_JOBS.items() if k not in ("make_twin", "train_attribute_classifier")
}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- helpers


def snakemake(cwd: Path, *args: str, timeout: int = DRY_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``snakemake -s <repo>/Snakefile ARGS`` in ``cwd``, killed after ``timeout`` seconds."""
    cmd = ["timeout", "-s", "KILL", str(timeout), str(SNAKEMAKE), "-s", str(SNAKEFILE), *args]
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    assert proc.returncode not in (-9, 137), f"snakemake killed after {timeout} s:\n{tail(proc)}"
    return proc


def tail(proc: subprocess.CompletedProcess, n: int = 60) -> str:
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-n:])


def job_stats(output: str) -> dict[str, int]:
    """The first "Job stats:" table of a snakemake run as {rule: count} (without the total)."""
    lines = output.splitlines()
    start = lines.index("Job stats:")
    assert lines[start + 1].split() == ["job", "count"], lines[start : start + 3]
    stats: dict[str, int] = {}
    for line in lines[start + 3 :]:
        name, count = line.split()
        if name == "total":
            assert int(count) == sum(stats.values()), output
            return stats
        stats[name] = int(count)
    raise AssertionError(f"no total row in the job stats:\n{output}")


def parse_items(text: str) -> dict[str, str]:
    """``a=1, b=x y, c='z'`` -> {'a': '1', 'b': 'x y', 'c': "'z'"} (as Snakemake prints them)."""
    out = {}
    for item in text.split(", "):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def dry_run_jobs(output: str) -> list[dict[str, Any]]:
    """The job blocks of a dry run: rule, wildcards, threads, resources, shell command."""
    jobs: list[dict[str, Any]] = []
    job: dict[str, Any] | None = None
    for line in output.splitlines():
        m = re.match(r"^(local)?rule (\w+):$", line)
        if m:
            job = {"rule": m.group(2), "wildcards": {}, "resources": {}, "shell": None}
            jobs.append(job)
            continue
        if job is None:
            continue
        s = line.strip()
        if s.startswith("wildcards: "):
            job["wildcards"] = parse_items(s[len("wildcards: ") :])
        elif s.startswith("resources: "):
            job["resources"] = parse_items(s[len("resources: ") :])
        elif line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: ") :]
    return jobs


def the_job(jobs: list[dict[str, Any]], rule: str, **wildcards: str) -> dict[str, Any]:
    found = [
        j
        for j in jobs
        if j["rule"] == rule and all(j["wildcards"].get(k) == v for k, v in wildcards.items())
    ]
    assert len(found) == 1, f"{len(found)} jobs of {rule} {wildcards}: {[j['rule'] for j in jobs]}"
    return found[0]


def fake_cub(root: Path, missing: str | None = None) -> Path:
    """The files the pipeline checks when parsing (contents are irrelevant to a dry run)."""
    cub = root / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    for name in ("images.txt", "bounding_boxes.txt"):
        (cub / name).write_text("")
    for split in ("train", "test"):
        (root / split).mkdir()
        for name in ("filenames", "class_info", "char-CNN-RNN-embeddings"):
            (root / split / f"{name}.pickle").write_bytes(b"")
    if missing:
        (root / missing).unlink()
    return root


def load_preset(name: str) -> dict[str, Any]:
    """A preset as the workflow sees it: base.yaml with the preset's overlay merged on top."""
    return merge_with_preset({"preset": name})


# --------------------------------------------------------------------------- dry runs, lint


@pytest.mark.parametrize(
    ("args", "run"),
    [([], "demo"), (["--config", "preset=smoke"], "smoke")],
    ids=["default-demo", "smoke"],
)
def test_dry_run_lists_the_expected_jobs(tmp_path: Path, args: list[str], run: str) -> None:
    proc = snakemake(tmp_path, "-n", "--profile", str(LOCAL_PROFILE), *args)
    assert proc.returncode == 0, tail(proc)
    assert job_stats(proc.output) == TWIN_JOBS
    jobs = dry_run_jobs(proc.output)
    assert sorted(j["wildcards"].get("split") for j in jobs if j["rule"] == "build_shards") == [
        "test",
        "train",
    ]
    assert sorted(j["wildcards"].get("stage") for j in jobs if j["rule"] == "evaluate") == [
        "1",
        "2",
    ]
    assert "--run-name stage1" in the_job(jobs, "train_stage", stage="1")["shell"]
    assert (
        f"results/{run}/stage1/network-final.pt" in the_job(jobs, "train_stage", stage="1")["shell"]
    )
    assert not (tmp_path / "results").exists(), "a dry run must not write outputs"


def test_lint_is_clean(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "--lint")
    assert proc.returncode == 0, tail(proc)
    assert "Congratulations, your workflow is in a good condition!" in proc.output


def paper_dry_run(tmp_path: Path, *config: str) -> subprocess.CompletedProcess:
    """``snakemake -n`` of the paper preset under the SLURM profile on a fake CUB tree,
    with extra ``--config`` values."""
    birds = fake_cub(tmp_path / "birds")
    work = tmp_path / "work"
    work.mkdir()
    return snakemake(
        work,
        "-n",
        "--profile",
        str(SLURM_PROFILE),
        "--config",
        "preset=paper",
        f"data={{root: {birds}}}",
        *config,
    )


def test_paper_dry_run_on_a_fake_cub_tree(tmp_path: Path) -> None:
    proc = paper_dry_run(tmp_path)
    birds = tmp_path / "birds"
    cub = preset_data_dir("paper", data={"root": str(birds)})
    assert proc.returncode == 0, tail(proc)
    assert job_stats(proc.output) == PAPER_JOBS
    jobs = dry_run_jobs(proc.output)
    res = load_preset("paper")["resources"]

    for stage in (1, 2):
        r = res[f"train_stage{stage}"]
        job = the_job(jobs, "train_stage", stage=str(stage))
        got = job["resources"]
        assert got["gpu"] == str(r["gpus"]) == "1", got
        assert got["cpus_per_task"] == str(r["cpus_per_task"]), got
        assert got["mem_mb"] == str(r["mem_mb"]), got
        assert got["runtime"] == str(r["runtime"]), got
        # mpi: 0 = no srun wrapper (the batch step runs the rule), yet no MPI job
        assert got["mpi"] == "0", got
        assert not {"nodes", "tasks", "gres", "tasks_per_gpu", "slurm_extra"} & got.keys(), got
        assert job["shell"].startswith(
            "trap '' TERM USR1; "
            f"python -m pipeline.launch --nodes 1 --ranks-per-node 1 --gpus-per-node 1 "
            f"--cpus-per-task {r['cpus_per_task']} --stop-before-limit 180 "
            "-- -m stackgan.cli.train "
        ), job["shell"]
        assert f"--data {cub}/shards/train-{64 if stage == 1 else 256}" in job["shell"]
    assert (
        "--stage1-generator results/paper/stage1/network-final.pt"
        in the_job(jobs, "train_stage", stage="2")["shell"]
    )

    r = res["evaluate"]
    for stage in ("1", "2"):
        got = the_job(jobs, "evaluate", stage=stage)["resources"]
        assert (got["gpu"], got["cpus_per_task"], got["mem_mb"], got["runtime"]) == tuple(
            str(r[k]) for k in ("gpus", "cpus_per_task", "mem_mb", "runtime")
        ), got
    for rule, split in (
        ("validate_data", None),
        ("build_shards", "train"),
        ("build_shards", "test"),
    ):
        got = the_job(jobs, rule, **({"split": split} if split else {}))["resources"]
        assert got["mem_mb"] == str(res["preprocess"]["mem_mb"]), (rule, got)
        assert got["runtime"] == str(res["preprocess"]["runtime"]), (rule, got)
        assert "gpu" not in got, (rule, got)
    # Real CUB: the raw inputs are the user's files, nothing is generated.
    assert (
        f"--cub-dir {birds}/CUB_200_2011 --bundle-dir {birds}"
        in the_job(jobs, "validate_data")["shell"]
    )


def test_real_cub_in_training_evaluation_is_the_inception_fid(tmp_path: Path) -> None:
    """On real CUB, train.eval_every with Inception weights: both training jobs get the test
    captions, the weights and the real statistics (and wait for the real_stats job), no
    twin classifier."""
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not read in a dry run")
    proc = paper_dry_run(
        tmp_path, f"eval={{inception_weights: {weights}}}", "train={eval_every: 500}"
    )
    assert proc.returncode == 0, tail(proc)
    cub = preset_data_dir("paper", data={"root": str(tmp_path / "birds")})
    jobs = dry_run_jobs(proc.output)
    assert job_stats(proc.output)["real_stats"] == 1
    for stage in ("1", "2"):
        shell = the_job(jobs, "train_stage", stage=stage)["shell"]
        assert f"--eval-index {cub}/shards/test-index.h5" in shell, shell
        assert f"--eval-inception-weights {weights}" in shell, shell
        assert f"--eval-real-stats {cub}/fid/real-test-256.h5" in shell, shell
        assert "--eval-classifier" not in shell and "--eval-shards" not in shell, shell


def test_paper_multi_node_dry_run(tmp_path: Path) -> None:
    birds = fake_cub(tmp_path / "birds")
    work = tmp_path / "work"
    work.mkdir()
    configfile = tmp_path / "multinode.yaml"
    configfile.write_text(
        yaml.safe_dump(
            {
                "preset": "paper",
                "data": {"root": str(birds)},
                "resources": {
                    "train_stage1": {
                        "nodes": 2,
                        "gpus": 4,
                        "ranks_per_node": 4,
                        "cpus_per_task": 32,
                        "mem_mb": 128000,
                        "runtime": 1440,
                    },
                    "train_stage2": {"slurm_partition": "gpu-long", "gpu_model": "a100"},
                },
            }
        )
    )
    proc = snakemake(work, "-n", "--profile", str(SLURM_PROFILE), "--configfile", str(configfile))
    assert proc.returncode == 0, tail(proc)
    assert job_stats(proc.output) == PAPER_JOBS
    jobs = dry_run_jobs(proc.output)

    job = the_job(jobs, "train_stage", stage="1")
    got = job["resources"]
    assert got["mpi"] == "srun", got
    assert got["nodes"] == "2", got
    assert got["tasks"] == "2", got  # one torchrun launcher per node
    assert got["tasks_per_gpu"] == "0", got  # no implicit --ntasks-per-gpu
    assert got["gres"].strip("'\"") == "gpu:4", got  # per node
    assert got["cpus_per_task"] == "32" and got["mem_mb"] == "128000", got
    assert "gpu" not in got, got  # --gpus would be a job total, not per node
    assert "--signal=USR1@180" in got["slurm_extra"], got
    assert job["shell"].startswith(
        "trap '' TERM USR1; "
        "python -m pipeline.launch --nodes 2 --ranks-per-node 4 --gpus-per-node 4 "
        "--cpus-per-task 32 --stop-before-limit 180 -- -m stackgan.cli.train "
    ), job["shell"]
    assert "slurm_partition" not in got and "gpu_model" not in got, got
    # Stage-II keeps the preset's single-node setting, on its own partition and GPU type.
    got2 = the_job(jobs, "train_stage", stage="2")["resources"]
    assert got2["gpu"] == "1" and got2["mpi"] == "0" and "nodes" not in got2, got2
    assert got2["slurm_partition"] == "gpu-long" and got2["gpu_model"] == "a100", got2


# --------------------------------------------------------------------------- bad configuration


def _bad_paper(tmp_path: Path, missing: str | None) -> list[str]:
    root = tmp_path / "birds"
    if missing == "everything":
        root.mkdir()
    else:
        fake_cub(root, missing)
    return ["--config", "preset=paper", f"data={{root: {root}}}"]


BAD_CONFIGS = {
    "typo-in-key": (
        lambda tmp: ["--config", "train={batchsize: 8}"],
        r"train: Additional properties are not allowed \('batchsize' was unexpected\)",
    ),
    "cub-root-empty": (
        lambda tmp: _bad_paper(tmp, "everything"),
        r"data\.cub_dir: directory \S+/birds/CUB_200_2011 does not exist",
    ),
    "cub-pickle-missing": (
        lambda tmp: _bad_paper(tmp, "test/char-CNN-RNN-embeddings.pickle"),
        r"data\.bundle_dir: missing \S+/birds/test/char-CNN-RNN-embeddings\.pickle",
    ),
    "stage2-without-stage1": (
        lambda tmp: ["--config", "preset=smoke", "stages=[2]"],
        r"stages: Stage-II needs Stage-I",
    ),
    "more-gpus-than-a-node-has": (
        lambda tmp: [
            "--config",
            "preset=smoke",
            "resources={train_stage1: {gpus: 8, ranks_per_node: 8}}",
        ],
        r"resources\.train_stage1\.gpus: 8 GPUs per node requested, "
        r"but resources\.gpus_per_node .* is 4",
    ),
    "real-cub-monitor-without-weights": (
        lambda tmp: [*_bad_paper(tmp, None), "train={eval_every: 100}"],
        r"train\.eval_every: the in-training evaluation needs the twin attribute classifier "
        r"\(data\.source: twin\) or eval\.inception_weights",
    ),
    "unknown-preset": (
        lambda tmp: ["--config", "preset=tiny"],
        r"preset: unknown preset 'tiny'; available: demo, paper, smoke",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configuration_fails_before_any_job(tmp_path: Path, case: str) -> None:
    make_args, message = BAD_CONFIGS[case]
    work = tmp_path / "work"
    work.mkdir()
    # A real run (not -n): had the configuration been accepted, jobs would start and write results/.
    proc = snakemake(work, "--profile", str(LOCAL_PROFILE), *make_args(tmp_path), timeout=60)
    assert proc.returncode != 0, tail(proc)
    assert re.search(message, proc.output), tail(proc)
    assert "WorkflowError" in proc.output and "StackGAN pipeline:" in proc.output, tail(proc)
    assert "Building DAG of jobs" not in proc.output, (
        "the error must come when parsing, before the DAG"
    )
    assert not (work / "results").exists(), sorted(p.name for p in (work / "results").rglob("*"))


def test_data_text_encoder_reaches_build_shards(tmp_path: Path) -> None:
    """data.text_encoder: build-shards embeds the captions with that encoder, into a data
    directory of its own."""
    config = ["preset=smoke", "data={text_encoder: twin}"]
    proc = snakemake(tmp_path, "-n", "--profile", str(LOCAL_PROFILE), "--config", *config)
    assert proc.returncode == 0, tail(proc)
    job = the_job(dry_run_jobs(proc.output), "build_shards", split="train")
    assert "--text-encoder twin " in job["shell"], job["shell"]
    other = preset_data_dir("smoke", data={"text_encoder": "twin"})
    assert other != SMOKE_DATA and f"--out {other}/shards" in job["shell"]


def test_nested_config_values_from_the_command_line_get_their_types(tmp_path: Path) -> None:
    """Snakemake parses nested --config values as strings ('60'); the pipeline must accept them."""
    config = ["preset=smoke", "stage1={epochs: 7, lr_g: 1e-4}"]
    resources = "resources={evaluate: {cpus_per_task: 2}}"
    proc = snakemake(
        tmp_path, "-n", "--profile", str(LOCAL_PROFILE), "--config", *config, resources
    )
    assert proc.returncode == 0, tail(proc)
    jobs = dry_run_jobs(proc.output)
    assert the_job(jobs, "evaluate", stage="1")["resources"]["cpus_per_task"] == "2"
    # The workflow writes the stage's run config itself (a local rule): run just that job.
    target = "results/smoke/stage1/run_config.yaml"
    proc = snakemake(tmp_path, "--profile", str(LOCAL_PROFILE), target, "--config", *config)
    assert proc.returncode == 0, tail(proc)
    written = yaml.safe_load((tmp_path / target).read_text())
    assert written["stage"] == 1, written
    assert written["train"]["epochs"] == 7 and written["train"]["lr_g"] == 1e-4, written["train"]
    assert isinstance(written["train"]["epochs"], int), written["train"]


# --------------------------------------------------------------------------- full smoke run


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One full local smoke run (17 jobs) in a fresh working directory."""
    work = tmp_path_factory.mktemp("smoke-run")
    proc = snakemake(
        work, "--profile", str(LOCAL_PROFILE), "--config", "preset=smoke", timeout=RUN_TIMEOUT_S
    )
    assert proc.returncode == 0, tail(proc, 120)
    assert job_stats(proc.output) == TWIN_JOBS
    assert "17 of 17 steps (100%) done" in proc.output, tail(proc)
    yield work


def test_smoke_run_writes_every_declared_output(smoke_run: Path) -> None:
    missing = [p for p in SMOKE_OUTPUTS if not (smoke_run / p).is_file()]
    assert not missing, missing
    empty = [p for p in SMOKE_OUTPUTS if (smoke_run / p).stat().st_size == 0]
    assert not empty, empty
    for p in SMOKE_OUTPUTS:
        if p.endswith(".png"):
            assert (smoke_run / p).read_bytes()[:8] == PNG_MAGIC, p

    for stage in (1, 2):
        m = json.loads((smoke_run / f"results/smoke/stage{stage}/metrics.json").read_text())
        cfg = yaml.safe_load(
            (smoke_run / f"results/smoke/stage{stage}/run_config.yaml").read_text()
        )
        assert m["stage"] == stage and m["world_size"] == 1 and m["resumed_from"] is None, m
        assert m["steps"] > 0 and m["epochs"] == cfg["train"]["epochs"], m
        work = smoke_run / f"results/smoke/work/stage{stage}"
        # Resumable state lives beside the outputs, not in them.
        assert sorted(work.glob("training-state-*.pt")), sorted(work.iterdir())
        assert (work / "mlflow_run_id.txt").read_text().strip() == m["mlflow_run_id"]
    summary = json.loads((smoke_run / "results/smoke/summary.json").read_text())
    assert summary["run"] == "smoke" and summary["preset"] == "smoke", summary
    assert "stage2.cond_body_accuracy" in summary["metrics"], sorted(summary["metrics"])
    page = (smoke_run / "results/smoke/report.html").read_text()
    assert "stage2.cond_body_accuracy" in page and "Stage-II (256 px)" in page
    _assert_paired_counts(smoke_run, summary["metrics"], page)
    # The run report is offline: its pictures are embedded, nothing is fetched.
    assert page.count("src='data:image/png;base64,") == 6, page.count("data:image/png")
    assert "<script" not in page and "<link" not in page


def _assert_paired_counts(smoke_run: Path, metrics: dict[str, float], page: str) -> None:
    """summary.json's paired Stage-II/Stage-I counts, recomputed from the two evaluations'
    activation caches and the test index; they give the accuracy difference exactly."""
    import h5py
    import numpy as np

    from stackgan.data.index import SplitIndex
    from stackgan.evaluation.attributes.score import attribute_labels

    preds = {}
    for stage in (1, 2):
        with h5py.File(smoke_run / f"results/smoke/eval/stage{stage}/activations.h5") as h5:
            preds[stage] = (h5["attributes"][:], h5["image_index"][:], h5["caption_index"][:])
    assert np.array_equal(preds[1][1], preds[2][1]) and np.array_equal(preds[1][2], preds[2][2])
    index = smoke_run / SMOKE_DATA / "shards/test-index.h5"
    with SplitIndex(index) as idx:
        wanted = attribute_labels(idx.caption_pairs(preds[1][1], preds[1][2]))
    for j, attr in enumerate(("body", "wing")):
        right1, right2 = preds[1][0][:, j] == wanted[:, j], preds[2][0][:, j] == wanted[:, j]
        lost, won = int((right1 & ~right2).sum()), int((~right1 & right2).sum())
        assert metrics[f"stage2.vs_stage1.{attr}_lost"] == lost, (attr, lost, metrics)
        assert metrics[f"stage2.vs_stage1.{attr}_won"] == won, (attr, won, metrics)
        diff = metrics[f"stage2.cond_{attr}_accuracy"] - metrics[f"stage1.cond_{attr}_accuracy"]
        assert (won - lost) / len(wanted) == pytest.approx(diff, abs=1e-9)
        assert 0 < metrics[f"stage2.vs_stage1.{attr}_sign_p"] <= 1
        assert f"{lost} images right -&gt; wrong, {won} wrong -&gt; right" in page


def _client(work: Path):
    from mlflow.tracking import MlflowClient

    db = work / "results" / "mlflow.db"
    assert db.is_file(), db
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def _artifacts(client, run_id: str, path: str = "") -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_head() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip()


def test_mlflow_parent_and_child_runs(smoke_run: Path) -> None:
    client = _client(smoke_run)
    exp = client.get_experiment_by_name("stackgan-smoke")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    # (Later tests add other pipeline runs to this experiment: count this run's own.)
    parents = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.stage = 'pipeline' and attributes.run_name = 'smoke'",
    )
    assert len(parents) == 1, [(r.info.run_name, r.data.tags.get("stage")) for r in runs]
    parent = parents[0]
    pid = parent.info.run_id
    assert (smoke_run / "results/smoke/mlflow/parent_run_id.txt").read_text().strip() == pid
    assert parent.info.run_name == "smoke"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("preset") == "smoke" and parent.data.tags.get("dataset") == "twin"
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"

    # The resolved pipeline config as flat params (comparable in the UI), with the stage
    # configs' hashes; machine paths are left out.
    resolved = yaml.safe_load((smoke_run / "results/smoke/pipeline_config.yaml").read_text())
    params = parent.data.params
    assert params["preset"] == "smoke" == resolved["preset"]
    assert params["train.lr_g"] == str(resolved["train"]["lr_g"])
    assert params["data.source"] == "twin" and "model.arch" in params and "loss.kl_weight" in params
    assert "resources.train_stage1.cpus_per_task" in params and "eval.batch_size" in params
    assert not any(k.startswith("results_dir") for k in params)
    for stage in (1, 2):
        cfg_file = smoke_run / f"results/smoke/stage{stage}/run_config.yaml"
        assert params[f"stage{stage}.config_sha256"] == _sha256(cfg_file)

    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{pid}'"
    )
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == ["eval-stage1", "eval-stage2", "stage1", "stage2"], sorted(by_name)
    mine = [r for r in runs if pid in (r.info.run_id, r.data.tags.get("mlflow.parentRunId"))]
    assert len(children) == 4 and len(mine) == 5, "no duplicated runs"
    parent_ids = {r.info.run_id for r in runs if r.data.tags.get("stage") == "pipeline"}
    orphans = [r.info.run_name for r in runs if r.info.run_id not in parent_ids
               and r.data.tags.get("mlflow.parentRunId") not in parent_ids]  # fmt: skip
    assert not orphans, "every run belongs to a pipeline run"
    assert all(r.info.status == "FINISHED" for r in children), [
        (r.info.run_name, r.info.status) for r in children
    ]

    # Summary metrics on the parent: exactly those of summary.json.
    summary = json.loads((smoke_run / "results/smoke/summary.json").read_text())["metrics"]
    assert "stage2.cond_body_accuracy" in parent.data.metrics
    assert set(parent.data.metrics) == set(summary), set(parent.data.metrics) ^ set(summary)
    for key, value in summary.items():
        assert math.isclose(parent.data.metrics[key], value, rel_tol=1e-6, abs_tol=1e-9), key
    # The run report is on the parent run too, byte for byte, and links to every run.
    assert "report.html" in _artifacts(client, pid)
    local = client.download_artifacts(pid, "report.html", str(smoke_run / "dl-report"))
    page = (smoke_run / "results/smoke/report.html").read_bytes()
    assert Path(local).read_bytes() == page
    for run in [parent, *children]:
        link = f"/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
        assert link.encode() in page, run.info.run_name

    head = git_head()
    for stage in (1, 2):
        run = by_name[f"stage{stage}"]
        p, m = run.data.params, run.data.metrics
        cfg = yaml.safe_load(
            (smoke_run / f"results/smoke/stage{stage}/run_config.yaml").read_text()
        )
        assert p["config.model.arch"] == cfg["model"]["arch"] == "paper", p
        assert p["config.stage"] == str(stage) and p["config.train.epochs"] == str(
            cfg["train"]["epochs"]
        )
        assert p["world_size"] == "1" and p["amp"] == "fp32", p
        assert (
            p["git.commit"] == head
            if head
            else re.fullmatch(r"[0-9a-f]{40}|unknown", p["git.commit"])
        )
        shard_set = "train-64" if stage == 1 else "train-256"
        manifest = smoke_run / f"{SMOKE_DATA}/shards/{shard_set}/manifest.json"
        assert p["data.manifest_sha256"] == _sha256(manifest), p["data.manifest_sha256"]
        assert set(m) >= TRAIN_METRICS, sorted(m)
        assert all(math.isfinite(m[k]) for k in TRAIN_METRICS), m
        final = json.loads((smoke_run / f"results/smoke/stage{stage}/metrics.json").read_text())
        history = client.get_metric_history(run.info.run_id, "loss_d")
        assert max(h.step for h in history) == final["steps"], [h.step for h in history]
        assert len({h.step for h in history}) > 1, "loss_d must be logged per step, not once"
        assert run.data.tags.get("stackgan.attempt") == "1"
        assert run.data.tags.get("stage") == str(stage)
        # Lineage in MLflow's own terms: the shard set as a dataset input (the UI's Dataset
        # column), and for Stage-II the frozen Stage-I network with its training run.
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        data_in = inputs[shard_set]
        tags = {t.key: t.value for t in data_in.tags}
        assert data_in.dataset.digest == _sha256(manifest)[:36] and tags["sha256"] == _sha256(
            manifest
        )
        assert tags["mlflow.data.context"] == "training" and tags["split"] == "train"
        assert tags["resolution"] == ("64" if stage == 1 else "256")
        described = json.loads((smoke_run / SMOKE_DATA / "data_config.json").read_text())
        assert tags["data_key"] == described["key"] == SMOKE_DATA.rsplit("-", 1)[1]
        assert tags["data_sha256"] == described["sha256"]
        assert data_in.dataset.source == str(manifest.parent.resolve())
        if stage == 2:
            net1 = smoke_run / "results/smoke/stage1/network-final.pt"
            stage1_in = inputs["stage1-network"]
            in_tags = {t.key: t.value for t in stage1_in.tags}
            assert in_tags["sha256"] == _sha256(net1) == run.data.tags["stage1.network_sha256"]
            stage1_id = by_name["stage1"].info.run_id
            assert in_tags["mlflow_run_id"] == stage1_id == run.data.tags["stage1.mlflow_run_id"]

    for stage in (1, 2):
        run = by_name[f"eval-stage{stage}"]
        local = json.loads(
            (smoke_run / f"results/smoke/eval/stage{stage}/metrics.json").read_text()
        )["metrics"]
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {f"stage{stage}-network", "test-index"}, set(inputs)
        evaluated = {t.key: t.value for t in inputs[f"stage{stage}-network"].tags}
        assert evaluated["mlflow.data.context"] == "evaluated"
        assert evaluated["mlflow_run_id"] == by_name[f"stage{stage}"].info.run_id
        cond = {k for k in run.data.metrics if k.startswith("cond_")}
        assert {"cond_body_accuracy", "cond_wing_accuracy", "cond_joint_accuracy"} <= cond, sorted(
            run.data.metrics
        )
        for key in cond:
            assert math.isclose(run.data.metrics[key], local[key], rel_tol=1e-6, abs_tol=1e-9), key


def test_mlflow_artifacts_and_images(smoke_run: Path) -> None:
    client = _client(smoke_run)
    exp = client.get_experiment_by_name("stackgan-smoke")
    pid = (smoke_run / "results/smoke/mlflow/parent_run_id.txt").read_text().strip()
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{pid}'"
    )
    by_name = {r.info.run_name: r for r in children}
    smoke = load_preset("smoke")

    for stage in (1, 2):
        run_id = by_name[f"stage{stage}"].info.run_id
        arts = _artifacts(client, run_id)
        want = {"run_config.yaml", "loss_curves.png", "samples.png", "network/network-final.pt"}
        assert want <= set(arts), arts
        # Step-indexed sample grids logged with log_image during training.
        steps = {
            int(m.group(1))
            for a in arts
            if (m := re.match(r"images/samples\+step\+(\d+)\+.*\.png$", a))
        }
        final = json.loads((smoke_run / f"results/smoke/stage{stage}/metrics.json").read_text())[
            "steps"
        ]
        every = smoke["train"]["sample_every"]
        assert set(range(every, final + 1, every)) | {final} <= steps, (steps, final)
        # The logged files are the pipeline's own outputs.
        got = Path(
            client.download_artifacts(run_id, "run_config.yaml", str(smoke_run / f"dl{stage}"))
        )
        assert (
            got.read_bytes()
            == (smoke_run / f"results/smoke/stage{stage}/run_config.yaml").read_bytes()
        )
        got = Path(
            client.download_artifacts(
                run_id, "network/network-final.pt", str(smoke_run / f"dl{stage}")
            )
        )
        assert _sha256(got) == _sha256(smoke_run / f"results/smoke/stage{stage}/network-final.pt")
        got = Path(
            client.download_artifacts(run_id, "loss_curves.png", str(smoke_run / f"dl{stage}"))
        )
        assert got.read_bytes()[:8] == PNG_MAGIC

    for stage in (1, 2):
        run_id = by_name[f"eval-stage{stage}"].info.run_id
        arts = set(_artifacts(client, run_id))
        assert {"eval/metrics.json", "eval/grid.png"} <= arts, arts
        got = Path(
            client.download_artifacts(run_id, "eval/grid.png", str(smoke_run / f"dl-eval{stage}"))
        )
        assert (
            got.read_bytes()
            == (smoke_run / f"results/smoke/eval/stage{stage}/grid.png").read_bytes()
        )


def _report_json(html: str, name: str) -> Any:
    """The data block ``<script id="NAME"> var NAME = {...}`` of a Snakemake HTML report."""
    marker = f"var {name} = "
    start = html.index(marker, html.index(f'<script id="{name}">')) + len(marker)
    value, _ = json.JSONDecoder().raw_decode(html, start)
    return value


def test_report_contains_grids_curves_and_the_run_report(smoke_run: Path) -> None:
    report = smoke_run / "results/smoke/snakemake-report.html"
    proc = snakemake(
        smoke_run,
        "--profile",
        str(LOCAL_PROFILE),
        "--config",
        "preset=smoke",
        "--report",
        str(report),
    )
    assert proc.returncode == 0, tail(proc)
    html = report.read_text()
    results = _report_json(html, "results")
    categories = _report_json(html, "categories")

    assert categories["Training"] == {
        "Stage-I": ["results/smoke/stage1/loss_curves.png", "results/smoke/stage1/samples.png"],
        "Stage-II": ["results/smoke/stage2/loss_curves.png", "results/smoke/stage2/samples.png"],
    }, categories["Training"]
    evaluation = {f for files in categories["Evaluation"].values() for f in files}
    assert evaluation == {
        f"results/smoke/eval/stage{s}/{n}" for s in (1, 2) for n in ("metrics.json", "grid.png")
    }
    assert [f for files in categories["Run report"].values() for f in files] == [
        "results/smoke/report.html"
    ]

    # Each entry embeds the file itself.
    for path in (
        "results/smoke/stage1/loss_curves.png",
        "results/smoke/stage2/samples.png",
        "results/smoke/eval/stage1/grid.png",
        "results/smoke/eval/stage2/grid.png",
        "results/smoke/report.html",
    ):
        entry = results[path]
        data = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        assert data == (smoke_run / path).read_bytes(), path
        assert entry["caption"].strip(), path
    table = base64.b64decode(
        results["results/smoke/report.html"]["data_uri"].split("base64,", 1)[1]
    ).decode()
    assert "stage2.cond_body_accuracy" in table and "stage1.train.loss_d" in table


def test_second_invocation_has_nothing_to_do(smoke_run: Path) -> None:
    proc = snakemake(smoke_run, "-n", "--profile", str(LOCAL_PROFILE), "--config", "preset=smoke")
    assert proc.returncode == 0, tail(proc)
    assert "Nothing to be done (all requested files are present and up to date)." in proc.output, (
        tail(proc)
    )
    assert "Job stats:" not in proc.output


def test_a_changed_stage2_setting_retrains_stage2_from_step_0(smoke_run: Path) -> None:
    """Snakemake reruns the job whose setting changed, and that job must train with it: the
    Stage-II work directory holds the old run's states, which are moved aside (not resumed),
    so Stage-II trains from step 0 under the new loss; Stage-I and the data are untouched."""
    own = ("run=smoke-change", "mlflow={experiment: stackgan-smoke-change}")
    smoke_variant(smoke_run, *own)  # its own pipeline run on the smoke run's data
    run = smoke_run / "results" / "smoke-change"
    stage1_before = (run / "stage1/network-final.pt").read_bytes()
    proc = smoke_variant(smoke_run, *own, "stage2={loss: {stage_consistency: 1.0}}")
    stats = job_stats(proc.output)
    assert stats["train_stage"] == 1 and "mlflow_parent" not in stats, stats
    assert "make_twin" not in stats and stats["evaluate"] == 1, stats
    log = (run / "logs/train_stage2.log").read_text()
    assert "loss.stage_consistency: 0.0 -> 1.0" in log and "starting at step 0" in log, log[-3000:]
    assert "resumed from" not in log
    moved = list((run / "work/stage2/superseded").iterdir())
    assert len(moved) == 1 and list(moved[0].glob("training-state-*.pt"))
    summary = json.loads((run / "stage2/metrics.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] > 0
    stage2 = yaml.safe_load((run / "stage2/run_config.yaml").read_text())
    assert stage2["loss"]["stage_consistency"] == 1.0
    stage1 = yaml.safe_load((run / "stage1/run_config.yaml").read_text())
    assert stage1["loss"]["stage_consistency"] == 0.0
    assert (run / "stage1/network-final.pt").read_bytes() == stage1_before
    # The shared loss section too: an option that only Stage-II reads reruns Stage-II alone.
    dry = snakemake(
        smoke_run,
        "-n",
        "--profile",
        str(LOCAL_PROFILE),
        "--config",
        "preset=smoke",
        *own,
        "loss={stage_consistency: 2.0}",
    )
    assert dry.returncode == 0, tail(dry)
    trains = [j for j in dry_run_jobs(dry.output) if j["rule"] == "train_stage"]
    assert [j["wildcards"].get("stage") for j in trains] == ["2"], trains


def smoke_variant(work: Path, *config: str) -> subprocess.CompletedProcess:
    """Another pipeline run of the smoke preset in ``work`` with extra ``--config`` values
    (another run name and experiment keep the smoke run's own checks valid); must succeed."""
    proc = snakemake(
        work,
        "--profile",
        str(LOCAL_PROFILE),
        "--config",
        "preset=smoke",
        *config,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, tail(proc, 120)
    return proc


@pytest.fixture(scope="module")
def smoke_lr_run(smoke_run: Path) -> Path:
    """A second pipeline run beside the smoke run (``smoke-lr``), in the same experiment and
    on the same data, with another lr_g for both stages."""
    proc = smoke_variant(smoke_run, "run=smoke-lr", "train={lr_g: 3.0e-4}")
    stats = job_stats(proc.output)
    assert "make_twin" not in stats and "build_shards" not in stats  # the data are shared
    return smoke_run


def test_runs_diff_of_two_pipeline_runs_that_differ_in_one_learning_rate(
    smoke_lr_run: Path,
) -> None:
    """``stackgan runs --diff`` of the smoke run and the smoke-lr run."""
    smoke_run = smoke_lr_run
    uri = f"sqlite:///{smoke_run / 'results' / 'mlflow.db'}"
    diff = subprocess.run(
        [sys.executable, "-m", "stackgan.cli.runs", "--tracking-uri", uri, "--diff", "smoke",
         "smoke-lr"],
        cwd=smoke_run, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert diff.returncode == 0, diff.stderr
    sections: dict[str, list[str]] = {}
    for line in diff.stdout.splitlines():
        if line.startswith("== "):
            title = line[3:]
            sections[title] = []
        else:
            sections[title].append(line.split()[0])
    parent = next(t for t in sections if t.startswith("smoke ("))
    assert "params.train.lr_g" in sections[parent]
    assert "params.run" in sections[parent] and "params.mlflow.experiment" not in sections[parent]
    assert "params.stage1.config_sha256" in sections[parent]
    assert not [k for k in sections[parent] if k.startswith("params.model.")]
    for stage in ("stage1", "stage2"):
        changed = sections[f"child {stage}"]
        assert "params.config.train.lr_g" in changed, changed
        assert not [k for k in changed if k.startswith("params.config.model.")], changed
        assert "params.data.manifest_sha256" not in changed  # same shards


def _rest_tags(run: dict[str, Any], kind: str = "tags") -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get(kind, [])}


def test_mlflow_rest_and_ui_show_the_two_pipeline_runs(smoke_lr_run: Path, tmp_path: Path) -> None:
    """A real ``mlflow server`` over the store of the two pipeline runs. REST shows the
    experiment kind, the parents' params, the dataset inputs and the Stage-II -> Stage-I
    lineage; headless Chromium shows the training-runs view with both parents, their
    differing param, a stage run's dataset and its sample grid (screenshots: set
    STACKGAN_SCREENSHOTS=docs/img to refresh the docs' pictures)."""
    require_browser()
    from selenium.webdriver.common.by import By

    work = smoke_lr_run
    shots = tmp_path / "shots"
    with mlflow_server(f"sqlite:///{work / 'results/mlflow.db'}", tmp_path / "server.log") as (
        url,
        _,
    ):
        exp = rest(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=stackgan-smoke")
        exp_id = exp["experiment"]["experiment_id"]
        kind = {"key": "mlflow.experimentKind", "value": "custom_model_development"}
        assert kind in exp["experiment"]["tags"]
        body = {"experiment_ids": [exp_id], "max_results": 100}
        runs = rest(url, "/api/2.0/mlflow/runs/search", body)["runs"]
        parents = {
            r["info"]["run_name"]: r for r in runs if _rest_tags(r).get("stage") == "pipeline"
        }
        assert sorted(parents) == ["smoke", "smoke-lr"]
        p0, p1 = (_rest_tags(parents[n], "params") for n in ("smoke", "smoke-lr"))
        assert (p0["train.lr_g"], p1["train.lr_g"]) == ("0.0002", "0.0003")
        differ = {k for k in p0.keys() | p1.keys() if p0.get(k) != p1.get(k)}
        assert differ == {"run", "train.lr_g", "stage1.config_sha256", "stage2.config_sha256"}

        pid = parents["smoke"]["info"]["run_id"]
        kids = {r["info"]["run_name"]: r for r in runs
                if _rest_tags(r).get("mlflow.parentRunId") == pid}  # fmt: skip
        s1, s2 = kids["stage1"], kids["stage2"]
        s1_id = s1["info"]["run_id"]
        inputs = {i["dataset"]["name"]: i for i in s1["inputs"]["dataset_inputs"]}
        manifest = _sha256(work / SMOKE_DATA / "shards/train-64/manifest.json")
        train64 = inputs["train-64"]
        assert manifest.startswith(train64["dataset"]["digest"])
        context = {t["key"]: t["value"] for t in train64["tags"]}
        assert context["sha256"] == manifest and context["mlflow.data.context"] == "training"
        assert (context["split"], context["resolution"]) == ("train", "64")
        # Stage-II -> Stage-I lineage: tags and an input naming the network and its run.
        network = _sha256(work / "results/smoke/stage1/network-final.pt")
        tags2 = _rest_tags(s2)
        assert tags2["stage1.mlflow_run_id"] == s1_id and tags2["stage1.network_sha256"] == network
        cond = [
            i for i in s2["inputs"]["dataset_inputs"] if i["dataset"]["name"] == "stage1-network"
        ]
        assert len(cond) == 1 and network.startswith(cond[0]["dataset"]["digest"])
        assert {"key": "mlflow_run_id", "value": s1_id} in cond[0]["tags"]

        with headless_chromium() as driver:
            # The run report, opened from disk: every picture renders, no network needed.
            driver.get((work / "results/smoke/report.html").as_uri())
            wait_for_text(driver, "Stage-I (64 px)", "Stage-II (256 px)", "Config")
            rendered = "[...document.images].filter(i => i.complete && i.naturalWidth > 0)"
            assert wait_js(driver, f"{rendered}.length >= 6 && {rendered}.length", "pictures") == 6
            screenshot(driver, shots / "run-report-smoke.png")

            driver.get(experiment_url(url, exp_id))
            text = wait_for_text(driver, "smoke-lr", "Run Name")
            assert "smoke" in text.splitlines() and "Detect Issues" not in text
            with contextlib.suppress(Exception):  # MLflow's assistant panel opens on first use
                driver.find_element(By.CSS_SELECTOR, "button[aria-label='Close']").click()
            expanders = "button[data-component-id*='runnamecellrenderer']"  # a parent's "+"
            for button in reversed(driver.find_elements(By.CSS_SELECTOR, expanders)):
                button.click()
            # The children are listed under their parents, with their datasets.
            text = wait_for_text(driver, "eval-stage2", "train-64")
            assert text.count("stage1") >= 2, text
            screenshot(driver, shots / "mlflow-training-runs.png")

            ids = [parents[n]["info"]["run_id"] for n in ("smoke", "smoke-lr")]
            driver.get(compare_url(url, exp_id, ids))
            wait_for_text(driver, "Show diff only", "train.lr_g")
            click_text(driver, "Show diff only")
            text = wait_for_text(driver, "stage1.config_sha256")
            assert re.search(r"train\.lr_g\s+0\.0002\s+0\.0003", text), text[-3000:]
            assert "data.twin.classes" not in text.split("Show diff only", 1)[1]
            scroll_to_text(driver, "Parameters")
            screenshot(driver, shots / "mlflow-compare-diff.png")

            driver.get(run_url(url, exp_id, s1_id))
            wait_for_text(driver, "Datasets", f"train-64 ({train64['dataset']['digest']})")
            screenshot(driver, shots / "mlflow-stage1-run.png")

            driver.get(run_url(url, exp_id, s1_id).replace("?", "/artifacts?"))
            wait_for_text(driver, "samples.png", "loss_curves.png", "network")
            click_text(driver, "samples.png")
            loaded = "[...document.images].some(i => i.complete && i.naturalWidth > 100)"
            wait_js(driver, loaded, "the sample grid's preview")
            screenshot(driver, shots / "mlflow-stage1-artifacts.png")
    assert all((shots / n).stat().st_size > 10_000 for n in os.listdir(shots))


def test_runs_with_other_data_settings_get_their_own_data(smoke_run: Path) -> None:
    """Data belong to their config: a run with another twin size builds its own data
    directory, and afterwards the smoke run has nothing to redo (its data untouched)."""
    manifest = smoke_run / SMOKE_DATA / "shards/train-64/manifest.json"
    before = manifest.read_bytes()
    proc = smoke_variant(
        smoke_run,
        "run=smoke-bigger-twin",
        "data={twin: {images_per_class: 8}}",
        "mlflow={experiment: stackgan-smoke-data}",
    )
    other = preset_data_dir("smoke", data={"twin": {"images_per_class": 8}})
    assert other != SMOKE_DATA
    assert job_stats(proc.output)["make_twin"] == 1  # its own twin, shards and classifier
    described = json.loads((smoke_run / other / "data_config.json").read_text())
    assert described["key"] == other.rsplit("-", 1)[1] and described["sha256"].startswith(
        described["key"]
    )
    assert described["data"]["twin"]["images_per_class"] == 8
    assert manifest.read_bytes() == before
    dry = snakemake(smoke_run, "-n", "--profile", str(LOCAL_PROFILE), "--config", "preset=smoke")
    assert dry.returncode == 0, tail(dry)
    assert "Nothing to be done" in dry.output, tail(dry)
