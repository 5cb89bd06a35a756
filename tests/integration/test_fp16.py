"""fp16 autocast + GradScaler on CPU: skipped steps on overflow, scale growth, agreement."""

from __future__ import annotations

import math

import pytest
import torch

from stackgan.config import RunConfig, from_dict
from stackgan.data.loader import spec_from_set, train_loader
from stackgan.distributed import DistInfo
from stackgan.stages import build_stage
from stackgan.training.loop import _Trainer
from tests.helpers import run_config


def _trainer(tiny_shards, growth_interval: int = 2000):
    """A Stage-I trainer in fp16. Its scalers start at 2**8 instead of GradScaler's 2**16,
    which overflows on the first steps of this net by itself, so every overflow here is the
    injected one."""
    cfg = from_dict(RunConfig, run_config(1, amp="fp16", batch_size=4))
    torch.manual_seed(0)
    trainer = _Trainer.build(cfg, build_stage(cfg), DistInfo())
    trainer.distribute()
    assert trainer.state.scaler_g.is_enabled() and trainer.state.scaler_d.is_enabled()
    for name in ("scaler_g", "scaler_d"):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=growth_interval)
        setattr(trainer.state, name, scaler)
    data = train_loader(spec_from_set(tiny_shards / "train-64", batch_size=4, num_workers=0), 0)
    return trainer, data


def _params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def _changed(before: dict[str, torch.Tensor], net: torch.nn.Module) -> list[str]:
    return [n for n, p in net.named_parameters() if not torch.equal(before[n], p)]


@pytest.mark.parametrize("which", ["D", "G"])
def test_an_overflowing_step_is_skipped_and_halves_the_scale(tiny_shards, which):
    """An inf gradient in one network at step 1: that network's optimiser step is skipped
    (weights and Adam state unchanged), its scale halves; the other network steps as usual."""
    trainer, data = _trainer(tiny_shards)
    st = trainer.state
    trainer.train_step(next(data), 0, 0)
    assert st.scaler_g.get_scale() == st.scaler_d.get_scale() == 2.0**8  # a clean step first
    net, other = (st.D, st.G) if which == "D" else (st.G, st.D)
    scaler, other_scaler = (
        (st.scaler_d, st.scaler_g) if which == "D" else (st.scaler_g, st.scaler_d)
    )
    opt = st.opt_d if which == "D" else st.opt_g
    scale, other_scale = scaler.get_scale(), other_scaler.get_scale()
    before, before_other = _params(net), _params(other)
    adam_steps = [float(s["step"]) for s in opt.state.values()]
    victim = next(p for p in net.parameters() if p.requires_grad)
    hook = victim.register_hook(lambda g: torch.full_like(g, math.inf))
    try:
        trainer.train_step(next(data), 1, 0)
    finally:
        hook.remove()
    assert _changed(before, net) == []  # the step was skipped
    assert [float(s["step"]) for s in opt.state.values()] == adam_steps
    assert scaler.get_scale() == scale / 2
    assert _changed(before_other, other)  # the other network still learned
    assert other_scaler.get_scale() == other_scale
    trainer.train_step(next(data), 2, 0)  # and the next step applies again
    assert _changed(before, net)


def test_the_scale_grows_after_growth_interval_clean_steps(tiny_shards):
    trainer, data = _trainer(tiny_shards, growth_interval=3)
    st = trainer.state
    scales = []
    for step in range(6):
        trainer.train_step(next(data), step, 0)
        scales.append((st.scaler_g.get_scale(), st.scaler_d.get_scale()))
    assert [s for s, _ in scales] == [256.0, 256.0, 512.0, 512.0, 512.0, 1024.0]
    assert [s for _, s in scales] == [256.0, 256.0, 512.0, 512.0, 512.0, 1024.0]
    state = st.scaler_g.state_dict()  # what the training state saves
    assert state["scale"] == 1024.0 and state["_growth_tracker"] == 0
