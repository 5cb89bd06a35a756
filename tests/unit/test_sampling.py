"""Standing BatchNorm statistics of a Sampler's trained generator."""

from __future__ import annotations

import copy

import torch
from torch import nn

from stackgan.config import ModelConfig
from stackgan.networks import build_networks
from stackgan.sampling import Sampler

TINY = ModelConfig(gf_dim=16, df_dim=8, cond_dim=8, d_text_dim=8, text_dim=32, z_dim=8, r_num=1)
TINY_HIGH = 256  # Stage-II output side


def _first_bn_input(g: nn.Module, fn) -> torch.Tensor:
    bn = next(m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    seen = []
    handle = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        fn()
    finally:
        handle.remove()
    return torch.cat(seen)


def test_standing_statistics_are_the_exact_average_and_leave_rng_alone():
    torch.manual_seed(0)
    g1, _ = build_networks(TINY, 1)
    sampler = Sampler(1, TINY, g1, None, {})
    emb = torch.randn(48, TINY.text_dim)
    bn = next(m for m in g1.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    before = bn.running_mean.clone()
    rng = torch.get_rng_state()
    ref = copy.deepcopy(sampler)
    # What the first BatchNorm sees during the recomputation (replayed on a copy, same seed).
    inputs = _first_bn_input(
        ref.g1, lambda: ref.recompute_bn_statistics(emb, seed=5, batch_size=16)
    )
    sampler.recompute_bn_statistics(emb, seed=5, batch_size=16)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert not torch.allclose(bn.running_mean, before)
    # momentum None over 3 equal batches: the running mean is the mean over all 48 rows
    torch.testing.assert_close(bn.running_mean, inputs.mean(0), rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not sampler.training  # restored, eval mode
    again = copy.deepcopy(sampler)
    again.recompute_bn_statistics(emb, seed=5, batch_size=16)
    for a, b in zip(again.buffers(), sampler.buffers(), strict=True):
        assert torch.equal(a, b)  # deterministic


def test_stage2_recomputes_only_the_trained_generator():
    torch.manual_seed(1)
    g1, _ = build_networks(TINY, 1)
    g2, _ = build_networks(TINY, 2)
    sampler = Sampler(2, TINY, g1, g2, {})
    g1_buffers = [b.clone() for b in g1.buffers()]
    g2_before = [b.clone() for b in g2.buffers()]
    sampler.recompute_bn_statistics(torch.randn(8, TINY.text_dim), seed=0, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(g1.buffers(), g1_buffers, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(g2.buffers(), g2_before, strict=True))
    assert sampler.trained is g2


def test_channels_last_sampling_gives_the_same_images_in_that_layout(tmp_path):
    from stackgan.config import to_dict
    from stackgan.networkfile import NetworkFile, write_network
    from stackgan.networks.blocks import is_channels_last, memory_format_of

    torch.manual_seed(2)
    g1, _ = build_networks(TINY, 1)
    g2, _ = build_networks(TINY, 2)
    model = to_dict(TINY)
    path = tmp_path / "s2.pt"
    write_network(
        path,
        NetworkFile(
            stage=2,
            model=model,
            G=g2.state_dict(),
            stage1={},
            stage1_model=model,
            G1=g1.state_dict(),
        ),
    )
    emb = torch.randn(6, TINY.text_dim)
    plain = Sampler.load(path).sample_chunk(emb, chunk=3, seed=7)
    fast_sampler = Sampler.load(path, channels_last=True)
    fast = fast_sampler.sample_chunk(emb, chunk=3, seed=7)
    for g in (fast_sampler.g1, fast_sampler.g2):
        assert memory_format_of(g) == torch.channels_last
    assert memory_format_of(Sampler.load(path).g2) == torch.contiguous_format
    assert is_channels_last(fast.final) and is_channels_last(fast.stage1)
    assert fast.final.shape == plain.final.shape == (6, 3, TINY_HIGH, TINY_HIGH)
    # the same images: only the order of float additions differs between the layouts
    torch.testing.assert_close(fast.stage1, plain.stage1, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.final, plain.final, rtol=0, atol=1e-5)
