"""CUDA-only checks (``pytest -m gpu``; skipped without a GPU, run by bench/gpu_acceptance.py)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import load, python_cmd, run, run_config, train_args, write_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_stage1_trains_on_cuda_and_resumes_exactly(tiny_shards, tmp_path, amp):
    """A few Stage-I steps on the GPU in reduced precision (channels_last); a run stopped
    by its step limit and continued ends bit-identical to one that ran straight through."""

    def config(max_steps: int):
        cfg = run_config(
            1, batch_size=4, epochs=100, max_steps=max_steps, amp=amp, channels_last=True,
            deterministic=True,
        )  # fmt: skip
        return write_config(tmp_path / f"c{max_steps}.yaml", cfg)

    data = tiny_shards / "train-64"
    run(python_cmd(*train_args(config(8), data, tmp_path / "straight", tmp_path / "a.pt")))
    run(python_cmd(*train_args(config(4), data, tmp_path / "split", tmp_path / "b4.pt")))
    proc = run(python_cmd(*train_args(config(8), data, tmp_path / "split", tmp_path / "b.pt")))
    assert "resumed from" in proc.stderr + proc.stdout
    a, b = load(tmp_path / "a.pt"), load(tmp_path / "b.pt")
    for name, tensor in a["G"].items():
        assert torch.equal(tensor, b["G"][name]), name
    assert all(torch.isfinite(t).all() for t in a["G"].values() if t.is_floating_point())


def test_sampling_on_cuda_is_deterministic(tiny_stage1_network):
    from stackgan.sampling import Sampler

    sampler = Sampler.load(tiny_stage1_network[0], device="cuda")
    emb = torch.randn(6, sampler.model.text_dim, generator=torch.Generator().manual_seed(0))
    first = sampler.sample_chunk(emb.cuda(), 0, seed=7).final
    again = sampler.sample_chunk(emb.cuda(), 0, seed=7).final
    assert first.is_cuda and torch.equal(first, again)
    other = sampler.sample_chunk(emb.cuda(), 0, seed=8).final
    assert not torch.equal(first, other)
