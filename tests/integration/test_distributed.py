"""DDP with 2 gloo ranks on CPU: consistency, gradient averaging, exact resume, signals, bf16."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from stackgan.training.control import PREEMPTED_EXIT_CODE
from stackgan.training.state import list_states
from tests.helpers import (
    ROOT,
    assert_state_equal,
    env,
    load,
    python_cmd,
    run,
    run_config,
    torchrun_cmd,
    train_args,
    write_config,
)

pytestmark = pytest.mark.distributed
WORKER = str(ROOT / "tests" / "integration" / "ddp_worker.py")


def test_two_ranks_end_bit_identical(tiny_shards, tmp_path):
    run(torchrun_cmd(2, WORKER, "consistency", str(tiny_shards / "train-64"), str(tmp_path)))
    r0, r1 = load(tmp_path / "rank0.pt"), load(tmp_path / "rank1.pt")
    assert_state_equal(r0, r1, "rank0 vs rank1")  # parameters and BN buffers
    assert any("running_mean" in k for k in r0["D"])  # buffers were really compared


@pytest.mark.parametrize("mode", ["gradient", "gradient_r1"])
def test_applied_gradient_is_the_mean_of_rank_gradients(tiny_shards, tmp_path, mode):
    """Also with loss.r1_gamma, whose double backward runs through the DDP-wrapped D."""
    run(torchrun_cmd(2, WORKER, mode, str(tiny_shards / "train-64"), str(tmp_path)))
    g0, g1 = load(tmp_path / "grad0.pt"), load(tmp_path / "grad1.pt")
    differs = 0
    for name in g0["ddp"]:
        mean = (g0["local"][name] + g1["local"][name]) / 2
        differs += not torch.equal(g0["local"][name], g1["local"][name])
        # DDP divides by the world size before summing: equal up to float rounding
        torch.testing.assert_close(g0["ddp"][name], mean, rtol=1e-5, atol=1e-7)
        assert torch.equal(g0["ddp"][name], g1["ddp"][name])  # every rank applies the same gradient
    assert differs > 0  # the ranks really had different data


def test_ranks_that_resume_from_different_steps_stop_and_the_placement_is_logged(
    tiny_shards, tmp_path
):
    proc = run(torchrun_cmd(2, WORKER, "resume", str(tiny_shards / "train-64"), str(tmp_path)))
    results = [json.loads((tmp_path / f"resume{r}.json").read_text()) for r in (0, 1)]
    for r, got in enumerate(results):
        assert got["equal"] == 40, got
        assert "unequal" not in got, f"rank {r} went on with a different state: {got}"
        assert "rank 0 on " in got["unequal_error"] and ": 40" in got["unequal_error"], got
        assert ": 20" in got["unequal_error"], got
    # rank 0 logs where every rank runs and the rendezvous address; and the agreed resume
    log = proc.stderr
    assert re.search(r"process group: gloo, 2 ranks on 1 host\(s\); rendezvous \S+:\d+ ", log), log
    assert "rank 0 on " in log and "rank 1 on " in log, log
    assert "all 2 ranks resumed at step 40" in log, log


def _kill_after_checkpoint(cmd: list[str], workdir: Path, step: int, timeout: float = 180) -> None:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not any(s >= step for s, _ in list_states(workdir)):
            if proc.poll() is not None:
                raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint in time")
            time.sleep(0.02)
    finally:
        # SIGKILL the launcher and every worker at once (torchrun's workers outlive a killed
        # agent; under SLURM the job's process tracking kills them all).
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            proc.wait()  # reap the launcher ourselves (keeps its exit status)
            psutil.wait_procs(tree[1:], timeout=30)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _stage1_command(
    cfg_path: Path, tiny_shards: Path, tmp_path: Path, nproc: int
) -> Callable[[str], list[str]]:
    """``name -> argv`` of a Stage-I run on the tiny shards, work dir and network named
    ``name`` under ``tmp_path``: plain python for 1 rank, torchrun for more."""

    def cmd(name: str) -> list[str]:
        args = train_args(
            cfg_path, tiny_shards / "train-64", tmp_path / name, tmp_path / f"{name}.pt"
        )
        return torchrun_cmd(nproc, *args) if nproc > 1 else python_cmd(*args)

    return cmd


@pytest.mark.slow
@pytest.mark.parametrize(
    ("nproc", "amp", "steps"), [(1, "fp32", 120), (2, "fp32", 120), (1, "fp16", 40)]
)
def test_sigkill_and_restart_is_bit_identical(tiny_shards, tmp_path, nproc, amp, steps):
    """fp16 also covers the GradScaler states in the checkpoint (fewer steps: CPU fp16 is
    slow)."""
    cfg = run_config(
        1,
        amp=amp,
        batch_size=3,
        epochs=100,
        max_steps=steps,
        checkpoint_every_steps=5,
        deterministic=True,
        keep_checkpoints=40,
        d_augment=["translation", "cutout"],  # its per-rank stream must resume exactly too
        num_workers=2,  # loader workers must not shift the resumed run's random streams
    )
    cfg_path = write_config(tmp_path / "c.yaml", cfg)

    cmd = _stage1_command(cfg_path, tiny_shards, tmp_path, nproc)
    run(cmd("straight"))
    _kill_after_checkpoint(cmd("killed"), tmp_path / "killed", step=10)
    assert not (tmp_path / "killed.pt").exists()
    killed_at = max(s for s, _ in list_states(tmp_path / "killed"))
    assert 10 <= killed_at < steps
    proc = run(cmd("killed"))
    assert f"at step {killed_at}" in proc.stderr + proc.stdout
    a, b = load(tmp_path / "straight.pt"), load(tmp_path / "killed.pt")
    assert_state_equal(a["G"], b["G"], "G")
    sa, sb = (
        load(tmp_path / "straight" / f"training-state-{steps:08d}.pt"),
        load(tmp_path / "killed" / f"training-state-{steps:08d}.pt"),
    )
    for key in ("G", "D", "opt_g", "opt_d", "rank_buffers"):
        assert_state_equal(sa[key], sb[key], key)


@pytest.mark.slow
def test_signal_checkpoints_exits_and_resumes(tiny_shards, tmp_path):
    cfg_path = write_config(
        tmp_path / "c.yaml",
        run_config(1, batch_size=3, epochs=1000, max_steps=400, checkpoint_every_steps=0),
    )
    args = train_args(
        cfg_path,
        tiny_shards / "train-64",
        tmp_path / "w",
        tmp_path / "n.pt",
        "--metrics-out",
        str(tmp_path / "m.json"),
    )
    cmd = [*torchrun_cmd(2, *args)]
    cmd.insert(
        cmd.index("--standalone"), "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    )
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGUSR1)  # the torchrun agent forwards it to both workers
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert f"exiting with code {PREEMPTED_EXIT_CODE}" in out
    states = list_states(tmp_path / "w")
    assert len(states) == 1 and 5 <= states[0][0] < 400
    stopped_at = states[0][0]
    assert not (tmp_path / "n.pt").exists()

    resumed = write_config(
        tmp_path / "c.yaml", run_config(1, batch_size=3, epochs=1000, max_steps=stopped_at + 4)
    )
    proc2 = run(
        torchrun_cmd(
            2,
            *train_args(
                resumed,
                tiny_shards / "train-64",
                tmp_path / "w",
                tmp_path / "n.pt",
                "--metrics-out",
                str(tmp_path / "m.json"),
            ),
        )
    )
    assert "resumed from" in proc2.stderr + proc2.stdout
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["resumed_from"] == stopped_at and summary["steps"] == stopped_at + 4
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] == stopped_at + 4 and stopped_at + 1 in steps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_autocast_agrees_with_fp32(tiny_shards, dtype):
    """bf16 and fp16 autocast vs fp32 on the same batch and noise (fp16 with a loss scale
    of 2**10 and unscaled gradients, as GradScaler applies it).

    Tolerances: losses within 3 % (relative); the full gradient vector with cosine > 0.9 and
    norm within 10 %; every parameter whose fp32 gradient is not ~0 with cosine > 0.85.
    Why: bf16 keeps 8 mantissa bits (~0.4 % rounding per op); through ~15 conv/BN layers at
    batch 8 that compounds to a few % of gradient noise (measured: cosine 0.93-0.99 per
    parameter, losses < 1 %). Gradients that are mathematically zero (a bias right before
    BatchNorm) are pure rounding noise in both precisions and are excluded.
    """
    from stackgan.config import RunConfig, from_dict
    from stackgan.data.imagesets import to_float_images
    from stackgan.data.loader import spec_from_set, train_loader
    from stackgan.losses import d_loss, g_loss, kl_loss
    from stackgan.networks import d_condition
    from stackgan.stages import build_stage

    cfg = from_dict(RunConfig, run_config(1, model={"gf_dim": 32, "df_dim": 16}))
    torch.manual_seed(0)
    stage = build_stage(cfg)
    batch = next(
        train_loader(spec_from_set(tiny_shards / "train-64", batch_size=8, num_workers=0), 0)
    )
    real, emb = to_float_images(batch["image"]), batch["emb"]
    z = torch.randn(8, cfg.model.z_dim, generator=torch.Generator().manual_seed(1))

    def losses_and_grads(dtype):
        scale = 2.0**10 if dtype == torch.float16 else 1.0
        stage.G.zero_grad()
        stage.D.zero_grad()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            fake, mu, logvar = stage.G(emb, z)
            cond = d_condition(cfg.model, emb, mu)
            out_real, out_fake = stage.D(real, cond, cond[1:]), stage.D(fake, cond)
            ld, _ = d_loss(out_real.logits, out_real.wrong_logits, out_fake.logits)
            lg = g_loss(out_fake.logits) + 2.0 * kl_loss(mu.float(), logvar.float())
        ((ld + lg) * scale).backward()
        params = [*stage.G.named_parameters(), *stage.D.named_parameters()]
        return torch.stack([ld, lg]).detach().float(), {
            n: p.grad.detach().float().clone() / scale for n, p in params
        }

    (l32, g32), (l16, g16) = losses_and_grads(None), losses_and_grads(dtype)
    assert all(torch.isfinite(g).all() for g in g16.values())
    torch.testing.assert_close(l16, l32, rtol=0.03, atol=0.0)
    cos = torch.nn.functional.cosine_similarity
    flat32, flat16 = (
        torch.cat([g.flatten() for g in g32.values()]),
        torch.cat([g.flatten() for g in g16.values()]),
    )
    assert cos(flat16, flat32, dim=0).item() > 0.9
    assert abs(flat16.norm() / flat32.norm() - 1) < 0.10
    checked = 0
    for name, g in g32.items():
        if g.norm() > 1e-4:
            checked += 1
            assert cos(g16[name].flatten(), g.flatten(), dim=0).item() > 0.85, name
    assert checked > 40


@pytest.mark.parametrize("stage", [1, 2])
def test_in_training_evaluation_two_ranks_equals_one_process(
    stage, tiny_shards, tiny_classifier, tiny_stage1_network, tiny_real_stats, tmp_path
):
    """Sharded over 2 ranks, the in-training evaluation (attribute metrics and the
    small-sample FID, here with the TEST extractor in place of Inception) gives the numbers
    one process computes from the network file, at every evaluation point, and training
    finishes."""
    from stackgan.distributed import DistInfo
    from stackgan.evaluation.reference import ExtractorSpec
    from stackgan.monitor import TrainingMonitor, monitor_seed
    from stackgan.sampling import Sampler

    cfg = run_config(
        stage,
        max_steps=4,
        eval_every=2,
        eval_captions=5,
        eval_samples_per_caption=2,
        eval_batch_size=3,  # 10 requests in 4 chunks: uneven shards
    )
    eval_args = [
        "--eval-classifier",
        str(tiny_classifier),
        "--eval-index",
        str(tiny_shards / "test-index.h5"),
        "--eval-shards",
        str(tiny_shards / "test-64"),
        "--eval-test-extractor",
        "--eval-real-stats",
        str(tiny_real_stats),
    ]
    if stage == 2:
        eval_args += ["--stage1-generator", str(tiny_stage1_network[0])]
    data = tiny_shards / f"train-{64 if stage == 1 else 256}"
    args = train_args(
        write_config(tmp_path / "c.yaml", cfg),
        data,
        tmp_path / "w",
        tmp_path / "net.pt",
        *eval_args,
    )
    run(torchrun_cmd(2, *args), timeout=300)
    rows = [
        json.loads(line)
        for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
        if "eval.body_accuracy" in line
    ]
    assert [r["step"] for r in rows] == [2, 4]  # every eval_every steps; the end is step 4
    monitor = TrainingMonitor.from_files(
        classifier=tiny_classifier,
        index=tiny_shards / "test-index.h5",
        real_set=tiny_shards / "test-64",
        captions=5,
        samples_per_caption=2,
        batch_size=3,
        seed=monitor_seed(0),
        inception=ExtractorSpec(test_extractor=True),
        real_stats=tiny_real_stats,
    )
    direct = monitor.evaluate(Sampler.load(tmp_path / "net.pt"), DistInfo())
    expected = {"eval.body_accuracy", "eval.wing_accuracy", "eval.twin_fid", "eval.diversity"}
    expected |= {"eval.inception_fid"}
    if stage == 2:
        expected |= {"eval.consistency_attributes", "eval.consistency_lowfreq"}
    assert expected <= set(direct)
    for key, value in direct.items():
        if key != "eval.seconds":
            assert rows[-1][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert rows[-1]["eval.diversity"] >= 0 and rows[-1]["eval.twin_fid"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_to_the_whole_process_group_saves_the_signal_step(tiny_shards, tmp_path, nproc):
    """SLURM's preemption, time limit and ``scancel --signal=TERM --full`` signal every
    process of the job: launcher, ranks and their loader workers. The ranks must still
    save their state at the signal step, exit 75, and resume bit-identically."""
    cfg = run_config(1, batch_size=3, epochs=1000, max_steps=160, num_workers=2, deterministic=True)
    cfg_path = write_config(tmp_path / "c.yaml", cfg)

    cmd = _stage1_command(cfg_path, tiny_shards, tmp_path, nproc)
    run(cmd("straight"))
    proc = subprocess.Popen(
        cmd("signalled"),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a SLURM job step's processes
    )
    metrics = tmp_path / "signalled" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 20):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "training did not reach step 20 in time"
        time.sleep(0.05)
    group = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    launcher = 0 if nproc == 1 else 1  # torchrun's agent
    assert len(group) >= launcher + nproc * 3  # + the ranks, each with its 2 loader workers
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    if nproc == 1:
        assert proc.returncode == PREEMPTED_EXIT_CODE, out
    assert "DataLoader worker" not in out, out
    assert out.count(f"exiting with code {PREEMPTED_EXIT_CODE}") >= 1, out
    states = list_states(tmp_path / "signalled")
    assert len(states) == 1, states  # no periodic checkpoints: this is the signal's state
    signal_step = states[0][0]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert 20 <= signal_step < 160 and signal_step == max(logged)
    assert not (tmp_path / "signalled.pt").exists()

    proc2 = run(cmd("signalled"))
    assert f"at step {signal_step}" in proc2.stderr + proc2.stdout
    a, b = load(tmp_path / "straight.pt"), load(tmp_path / "signalled.pt")
    assert_state_equal(a["G"], b["G"], "G")
