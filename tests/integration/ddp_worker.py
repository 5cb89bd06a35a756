"""Runs under torchrun (gloo, CPU) for tests/integration/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        tests/integration/ddp_worker.py <mode> <shard_dir> <out_dir>

consistency: train a few steps through the real loop, then dump every rank's G/D
             parameters and buffers to <out_dir>/rank<r>.pt.
gradient:    one D step on each rank's own batch; dump the gradient DDP applied and the
             per-rank gradient computed without DDP to <out_dir>/grad<r>.pt.
gradient_r1: the same through the training step's d_update (joint batch) with the R1
             penalty, whose double backward must pass through the DDP-wrapped D.
resume:      agree_on_resume with equal steps, then with rank-dependent steps; write
             what each call returned or raised to <out_dir>/resume<r>.json.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from stackgan import distributed as dist_utils
from stackgan.cli.common import setup_logging
from stackgan.config import LossConfig, RunConfig, from_dict
from stackgan.data.imagesets import to_float_images
from stackgan.data.loader import spec_from_set, train_loader
from stackgan.losses import d_loss
from stackgan.networks import d_condition
from stackgan.stages import build_stage
from stackgan.training.loop import training_loop
from stackgan.training.state import ResumeMismatchError, agree_on_resume
from stackgan.training.step import StepContext, d_update
from tests.helpers import run_config


def dump(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def consistency(shards: Path, out: Path, info: dist_utils.DistInfo) -> None:
    cfg = from_dict(RunConfig, run_config(1, batch_size=3, max_steps=5))
    torch.manual_seed(cfg.train.seed)
    stage = build_stage(cfg)
    spec = spec_from_set(
        shards, batch_size=3, world_size=info.world_size, rank=info.rank, num_workers=0, seed=0
    )
    training_loop(
        cfg=cfg,
        stage=stage,
        make_data=lambda s: train_loader(spec, s),
        steps_per_epoch=spec.steps_per_epoch,
        workdir=out / "work",
        out_network=out / "net.pt",
        info=info,
    )
    torch.save({"G": dump(stage.G), "D": dump(stage.D)}, out / f"rank{info.rank}.pt")


def gradient(shards: Path, out: Path, info: dist_utils.DistInfo, r1_gamma: float = 0.0) -> None:
    cfg = from_dict(RunConfig, run_config(1, batch_size=4))
    torch.manual_seed(0)
    stage = build_stage(cfg)
    G, D = stage.G, stage.D
    spec = spec_from_set(
        shards, batch_size=4, world_size=info.world_size, rank=info.rank, num_workers=0, seed=5
    )
    batch = next(train_loader(spec, 0))
    real = to_float_images(batch["image"])
    emb = batch["emb"]
    torch.manual_seed(100 + info.rank)
    with torch.no_grad():
        fake, mu, _ = G(emb, torch.randn(4, cfg.model.z_dim))
    cond = d_condition(cfg.model, emb, mu)

    def d_step(module: torch.nn.Module) -> None:
        if r1_gamma > 0:
            ctx = StepContext(model=cfg.model, loss=LossConfig(r1_gamma=r1_gamma), joint=True)
            _, parts = d_update(module, ctx, real, fake, cond, cond[1:], lambda x: x.backward())
            assert float(parts["r1"]) > 0
            return
        out_real = module(real, cond, cond[1:])
        out_fake = module(fake, cond)
        loss, _ = d_loss(out_real.logits, out_real.wrong_logits, out_fake.logits)
        loss.backward()

    local = copy.deepcopy(D)
    d_step(local)  # this rank's own gradient, no communication
    ddp = DDP(D, broadcast_buffers=False)
    d_step(ddp)  # what DDP applies: the all-reduced mean
    torch.save(
        {
            "ddp": {k: p.grad.clone() for k, p in D.named_parameters()},
            "local": {k: p.grad.clone() for k, p in local.named_parameters()},
        },
        out / f"grad{info.rank}.pt",
    )


def resume(shards: Path, out: Path, info: dist_utils.DistInfo) -> None:
    del shards
    result: dict[str, object] = {"equal": agree_on_resume(40, info)}
    try:
        result["unequal"] = agree_on_resume(40 if info.rank == 0 else 20, info)
    except ResumeMismatchError as err:
        result["unequal_error"] = str(err)
    (out / f"resume{info.rank}.json").write_text(json.dumps(result))


def main() -> None:
    mode, shards, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    setup_logging(dist_utils.env_ranks()[0], with_time=True)
    info = dist_utils.init()
    try:
        modes = {
            "consistency": consistency,
            "gradient": gradient,
            "gradient_r1": lambda *a: gradient(*a, r1_gamma=1.0),
            "resume": resume,
        }
        modes[mode](shards, out, info)
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    main()
