"""Pipeline configuration: presets, schema, semantic checks, schema <-> dataclass agreement,
launcher.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import pytest
import yaml

from pipeline.launch import build_command, parse_time_left, rendezvous_port
from pipeline.settings import (
    BASE_CONFIG,
    PRESET_DIR,
    SCHEMA,
    PipelineConfigError,
    available_presets,
    coerce_cli_strings,
    deep_merge,
    merge_with_preset,
    resolve,
)
from stackgan.config import (
    ConfigError,
    EvalConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
)
from tests.helpers import wait_until


def test_presets_exist_and_resolve():
    assert {"paper", "demo", "smoke"} <= set(available_presets())
    for name in ("demo", "smoke"):
        s = resolve({"preset": name})
        assert s.run_configs[1]["stage"] == 1 and s.run_configs[2]["stage"] == 2
        assert s.twin


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(
        PipelineConfigError, match=r"unknown preset 'tiny'; available: .*demo.*paper.*smoke"
    ):
        resolve({"preset": "tiny"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"train": {"batchsize": 8}},
            r"train: Additional properties are not allowed \('batchsize'",
        ),
        ({"data": {"sorce": "twin"}}, r"data: Additional properties are not allowed \('sorce'"),
        ({"model": {"arch": "tf"}}, r"model.arch: 'tf' is not one of"),
        ({"stages": [2]}, r"stages: Stage-II needs Stage-I"),
        ({"eval": {"stages": [1, 2]}, "stages": [1]}, r"eval.stages: \[2\] not trained"),
        (
            {"resources": {"train_stage1": {"gpus": 8}}},
            r"resources.train_stage1.gpus: 8 GPUs per node requested, but resources.gpus_per_node",
        ),
        ({"train": {"lr_decay_factor": 0}}, r"train.lr_decay_factor"),
    ],
)
def test_bad_configs_fail_with_the_key(override, message):
    with pytest.raises(PipelineConfigError, match=message):
        resolve(deep_merge({"preset": "smoke"}, override))


def test_paper_preset_needs_cub_paths(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"data.root: required for data.source 'cub'"):
        resolve({"preset": "paper"})
    with pytest.raises(
        PipelineConfigError, match=r"data.bundle_dir: missing .*train/filenames.pickle"
    ):
        (tmp_path / "CUB_200_2011" / "images").mkdir(parents=True)
        for name in ("images.txt", "bounding_boxes.txt"):
            (tmp_path / "CUB_200_2011" / name).write_text("")
        resolve({"preset": "paper", "data": {"root": str(tmp_path)}})


def test_stage_overrides_merge_over_train():
    s = resolve({"preset": "smoke", "train": {"seed": 7}, "stage2": {"seed": 9}})
    assert s.run_configs[1]["train"]["seed"] == 7 and s.run_configs[2]["train"]["seed"] == 9


def test_a_stage_loss_section_overrides_the_shared_loss_of_that_stage_only():
    s = resolve(
        {
            "preset": "smoke",
            "loss": {"kl_weight": 0.5, "r1_gamma": 0.25},
            "stage2": {"seed": 9, "loss": {"r1_gamma": 1.0}},
        }
    )
    one, two = s.run_configs[1], s.run_configs[2]
    assert one["loss"]["r1_gamma"] == 0.25 and two["loss"]["r1_gamma"] == 1.0
    assert one["loss"]["kl_weight"] == two["loss"]["kl_weight"] == 0.5  # the rest is shared
    assert two["train"]["seed"] == 9 and "loss" not in two["train"]


def test_a_stage2_only_option_changes_the_stage2_run_config_alone():
    """Stage-I's run config (what decides whether Stage-I reruns) carries the defaults of the
    options only Stage-II reads, so changing one reruns Stage-II alone; a shared option
    still changes both."""
    from stackgan.config import STAGE2_ONLY_FIELDS, LossConfig, ModelConfig

    base = resolve({"preset": "demo"})
    changed = resolve(
        {
            "preset": "demo",
            "model": {"stage2_skip_base": "bilinear", "stage2_exact_consistency": False},
            "loss": {"stage_consistency": 5.0, "stage1_critic": 1.0},
        }
    )
    assert changed.run_configs[1] == base.run_configs[1]
    assert changed.run_configs[2] != base.run_configs[2]
    assert base.run_configs[2]["model"]["stage2_exact_consistency"] is True  # the demo's
    two = changed.run_configs[2]
    assert two["loss"]["stage1_critic"] == 1.0 and two["model"]["stage2_skip_base"] == "bilinear"
    one = base.run_configs[1]
    for section, default in (("model", ModelConfig()), ("loss", LossConfig())):
        for key in STAGE2_ONLY_FIELDS[section]:  # Stage-I's are the defaults, not the demo's
            assert one[section][key] == getattr(default, key), (section, key)
    assert one["model"]["stage2_skip"] is False and base.run_configs[2]["model"]["stage2_skip"]
    shared = resolve({"preset": "demo", "model": {"cond_dim": 32}})
    assert shared.run_configs[1] != base.run_configs[1]
    assert shared.run_configs[2] != base.run_configs[2]


def test_a_stage_loss_section_is_checked_like_the_shared_one():
    with pytest.raises(PipelineConfigError, match=r"stage2\.loss: Additional properties .*'r1'"):
        resolve({"preset": "smoke", "stage2": {"loss": {"r1": 1.0}}})
    with pytest.raises(PipelineConfigError, match=r"stage1\.loss\.r1_gamma: -1.0 is less than"):
        resolve({"preset": "smoke", "stage1": {"loss": {"r1_gamma": -1.0}}})
    # A cross-section rule broken only by the stage's override names that stage.
    with pytest.raises(
        PipelineConfigError, match=r"stage2\.loss.*loss\.contrastive: needs model\.d_projection"
    ):
        resolve({"preset": "smoke", "stage2": {"loss": {"contrastive": 1.0}}})


def test_a_stage_loss_value_from_the_command_line_gets_its_type():
    config = coerce_cli_strings({"stage2": {"loss": {"r1_gamma": "1", "mismatch": "hard"}}})
    assert config == {"stage2": {"loss": {"r1_gamma": 1, "mismatch": "hard"}}}


def _schema():
    return yaml.safe_load(SCHEMA.read_text())


def test_schema_matches_the_training_dataclasses():
    schema = _schema()
    props = schema["properties"]
    train_fields = set(schema["$defs"]["train_fields"]["properties"])
    assert train_fields == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(props["model"]["properties"]) == {f.name for f in dataclasses.fields(ModelConfig)}
    loss_fields = set(schema["$defs"]["loss_fields"]["properties"])
    assert loss_fields == {f.name for f in dataclasses.fields(LossConfig)}
    assert props["loss"]["$ref"] == "#/$defs/loss_fields"
    stage_fields = schema["$defs"]["stage_fields"]["properties"]
    assert set(stage_fields) == train_fields | {"loss"}
    assert stage_fields["loss"]["$ref"] == "#/$defs/loss_fields"
    assert props["stage1"]["$ref"] == props["stage2"]["$ref"] == "#/$defs/stage_fields"
    assert set(props["eval"]["properties"]) == {f.name for f in dataclasses.fields(EvalConfig)}


def _leaves(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_presets_state_only_what_differs_from_base():
    base = _leaves(yaml.safe_load(BASE_CONFIG.read_text()))
    assert "preset" not in base and "run" not in base
    for name in available_presets():
        overlay = _leaves(yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()))
        assert overlay["preset"] == name, name
        unknown = sorted(k for k in overlay if k not in base and k not in ("preset", "run"))
        repeated = sorted(k for k in overlay if k in base and overlay[k] == base[k])
        assert repeated == [], f"{name}.yaml repeats base.yaml: {repeated}"
        # Keys the base leaves out must be known to the schema (checked by resolve below).
        merged = merge_with_preset({"preset": name})
        assert all(k in _leaves(merged) for k in unknown), (name, unknown)


def test_eval_section_becomes_a_validated_dataclass():
    s = resolve({"preset": "smoke"})
    assert isinstance(s.eval, EvalConfig)
    assert s.eval == from_dict(EvalConfig, merge_with_preset({"preset": "smoke"})["eval"])
    assert (s.eval.captions_per_image, s.eval.max_images, s.eval.use_ema) == (2, 6, False)
    assert s.eval_stages == [1, 2]
    with pytest.raises(ConfigError, match=r"eval\.stages: expected distinct values"):
        from_dict(EvalConfig, {"stages": [1, 1]}, prefix="eval")
    with pytest.raises(ConfigError, match=r"eval\.kid_subsets: must be >= 1, got 0"):
        EvalConfig(kid_subsets=0)


def test_every_preset_sets_only_known_keys():
    for name in available_presets():
        resolve_target = {"preset": name}
        if name == "paper":
            continue  # needs real data paths; covered above
        resolve(resolve_target)


def test_launch_single_process_and_standalone():
    args = ["-m", "stackgan.cli.train", "--config", "c.yaml"]
    assert build_command(
        nodes=1,
        ranks_per_node=1,
        gpus_per_node=0,
        cpus_per_task=2,
        train_args=args,
        env={},
        python="py",
    ) == ["py", *args]
    cmd = build_command(
        nodes=1,
        ranks_per_node=4,
        gpus_per_node=4,
        cpus_per_task=8,
        train_args=args,
        env={},
        python="py",
    )
    assert cmd[:4] == ["py", "-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in cmd and any(
        a.startswith("--signals-to-handle=") and "SIGUSR1" in a for a in cmd
    )
    assert cmd[-len(args) :] == args


def test_launch_multi_node_uses_srun_and_c10d(tmp_path):
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    env = {"SLURM_JOB_ID": "123456", "PATH": str(tmp_path)}
    cmd = build_command(
        nodes=2,
        ranks_per_node=4,
        gpus_per_node=4,
        cpus_per_task=32,
        train_args=["-m", "x"],
        env=env,
        python="py",
    )
    assert cmd[0] == "srun"
    for flag in (
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
        "--gres=gpu:4",
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-id=123456",
    ):
        assert flag in cmd, flag
    assert any(
        a.startswith("--rdzv-endpoint=") and a.endswith(f":{rendezvous_port(123456)}") for a in cmd
    )
    assert rendezvous_port(123456) == 29500 + 456
    with pytest.raises(SystemExit, match="not a SLURM job"):
        build_command(
            nodes=2, ranks_per_node=1, gpus_per_node=0, cpus_per_task=1, train_args=["x"], env={}
        )


def test_launcher_outlives_a_stop_signal_and_returns_the_trainers_status(tmp_path):
    """SLURM may signal the launcher too: it ignores SIGTERM/SIGUSR1, waits for the command
    (which is not signalled by it) and exits with the command's status; 75 outside SLURM
    is reported, not requeued."""
    started = tmp_path / "started"
    child = (
        "import pathlib, signal, time; "
        "signal.signal(signal.SIGTERM, lambda *a: pathlib.Path('got-term').write_text('x')); "
        f"pathlib.Path({str(started)!r}).write_text('1'); time.sleep(1.5); raise SystemExit(75)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.launch", "--", "-c", child],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_until(started.exists, 30, "the command to start")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 75, out
    assert not (tmp_path / "got-term").exists()  # the launcher does not pass it on
    assert "not a SLURM job: run again to resume" in out


def test_launcher_reports_a_command_killed_by_a_signal(tmp_path):
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.launch", "--", "-c", code],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 128 + signal.SIGKILL, proc.stdout + proc.stderr


def test_data_text_encoder_keys_its_own_data_and_checks_its_file(tmp_path):
    from pipeline.settings import PipelineConfigError, data_key

    plain = resolve({"preset": "smoke"})
    twin = resolve({"preset": "smoke", "data": {"text_encoder": "twin"}})
    assert data_key(plain.config) != data_key(twin.config)
    assert "text_encoder" not in plain.config["data"] or not plain.config["data"]["text_encoder"]
    missing = f"char-cnn-rnn:{tmp_path}/missing.pt"
    with pytest.raises(PipelineConfigError, match=r"data.text_encoder: .*missing.pt does not"):
        resolve({"preset": "smoke", "data": {"text_encoder": missing}})
    t7 = tmp_path / "enc.t7"
    t7.write_bytes(b"")
    with pytest.raises(PipelineConfigError, match=r"is a \.t7; convert it first"):
        resolve({"preset": "smoke", "data": {"text_encoder": f"char-cnn-rnn:{t7}"}})
    with pytest.raises(PipelineConfigError, match="text_encoder"):
        resolve({"preset": "smoke", "data": {"text_encoder": "bert"}})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45", 45),
        ("9:58", 598),
        ("1:09:58", 4198),
        ("2-03:04:05", (2 * 24 + 3) * 3600 + 4 * 60 + 5),
        ("0:00\n", 0),
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("INVALID", None),
        ("", None),
    ],
)
def test_time_left_is_read_from_squeue_format(text, seconds):
    """squeue -o %L prints [days-]hours:minutes:seconds, minutes:seconds or seconds."""
    assert parse_time_left(text) == seconds


def test_the_benchmark_configs_resolve_over_their_preset():
    # bench/quality.yaml is merged over the demo preset: a demo change must not make it
    # invalid (e.g. the demo's Stage-II reusing fakes beside the bench's mode-seeking term)
    from stackgan.config import RunConfig

    bench = yaml.safe_load((PRESET_DIR.parents[2] / "bench" / "quality.yaml").read_text())
    s = resolve(bench)
    for stage in (1, 2):
        cfg = from_dict(RunConfig, s.run_configs[stage])
        assert cfg.loss.mode_seeking == 1.0 and cfg.g_step_fakes == "redraw"
        # the measured recipe keeps half the demo's contrastive weight (nineteenth round)
        assert cfg.loss.contrastive == 0.5
    assert s.run_configs[1]["train"]["max_steps"] == 6000
    assert s.run_configs[2]["train"]["max_steps"] == 300
    # its Stage-II keeps the Stage-I read-back exactly, as the demo's (twenty-first round)
    stage2 = from_dict(RunConfig, s.run_configs[2])
    assert stage2.model.stage2_skip_base == "projected"
    assert stage2.model.stage2_exact_consistency is True
    assert stage2.model.stage2_zero_init is False
