# Configuration, paths and shared helpers. Everything is resolved and checked here, when the
# workflow is parsed, so a bad configuration stops before any job is submitted.

import json
import shlex
import sys

from snakemake.exceptions import WorkflowError

BASEDIR = workflow.basedir
if BASEDIR not in sys.path:
    sys.path.insert(0, BASEDIR)

from pipeline.settings import (  # noqa: E402
    PipelineConfigError,
    pipeline_params,
    prepare_rule_environment,
    resolve,
    write_data_config,
    write_pipeline_config,
    write_run_config,
)
from stackgan.tracking.store import resolve_tracking_uri  # noqa: E402

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
# Rules call the project's CLIs as `python -m stackgan ...` / `python -m pipeline...`: this
# source tree goes first on the import path, and without conda the interpreter running
# Snakemake (e.g. .venv/bin) goes first on PATH. Under --software-deployment-method conda,
# the rule's environment is activated on top, so its `python` wins. SLURM jobs inherit the
# environment (--export=ALL) and re-run this file, which sets the same values.
USE_CONDA = any("conda" in str(m).lower() for m in workflow.deployment_settings.deployment_method)
prepare_rule_environment(BASEDIR, None if USE_CONDA else sys.executable)
CONDA_PRE = "../../envs/preprocess.yaml"
CONDA_TRAIN = "../../envs/train.yaml"


def tracking_uri():
    """Configured URI, else $MLFLOW_TRACKING_URI, else sqlite shared by all runs in results_dir."""
    return resolve_tracking_uri(config["mlflow"].get("tracking_uri"), config["results_dir"])


def raw_data_args():
    """--cub-dir/--bundle-dir of the raw data (twin or real CUB)."""
    return f"--cub-dir {shlex.quote(S.cub_dir())} --bundle-dir {shlex.quote(S.bundle_dir())}"


def train_resources(stage):
    """SLURM-plugin resources of a training rule, from config.

    One node: `gpu` (-> --gpus), and `mpi: 0`, which the jobstep plugin takes as "run the
    rule in the batch step" (it tests for the key) while the submit plugin sees no MPI job
    (it tests the value): no `srun -n1` wrapper, whose srun would turn a SIGTERM to the
    job's processes (preemption, time limit, scancel, requeue) into a SIGKILL of the ranks
    before they save. Several nodes: an `mpi` rule with one task per node, `gres` per node
    and `tasks_per_gpu: 0` (the rule calls srun itself; see pipeline/launch.py), and
    `--signal=USR1@<stop_before_limit_s>` to the ranks' step (at that time before the limit,
    and at preemption where the site sets preempt_send_user_signal).
    """
    r = config["resources"][f"train_stage{stage}"]
    res = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["cpus_per_task"]}
    res.update({k: r[k] for k in ("slurm_partition", "gpu_model") if r.get(k)})
    if r["nodes"] > 1:
        # srun in the rule starts one torchrun per node.
        res.update(nodes=r["nodes"], mpi="srun", tasks=r["nodes"], tasks_per_gpu=0)
        margin = stop_before_limit(r)
        if 0 < margin <= r["runtime"] * 60 - 60:  # else it would fire at the start
            res["slurm_extra"] = f"'--signal=USR1@{margin}'"
        if r["gpus"] > 0:
            res["gres"] = f"gpu:{r['gpus']}"
    else:
        res["mpi"] = 0
        if r["gpus"] > 0:
            res["gpu"] = r["gpus"]
    return res


def stop_before_limit(r):
    """Seconds before the time limit at which training saves and requeues (default 180)."""
    return r.get("stop_before_limit_s", 180)


# Every key train_resources() can return: the one training rule declares each as a function
# of the {stage} wildcard (None = not set for that stage). Per-stage partition and GPU type
# come from resources.train_stage<N>.slurm_partition / gpu_model.
TRAIN_RESOURCE_KEYS = (
    "mem_mb", "runtime", "cpus_per_task", "gpu", "nodes", "mpi", "tasks", "tasks_per_gpu",
    "slurm_extra", "gres", "slurm_partition", "gpu_model",
)


STAGE_NAMES = {"1": "Stage-I", "2": "Stage-II"}
STAGE_SHARDS = {"1": "lr", "2": "hr"}  # build_shards outputs: 64 px (Stage-I), 256 px (Stage-II)


def train_inputs(wildcards):
    """A stage's run config, shards and index (+ Stage-I network, + monitor inputs)."""
    stage = wildcards.stage
    inputs = {
        **monitor_inputs(int(stage)),
        "cfg": rules.write_run_config.output[0].format(stage=stage),
        "data": shard_file(STAGE_SHARDS[stage], "train"),
        "index": shard_file("index", "train"),
        "parent": rules.mlflow_parent.output[0],
    }
    if stage == "2":
        inputs["stage1"] = stage1_network(wildcards)
    return inputs


def train_report(name, caption):
    return report(
        f"{RUN}/stage{{stage}}/{name}",
        caption=caption,
        category="Training",
        subcategory=lambda w: STAGE_NAMES[w.stage],
    )


def shard_file(output, split):
    """An output of rule build_shards (`lr`, `hr` manifest or `index`) for one split."""
    return getattr(rules.build_shards.output, output).format(split=split)


def monitor_inputs(stage):
    """Inputs of the in-training evaluation (train.eval_every > 0): the test captions; on the
    twin its classifier and test images, with Inception weights the real test statistics."""
    if S.run_configs[stage]["train"]["eval_every"] <= 0:
        return {}
    inputs = {"eval_index": shard_file("index", "test")}
    if config["data"]["source"] == "twin":
        inputs["eval_classifier"] = rules.train_attribute_classifier.output.model
        inputs["eval_shards"] = shard_file("lr", "test")
    if EVAL.inception_weights:
        inputs["eval_real_stats"] = rules.real_stats.output[0]
    return inputs


def monitor_args(input):
    """--eval-* arguments of stackgan train (empty when the evaluation is off)."""
    if "eval_index" not in input.keys():
        return ""
    args = [f"--eval-index {input.eval_index}"]
    if "eval_classifier" in input.keys():
        args += [f"--eval-classifier {input.eval_classifier}", f"--eval-shards {set_dir(input.eval_shards)}"]
    if "eval_real_stats" in input.keys():
        args += [
            f"--eval-inception-weights {shlex.quote(EVAL.inception_weights)}",
            f"--eval-real-stats {input.eval_real_stats}",
        ]
        if EVAL.inception_sha256:
            args.append(f"--eval-inception-sha256 {EVAL.inception_sha256}")
    return " ".join(args)


def launch_args(stage):
    r = config["resources"][f"train_stage{stage}"]
    return (
        f"--nodes {r['nodes']} --ranks-per-node {r['ranks_per_node']} "
        f"--gpus-per-node {r['gpus']} --cpus-per-task {r['cpus_per_task']} "
        f"--stop-before-limit {stop_before_limit(r)}"
    )


def tracking_args(run_name):
    return (
        f"--tracking-uri {shlex.quote(tracking_uri())} --experiment {shlex.quote(config['mlflow']['experiment'])} "
        f"--run-name {shlex.quote(run_name)} --preset {config['preset']} --dataset-name {config['data']['source']}"
        + ("" if config["mlflow"].get("system_metrics", True) else " --no-system-metrics")
    )


def eval_resources():
    """Resources of the evaluation rules (GPU via `gpu` when configured)."""
    r = config["resources"]["evaluate"]
    res = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["cpus_per_task"]}
    if r["gpus"] > 0:
        res["gpu"] = r["gpus"]
    return res


def raw_inputs(wildcards):
    """The twin's completion marker, or the real CUB/bundle files (checked when parsing)."""
    if S.twin:
        return [f"{RAW}/twin.json"]
    names = ("filenames.pickle", "class_info.pickle", "char-CNN-RNN-embeddings.pickle")
    return [
        f"{S.cub_dir()}/images.txt",
        f"{S.cub_dir()}/bounding_boxes.txt",
        *(f"{S.bundle_dir()}/{split}/{name}" for split in ("train", "test") for name in names),
    ]


def stage1_network(wildcards):
    """Stage-II's starting point: this run's Stage-I network, or a configured existing one."""
    return config.get("stage1_generator") or rules.train_stage.output.network.format(stage=1)


def set_dir(path):
    """The shard-set directory of a manifest path."""
    return os.path.dirname(path)


EVAL = S.eval  # stackgan.config.EvalConfig: validated, every key set
HAVE_WEIGHTS = bool(EVAL.inception_weights)
COND_ACC = EVAL.conditional_accuracy and S.twin


def eval_inputs(wildcards):
    inputs = {
        "network": rules.train_stage.output.network.format(stage=wildcards.stage),
        "index": shard_file("index", "test"),
        "parent": rules.mlflow_parent.output[0],
    }
    if HAVE_WEIGHTS:
        inputs["real"] = rules.real_stats.output[0]
    if COND_ACC:
        inputs["classifier"] = rules.train_attribute_classifier.output.model
    return inputs


def eval_args(wildcards, input):
    """`stackgan evaluate` options from the eval config section."""
    args = [
        f"--captions-per-image {EVAL.captions_per_image}",
        f"--batch-size {EVAL.batch_size}",
        f"--seed {EVAL.seed}",
        f"--is-splits {EVAL.is_splits}",
        f"--kid-subsets {EVAL.kid_subsets}",
        f"--kid-subset-size {EVAL.kid_subset_size}",
        f"--grid-captions {EVAL.grid_captions}",
        f"--grid-samples {EVAL.grid_samples}",
    ]
    if EVAL.max_images:
        args.append(f"--max-images {EVAL.max_images}")
    if not EVAL.use_ema:
        args.append("--no-ema")
    if EVAL.channels_last:
        args.append("--channels-last")
    if EVAL.require_metrics:
        args.append("--require-metrics")
    if HAVE_WEIGHTS:
        args += [f"--inception-weights {shlex.quote(EVAL.inception_weights)}", f"--real-stats {input.real}"]
        if EVAL.inception_sha256:
            args.append(f"--inception-sha256 {EVAL.inception_sha256}")
        if EVAL.cub_classifier:
            args.append(f"--cub-classifier {shlex.quote(EVAL.cub_classifier)}")
    if COND_ACC:
        args.append(f"--attribute-classifier {input.classifier}")
    return " ".join(args)


def eval_launch(wildcards):
    r = config["resources"]["evaluate"]
    return f"--nodes 1 --ranks-per-node {max(1, r['gpus'])} --gpus-per-node {r['gpus']} --cpus-per-task {r['cpus_per_task']}"


def report_inputs(wildcards):
    """The stages' metrics, the pipeline config and, on the twin, the classifier's scores and
    the test index (for the paired Stage-II/Stage-I comparison)."""
    inputs = {
        "train": expand(str(rules.train_stage.output.metrics), stage=S.stages),
        "evals": expand(str(rules.evaluate.output.metrics), stage=S.eval_stages),
        "parent": rules.mlflow_parent.output[0],
        "parent_params": rules.mlflow_parent_params.output[0],
        "cfg": rules.write_pipeline_config.output[0],
    }
    if COND_ACC:
        inputs["classifier"] = rules.train_attribute_classifier.output.report
        inputs["test_index"] = shard_file("index", "test")
    return inputs
