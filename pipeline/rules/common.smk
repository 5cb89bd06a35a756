# Configuration, paths and shared helpers. Everything is resolved and checked here, when the
# workflow is parsed, so a bad configuration stops before any job is submitted.

import json
import shlex
import sys

from snakemake.exceptions import WorkflowError

BASEDIR = workflow.basedir
if BASEDIR not in sys.path:
    sys.path.insert(0, BASEDIR)

from pipeline.settings import PipelineConfigError, resolve  # noqa: E402

try:
    S = resolve(config)
except PipelineConfigError as err:
    raise WorkflowError(f"StackGAN pipeline: {err}")

# Use the merged, validated configuration from here on.
config.clear()
config.update(S.config)

RUN = S.run_dir
DATA = S.data_dir
SHARDS = f"{DATA}/shards"
RAW = S.raw_root
# Rules run the project's CLIs with this source tree first on the import path, in the
# current environment or in the rule's conda environment.
PY = f"env PYTHONPATH={shlex.quote(BASEDIR)} python"
STACKGAN = f"{PY} -m stackgan"
CONDA_PRE = "../../envs/preprocess.yaml"
CONDA_TRAIN = "../../envs/train.yaml"


def tracking_uri():
    """Configured URI, else $MLFLOW_TRACKING_URI, else sqlite in the run directory."""
    configured = config["mlflow"].get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return "sqlite:///" + os.path.abspath(f"{RUN}/mlflow.db")


def raw_data_args():
    """--cub-dir/--bundle-dir of the raw data (twin or real CUB)."""
    return f"--cub-dir {shlex.quote(S.cub_dir())} --bundle-dir {shlex.quote(S.bundle_dir())}"


def train_resources(stage):
    """SLURM-plugin resources of a training rule, from config.

    One node: `gpu` (-> --gpus). Several nodes: an `mpi` rule with one task per node,
    `gres` per node and `tasks_per_gpu: 0` (the rule calls srun itself; see pipeline/launch.py).
    """
    r = config["resources"][f"train_stage{stage}"]
    res = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["cpus_per_task"]}
    if r["nodes"] > 1:
        # srun in the rule starts one torchrun per node; SIGUSR1 three minutes before the
        # time limit makes every rank checkpoint and exit (the retry then resumes).
        res.update(nodes=r["nodes"], mpi="srun", tasks=r["nodes"], tasks_per_gpu=0)
        res["slurm_extra"] = "'--signal=USR1@180'"
        if r["gpus"] > 0:
            res["gres"] = f"gpu:{r['gpus']}"
    elif r["gpus"] > 0:
        res["gpu"] = r["gpus"]
    return res


def launch_args(stage):
    r = config["resources"][f"train_stage{stage}"]
    return (
        f"--nodes {r['nodes']} --ranks-per-node {r['ranks_per_node']} "
        f"--gpus-per-node {r['gpus']} --cpus-per-task {r['cpus_per_task']}"
    )


def tracking_args(run_name):
    return (
        f"--tracking-uri {shlex.quote(tracking_uri())} --experiment {shlex.quote(config['mlflow']['experiment'])} "
        f"--run-name {shlex.quote(run_name)}"
        + ("" if config["mlflow"].get("system_metrics", True) else " --no-system-metrics")
    )
