"""``stackgan summary``: parameter counts and FLOP counting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stackgan.cli.summary import main
from stackgan.config import ModelConfig
from stackgan.networks import build_networks, count_params
from stackgan.summary import network_flops, training_step_flops

TINY_ARGS = ["--gf-dim", "16", "--df-dim", "8", "--cond-dim", "16", "--text-dim", "32"]
TINY_ARGS += ["--z-dim", "8", "--d-text-dim", "16"]
TINY = {"gf_dim": 16, "df_dim": 8, "cond_dim": 16, "d_text_dim": 16, "text_dim": 32, "z_dim": 8}


def conv_flops(cin: int, cout: int, k: int, out_size: int) -> int:
    return 2 * cin * cout * k * k * out_size * out_size


def test_forward_flops_match_a_hand_count():
    """pytorch preset, tiny widths: every conv and FC written out by hand."""
    cfg = ModelConfig(arch="pytorch", **TINY)
    d, c, t, z, ngf = 8, 16, 32, 8, 16 * 8
    d1 = (
        conv_flops(3, d, 4, 32)
        + conv_flops(d, 2 * d, 4, 16)
        + conv_flops(2 * d, 4 * d, 4, 8)
        + conv_flops(4 * d, 8 * d, 4, 4)
        + conv_flops(8 * d + c, 8 * d, 3, 4)  # joint conv on [features, tiled mu]
        + conv_flops(8 * d, 1, 4, 1)  # logit
    )
    g1 = (
        2 * t * 2 * c  # CA FC
        + 2 * (z + c) * ngf * 16  # FC to 4x4
        + conv_flops(ngf, ngf // 2, 3, 8)
        + conv_flops(ngf // 2, ngf // 4, 3, 16)
        + conv_flops(ngf // 4, ngf // 8, 3, 32)
        + conv_flops(ngf // 8, ngf // 16, 3, 64)
        + conv_flops(ngf // 16, 3, 3, 64)
    )
    flops = network_flops(cfg, batch=3)
    assert flops["stage1_d"]["forward_flops_per_image"] == d1
    assert flops["stage1_g"]["forward_flops_per_image"] == g1


@pytest.mark.parametrize("arch", ["paper", "pytorch"])
def test_meta_counts_equal_real_cpu_counts(arch):
    cfg = ModelConfig(arch=arch, **TINY)
    assert network_flops(cfg, 2, device="meta") == network_flops(cfg, 2, device="cpu")
    meta = training_step_flops(cfg, 2, 2, device="meta")
    assert meta == training_step_flops(cfg, 2, 2, device="cpu")


@pytest.mark.parametrize("stage", [1, 2])
def test_training_step_is_one_d_step_and_one_g_step(stage):
    cfg = ModelConfig(arch="pytorch", **TINY)
    batch = 4
    reuse = training_step_flops(cfg, stage, batch)
    redraw = training_step_flops(cfg, stage, batch, g_step_fakes="redraw")
    fwd = network_flops(cfg, batch)
    g_forward = fwd["stage1_g"]["forward_flops_per_image"] * batch
    if stage == 2:  # the frozen Stage-I G runs before the Stage-II G
        g_forward += fwd["stage2_g"]["forward_flops_per_image"] * batch
    assert reuse["total"] == reuse["d_step"] + reuse["g_step"]
    assert reuse["per_image"] == reuse["total"] / batch
    # redraw = the D step makes its own fakes (no grad); the G step is unchanged
    assert redraw["d_step"] - reuse["d_step"] == g_forward
    assert redraw["g_step"] == reuse["g_step"]
    # D step = D forward on real (+ the wrong-pair head) and on fake, each with a backward
    # of about twice its forward (weight + input gradients; none for the image input)
    d_fwd = fwd[f"stage{stage}_d"]["forward_flops_per_image"] * batch
    assert 5 * d_fwd < reuse["d_step"] < 6.5 * d_fwd
    with pytest.raises(ValueError, match="batch must be >= 2"):
        training_step_flops(cfg, stage, 1)


@pytest.mark.parametrize("arch", ["paper", "pytorch"])
def test_cli_json_on_tiny_widths(arch, capsys):
    assert main(["--arch", arch, *TINY_ARGS, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = ModelConfig(arch=arch, **TINY)
    for stage in (1, 2):
        G, D = build_networks(cfg, stage)
        assert out["networks"][f"stage{stage}_g"]["params"] == count_params(G)
        assert out["networks"][f"stage{stage}_d"]["params"] == count_params(D)
        assert out["train_step"][f"stage{stage}"]["total"] > 0
    assert out["model"]["arch"] == arch and out["batch"] == 2


@pytest.mark.parametrize(
    ("arch", "counts"),
    [
        ("paper", ["14,264,192", "4,029,824", "26,290,080", "48,603,520"]),
        ("pytorch", ["10,301,248", "5,715,713", "26,290,080", "71,269,122"]),
    ],
)
def test_cli_full_size_prints_reference_counts(arch, counts, capsys):
    assert main(["--arch", arch]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith(("Stage-I ", "Stage-II "))]
    labels = ["Stage-I G", "Stage-I D", "Stage-II G", "Stage-II D"]
    for label, count in zip(labels, counts, strict=True):
        row = next(r for r in rows if r.startswith(label + " "))
        assert row.split()[2] == count


def test_cli_errors_and_pytorch_cond_dim_override(capsys):
    assert main(["--arch", "paper", "--batch", "1"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert main(["--arch", "paper", "--gf-dim", "12"]) == 2  # not a multiple of 8
    assert "gf_dim" in capsys.readouterr().err
    # pytorch conditions D on mu: d_text_dim follows --cond-dim
    assert main(["--arch", "pytorch", *TINY_ARGS[:8], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["d_text_dim"] == 16


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "stackgan.cli.summary", "--arch", "pytorch", *TINY_ARGS, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(proc.stdout)["networks"]["stage2_d"]["params"] > 0


def test_the_flop_count_refuses_the_r1_penalty_by_name():
    from stackgan.config import LossConfig

    cfg = ModelConfig(arch="paper", **TINY)
    with pytest.raises(ValueError, match=r"loss\.r1_gamma"):
        training_step_flops(cfg, 1, 2, loss_cfg=LossConfig(r1_gamma=1.0))
