"""The training loop on tiny networks: learning signal, Stage-II freezing, guards, generate."""

from __future__ import annotations

import json
import math
import re
import subprocess

import numpy as np
import pytest
import torch

from stackgan.config import ConfigError, RunConfig, from_dict
from stackgan.distributed import DistInfo
from stackgan.networkfile import read_network
from stackgan.stages import build_stage, load_stage1_critic
from stackgan.training.control import NonFiniteLossError
from stackgan.training.loop import training_loop
from stackgan.training.schedule import check_runtime_config, learning_rates
from tests.helpers import TRAIN_METRICS, python_cmd, run, run_config, train_args, write_config


@pytest.fixture(scope="module")
def stage1_network(tiny_stage1_network):
    return tiny_stage1_network


def test_short_training_moves_losses_and_stays_finite(stage1_network):
    out, tmp = stage1_network
    rows = [json.loads(line) for line in (tmp / "work" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 15))
    for key in sorted(TRAIN_METRICS):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert (
        len({round(r["loss_d"], 6) for r in rows}) > 5
        and len({round(r["loss_g"], 6) for r in rows}) > 5
    )
    summary = json.loads((tmp / "m.json").read_text())
    assert summary["steps"] == 14 and summary["global_batch"] == 4
    net = read_network(out)
    assert net.stage == 1 and net.step == 14
    # the weights moved away from their initialisation
    torch.manual_seed(0)
    fresh = build_stage(from_dict(RunConfig, run_config(1))).G
    moved = [
        not torch.equal(fresh.state_dict()[k], v) for k, v in net.G.items() if v.is_floating_point()
    ]
    assert all(moved)


def _batches(shard_dir, cfg, nan_at=None):
    from stackgan.data.loader import spec_from_set, train_loader

    spec = spec_from_set(
        shard_dir, batch_size=cfg.train.batch_size, num_workers=0, caption_mode="mean4"
    )

    def make(start):
        for batch in train_loader(spec, start):
            if nan_at is not None and int(batch["step"]) == nan_at:
                batch["emb"][0, 0] = float("nan")
            yield batch

    return spec.steps_per_epoch, make


@pytest.mark.parametrize("frozen_bn", ["eval", "train"])
def test_stage2_keeps_stage1_frozen(stage1_network, tiny_shards, tmp_path, frozen_bn):
    cfg = from_dict(RunConfig, run_config(2, max_steps=3, frozen_stage1_bn=frozen_bn))
    torch.manual_seed(0)
    stage = build_stage(cfg, stage1_network[0])
    g1_before = {k: v.clone() for k, v in stage.frozen_g1.state_dict().items()}
    g1_params = {id(p) for p in stage.frozen_g1.parameters()}
    assert all(not p.requires_grad for p in stage.frozen_g1.parameters())
    seen_opt_params: list[set[int]] = []
    real_adam = torch.optim.Adam

    def spy_adam(params, *args, **kwargs):
        params = list(params)
        seen_opt_params.append({id(p) for p in params})
        return real_adam(params, *args, **kwargs)

    steps, make = _batches(tiny_shards / "train-256", cfg)
    torch.optim.Adam = spy_adam  # type: ignore[misc]
    try:
        training_loop(
            cfg=cfg,
            stage=stage,
            make_data=make,
            steps_per_epoch=steps,
            workdir=tmp_path / "w",
            out_network=tmp_path / "n2.pt",
            info=DistInfo(),
        )
    finally:
        torch.optim.Adam = real_adam  # type: ignore[misc]
    assert len(seen_opt_params) == 2 and all(not (s & g1_params) for s in seen_opt_params)
    after = stage.frozen_g1.state_dict()
    for name, before in g1_before.items():
        is_stat = "running_" in name or "num_batches" in name
        if frozen_bn == "train" and is_stat:
            continue  # the reference's train-mode BN drift changes statistics, never weights
        assert torch.equal(before, after[name]), name
    if frozen_bn == "train":
        assert any(
            not torch.equal(g1_before[k], after[k]) for k in g1_before if "running_mean" in k
        )
    net2 = read_network(tmp_path / "n2.pt")
    assert net2.stage == 2 and net2.G1 is not None and net2.stage1["sha256"]
    assert "G1" in net2.to_payload()


def test_stage1_critic_is_the_frozen_stage1_d_and_changes_stage2(
    stage1_network, tiny_shards, tmp_path
):
    """loss.stage1_critic: Stage-II loads the Stage-I file's D, frozen and in eval mode, never
    changes it, logs the term every step, and trains another G2 than without it."""
    d1 = read_network(stage1_network[0]).discriminator_weights()
    raw = {**run_config(2, max_steps=3), "loss": {"stage1_critic": 1.0}}
    cfg = from_dict(RunConfig, raw)
    stage = build_stage(cfg, stage1_network[0])
    assert stage.critic is not None and not stage.critic.training
    assert all(not p.requires_grad for p in stage.critic.parameters())
    steps, make = _batches(tiny_shards / "train-256", cfg)
    training_loop(
        cfg=cfg,
        stage=stage,
        make_data=make,
        steps_per_epoch=steps,
        workdir=tmp_path / "direct",
        out_network=tmp_path / "direct.pt",
        info=DistInfo(),
    )
    after = stage.critic.state_dict()
    assert all(torch.equal(v, after[k].cpu()) for k, v in d1.items())
    assert build_stage(from_dict(RunConfig, run_config(2)), stage1_network[0]).critic is None

    finals = {}
    for weight in (0.0, 1.0):
        work = tmp_path / f"w{weight}"
        conf = write_config(tmp_path / f"{weight}.yaml", {**raw, "loss": {"stage1_critic": weight}})
        extra = ("--stage1-generator", str(stage1_network[0]))
        run(python_cmd(*train_args(conf, tiny_shards / "train-256", work, work / "n.pt", *extra)))
        rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert all(("stage1_critic" in r) == (weight > 0) for r in rows)
        if weight > 0:
            assert all(math.isfinite(r["stage1_critic"]) and r["stage1_critic"] > 0 for r in rows)
        finals[weight] = read_network(work / "n.pt").G
    assert any(not torch.equal(v, finals[1.0][k]) for k, v in finals[0.0].items())


def test_stage1_critic_needs_a_paper_stage1_file_that_kept_its_d(stage1_network, tmp_path):
    from dataclasses import replace

    from stackgan.networkfile import write_network

    cfg = from_dict(RunConfig, {**run_config(2), "loss": {"stage1_critic": 1.0}})
    net = read_network(stage1_network[0])
    write_network(tmp_path / "old.pt", replace(net, D=None))
    with pytest.raises(ConfigError, match=r"loss.stage1_critic: .*old.pt has no Stage-I discrim"):
        build_stage(cfg, tmp_path / "old.pt")
    write_network(tmp_path / "pt.pt", replace(net, model={**net.model, "arch": "pytorch"}))
    with pytest.raises(ConfigError, match=r"loss.stage1_critic: .*pt.pt is a 'pytorch' Stage-I"):
        load_stage1_critic(tmp_path / "pt.pt")


def test_non_finite_loss_names_the_step(tiny_shards, tmp_path):
    cfg = from_dict(RunConfig, run_config(1, max_steps=6))
    torch.manual_seed(0)
    stage = build_stage(cfg)
    steps, make = _batches(tiny_shards / "train-64", cfg, nan_at=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 \(epoch 0\)"):
        training_loop(
            cfg=cfg,
            stage=stage,
            make_data=make,
            steps_per_epoch=steps,
            workdir=tmp_path,
            out_network=tmp_path / "n.pt",
            info=DistInfo(),
        )
    assert not (tmp_path / "n.pt").exists()


def test_impossible_configs_fail_before_compute(tiny_shards, stage1_network, tmp_path):
    cases = [
        (
            run_config(2),
            tiny_shards / "train-256",
            [],
            "Stage-II needs the Stage-I generator|--stage1-generator is required",
        ),
        (
            run_config(1),
            tiny_shards / "train-256",
            [],
            "holds 256 px images; Stage-1 trains on 64 px",
        ),
        (run_config(1, bn="sync"), tiny_shards / "train-64", [], "SyncBatchNorm\\) needs CUDA"),
        (run_config(1, bogus=1), tiny_shards / "train-64", [], r"unknown key\(s\) \['bogus'\]"),
        (
            run_config(2),
            tiny_shards / "train-256",
            ["--stage1-generator", str(tmp_path / "missing.pt")],
            "missing.pt not found",
        ),
        (
            run_config(1, batch_size=64),
            tiny_shards / "train-64",
            [],
            "cannot fill one global batch",
        ),
    ]
    for i, (cfg, data, extra, message) in enumerate(cases):
        path = write_config(tmp_path / f"c{i}.yaml", cfg)
        proc = run(
            python_cmd(*train_args(path, data, tmp_path / f"w{i}", tmp_path / f"n{i}.pt", *extra)),
            check=False,
        )
        assert proc.returncode == 2, (message, proc.stderr[-2000:])
        assert re.search(message, proc.stderr), (message, proc.stderr[-2000:])
        assert not (tmp_path / f"w{i}" / "metrics.jsonl").exists()  # no step was taken


def test_runtime_config_checks_directly():
    with pytest.raises(ConfigError, match="needs CUDA"):
        check_runtime_config(from_dict(RunConfig, run_config(1, bn="sync")), torch.device("cpu"))


def test_learning_rate_schedule():
    cfg = from_dict(
        RunConfig, {"stage": 1, "train": {"lr_decay_epochs": 100, "lr_g": 2e-4, "lr_d": 1e-4}}
    )
    assert learning_rates(cfg, 0) == (2e-4, 1e-4)
    assert learning_rates(cfg, 99) == (2e-4, 1e-4)
    assert learning_rates(cfg, 100) == (1e-4, 5e-5)
    assert learning_rates(cfg, 599)[0] == pytest.approx(
        2e-4 * 0.5**5
    )  # paper: 5 halvings in 600 epochs


def test_generate_is_deterministic(stage1_network, tiny_shards, tmp_path):
    net = stage1_network[0]
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        args = [
            "--network",
            str(net),
            "--embeddings",
            str(tiny_shards / "test-index.h5"),
            "--limit",
            "3",
            "--samples",
            "2",
            "--seed",
            seed,
            "--out",
            str(tmp_path / name),
        ]
        run(python_cmd("-m", "stackgan.cli.generate", *args))
        outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.png"))})
    assert len(outs[0]) == 7  # 3 embeddings x 2 samples + grid
    assert outs[0] == outs[1]
    assert outs[0]["00000_0.png"] != outs[2]["00000_0.png"]
    assert outs[0]["00000_0.png"] != outs[0]["00000_1.png"]


def test_generate_from_npy(stage1_network, tmp_path):
    emb = np.random.default_rng(0).standard_normal((2, 1024)).astype(np.float32)
    np.save(tmp_path / "e.npy", emb)
    run(
        python_cmd(
            "-m",
            "stackgan.cli.generate",
            "--network",
            str(stage1_network[0]),
            "--embeddings",
            str(tmp_path / "e.npy"),
            "--out",
            str(tmp_path / "g"),
        )
    )
    assert sorted(p.name for p in (tmp_path / "g").glob("*.png")) == [
        "00000_0.png",
        "00001_0.png",
        "grid.png",
    ]


@pytest.mark.parametrize("d_batch", ["joint", "separate"])
def test_contrastive_and_mode_seeking_terms_train_and_are_logged(tiny_shards, tmp_path, d_batch):
    """loss.contrastive, loss.mode_seeking, loss.text_interpolation and loss.r1_gamma: the
    loop runs them (both D batch layouts), logs the terms every step, and they change the
    trajectory (the G step draws extra fakes, some for caption midpoints)."""
    base = run_config(1, {"d_projection": True}, max_steps=4, d_batch=d_batch)
    finals = {}
    for name, loss in [
        ("plain", {}),
        (
            "both",
            {"contrastive": 1.0, "mode_seeking": 1.0, "text_interpolation": 0.5, "r1_gamma": 1.0},
        ),
    ]:
        cfg = write_config(tmp_path / f"{name}.yaml", {**base, "loss": loss})
        work = tmp_path / name
        run(python_cmd(*train_args(cfg, tiny_shards / "train-64", work, work / "n.pt")))
        rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        keys = {"contrastive_d", "contrastive_g", "mode_seeking", "r1"}
        if loss:
            for r in rows:
                assert keys <= set(r), sorted(r)
                assert all(math.isfinite(r[k]) and r[k] >= 0 for k in keys)
        else:
            assert not keys & set(rows[0])
        finals[name] = read_network(work / "n.pt").G
    differ = [not torch.equal(v, finals["both"][k]) for k, v in finals["plain"].items()]
    assert any(differ)


def test_inception_fid_alone_is_the_real_cub_in_training_evaluation(
    tiny_shards, tiny_real_stats, tmp_path
):
    """Without the twin classifier (real CUB), the in-training evaluation is the small-sample
    FID alone: against the real statistics, on the fixed requests, equal to an independent
    computation (scipy's sqrtm) from the network file; the TEST extractor stands in for the
    Inception weights that cannot be downloaded here."""
    import h5py
    from scipy import linalg

    from stackgan.metrics.extractors import TestExtractor
    from stackgan.monitor import load_requests, monitor_seed
    from stackgan.sampling import Sampler, shard_chunks

    cfg = run_config(
        1, max_steps=2, eval_every=2, eval_captions=4, eval_samples_per_caption=2, eval_batch_size=3
    )
    index = tiny_shards / "test-index.h5"
    args = train_args(
        write_config(tmp_path / "c.yaml", cfg),
        tiny_shards / "train-64",
        tmp_path / "w",
        tmp_path / "n.pt",
        "--eval-index",
        str(index),
        "--eval-test-extractor",
        "--eval-real-stats",
        str(tiny_real_stats),
        "--metrics-out",
        str(tmp_path / "m.json"),
    )
    proc = run(python_cmd(*args))
    assert "Inception FID (small sample)" in proc.stderr + proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval.inception_fid" in r]
    assert [r["step"] for r in evals] == [2]
    assert not any(k.startswith("eval.body") or k == "eval.twin_fid" for k in evals[0])
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["eval_history"][0]["eval.inception_fid"] == evals[0]["eval.inception_fid"]

    sampler = Sampler.load(tmp_path / "n.pt")
    requests = load_requests(index, 4, 2, labels=False)
    assert requests.labels is None
    images = torch.cat(
        [
            sampler.sample_chunk(requests.embeddings[a:b], c, monitor_seed(0)).final
            for c, (a, b) in shard_chunks(len(requests), 3, 0, 1)
        ]
    )
    with torch.no_grad():
        fake = TestExtractor(seed=0)(images)[0].double().numpy()
    with h5py.File(tiny_real_stats) as h5:
        real = h5["features"][:].astype(np.float64)
    m1, m2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    want = (
        ((m1 - m2) ** 2).sum()
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    )
    assert evals[0]["eval.inception_fid"] == pytest.approx(want, rel=1e-4)


def test_in_training_evaluation_needs_a_classifier_or_inception(tiny_shards, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", run_config(1, max_steps=2, eval_every=1))
    data, index = tiny_shards / "train-64", str(tiny_shards / "test-index.h5")
    proc = run(
        python_cmd(
            *train_args(cfg, data, tmp_path / "w", tmp_path / "n.pt", "--eval-index", index)
        ),
        check=False,
    )
    assert proc.returncode == 2
    assert "needs --eval-classifier (twin) or --eval-inception-weights" in proc.stderr
    proc = run(
        python_cmd(
            *train_args(
                cfg, data, tmp_path / "w", tmp_path / "n.pt", "--eval-index", index,
                "--eval-test-extractor",
            )
        ),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--eval-real-stats" in proc.stderr


def test_generate_from_sentences(stage1_network, tmp_path):
    """``generate --text``: the sentences go through the text encoder, the grid has one
    captioned row per sentence, and the same arguments give the same bytes."""
    from PIL import Image

    sentences = ["a small bird with red wings and a blue belly.", "a grey bird with white wings."]
    args = ["--network", str(stage1_network[0]), "--encoder", "twin", "--samples", "3"]
    for s in sentences:
        args += ["--text", s]
    outs = []
    for name in ("a", "b"):
        run(python_cmd("-m", "stackgan.cli.generate", *args, "--out", str(tmp_path / name)))
        outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.png"))})
    assert outs[0] == outs[1] and len(outs[0]) == 2 * 3 + 1
    record = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert record["rows"] == sentences and "text encoder twin v1" in record["embeddings"]
    grid = Image.open(tmp_path / "a" / "grid.png")
    tile = Image.open(tmp_path / "a" / "00000_0.png")
    assert grid.width < 4 * 128 and grid.height > 2 * 128  # 3 tiles a row, text under each row
    assert tile.size == (64, 64)

    both = subprocess.run(
        python_cmd("-m", "stackgan.cli.generate", *args, "--embeddings", "x.npy",
                   "--out", str(tmp_path / "c")),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert both.returncode == 2 and "either --embeddings or --text" in both.stderr


def test_a_work_directory_resumes_only_the_run_that_wrote_it(tiny_shards, tmp_path):
    """Same run, longer: resumed. Another setting: stopped with the difference named (CLI
    default), or, with --on-config-change restart (the pipeline), the old states moved to
    superseded/ and training from step 0 with the new setting."""
    data, work = tiny_shards / "train-64", tmp_path / "work"
    base = {**run_config(1, max_steps=4, checkpoint_every_steps=2), "loss": {"kl_weight": 2.0}}

    def train(name, cfg, *extra):
        path = write_config(tmp_path / f"{name}.yaml", cfg)
        out = tmp_path / f"{name}.pt"
        args = train_args(path, data, work, out, "--metrics-out", str(tmp_path / f"{name}.json"))
        return run(python_cmd(*args, *extra), check=False)

    first = train("first", base)
    assert first.returncode == 0, first.stderr[-3000:]
    longer = train("longer", {**base, "train": {**base["train"], "max_steps": 6}})
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert json.loads((tmp_path / "longer.json").read_text())["resumed_from"] == 4

    other = {**base, "train": {**base["train"], "max_steps": 6}, "loss": {"kl_weight": 0.5}}
    stopped = train("other", other)
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    assert "holds the training states of another run (loss.kl_weight: 2.0 -> 0.5)" in (
        stopped.stderr
    )
    assert "--on-config-change restart" in stopped.stderr
    states = sorted(p.name for p in work.glob("training-state-*.pt"))
    assert states and not (work / "superseded").exists()  # nothing moved, nothing lost

    restarted = train("other", other, "--on-config-change", "restart")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert json.loads((tmp_path / "other.json").read_text())["resumed_from"] is None
    assert "starting at step 0" in restarted.stderr and "loss.kl_weight: 2.0 -> 0.5" in (
        restarted.stderr
    )
    (moved,) = (work / "superseded").iterdir()
    assert sorted(p.name for p in moved.glob("training-state-*.pt")) == states
    assert json.loads((moved / "run_identity.json").read_text())["config"]["loss.kl_weight"] == 2
    assert json.loads((work / "run_identity.json").read_text())["config"]["loss.kl_weight"] == 0.5
    fresh, resumed = read_network(tmp_path / "other.pt"), read_network(tmp_path / "longer.pt")
    assert fresh.step == resumed.step == 6 and fresh.config["loss"]["kl_weight"] == 0.5
    assert any(not torch.equal(fresh.G[k], resumed.G[k]) for k in resumed.G)


def test_a_run_ending_on_an_evaluation_point_reuses_its_standing_statistics_snapshot(
    tiny_shards, tmp_path, monkeypatch
):
    from stackgan.training import loop

    calls: list[int] = []
    real_snapshot = loop._Trainer.snapshot

    def counting_snapshot(self, standing):
        calls.append(1)
        return real_snapshot(self, standing)

    monkeypatch.setattr(loop._Trainer, "snapshot", counting_snapshot)
    nets = {}
    for every in (4, 3):  # the last step (8) is a grid point, or it is not
        cfg = from_dict(
            RunConfig,
            run_config(1, max_steps=8, ema_beta=0.9, ema_bn="standing", sample_every=every),
        )
        torch.manual_seed(0)
        stage = build_stage(cfg)
        steps, make = _batches(tiny_shards / "train-64", cfg)
        calls.clear()
        training_loop(
            cfg=cfg,
            stage=stage,
            make_data=make,
            steps_per_epoch=steps,
            workdir=tmp_path / f"w{every}",
            out_network=tmp_path / f"n{every}.pt",
            info=DistInfo(),
            grid_embeddings=torch.randn(2, cfg.model.text_dim),
            bn_embeddings=torch.randn(16, cfg.model.text_dim),
        )
        nets[every] = read_network(tmp_path / f"n{every}.pt")
        # steps 4 and 8 (the final snapshot is step 8's); steps 3, 6 and the final one
        assert len(calls) == (2 if every == 4 else 3)
    # the reused snapshot is the one a fresh recomputation gives, to the bit
    assert nets[4].G_ema.keys() == nets[3].G_ema.keys()
    for key, value in nets[3].G_ema.items():
        assert torch.equal(nets[4].G_ema[key], value), key
