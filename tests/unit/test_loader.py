"""Training stream: shapes, augmentation, caption modes, determinism and exact resume."""

from __future__ import annotations

import signal
import time

import numpy as np
import psutil
import pytest
import torch

from stackgan.data.imagesets import to_float_images
from stackgan.data.loader import _choose_embedding, spec_from_set, train_loader
from stackgan.training.control import ignore_stop_signals


def _take(spec, start, n):
    it = train_loader(spec, start)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize(("res", "size"), [(64, 64), (256, 256)])
def test_batch_shapes_and_ranges(tiny_shards, res, size):
    spec = spec_from_set(tiny_shards / f"train-{res}", batch_size=4, num_workers=0, seed=1)
    batch = _take(spec, 0, 1)[0]
    assert batch["image"].shape == (4, 3, size, size) and batch["image"].dtype == torch.uint8
    assert batch["emb"].shape == (4, 1024) and batch["emb"].dtype == torch.float32
    assert batch["class_id"].shape == (4,) and batch["index"].shape == (4,)
    x = to_float_images(batch["image"])
    assert x.min() >= -1 and x.max() <= 1


def test_steps_per_epoch_uses_global_batch(tiny_shards):
    assert spec_from_set(tiny_shards / "train-64", batch_size=4).steps_per_epoch == 30 // 4
    assert (
        spec_from_set(tiny_shards / "train-64", batch_size=4, world_size=2).steps_per_epoch
        == 30 // 8
    )
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        spec_from_set(tiny_shards / "train-64", batch_size=16, world_size=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_any_step_reproduces_the_stream(tiny_shards, workers):
    spec = spec_from_set(tiny_shards / "train-64", batch_size=4, num_workers=workers, seed=3)
    full = _take(spec, 0, 17)  # 7 steps per epoch: spans 3 epochs
    assert [int(b["step"]) for b in full] == list(range(17))
    for start in (3, 7, 10):
        for a, b in zip(full[start:], _take(spec, start, 17 - start), strict=True):
            assert int(a["step"]) == int(b["step"])
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["emb"], b["emb"])
            assert torch.equal(a["index"], b["index"])


def test_ranks_and_seeds_get_different_streams(tiny_shards):
    base = dict(batch_size=4, num_workers=0)
    a = _take(spec_from_set(tiny_shards / "train-64", seed=0, rank=0, **base), 0, 3)
    b = _take(spec_from_set(tiny_shards / "train-64", seed=0, rank=1, **base), 0, 3)
    c = _take(spec_from_set(tiny_shards / "train-64", seed=1, rank=0, **base), 0, 3)
    same = _take(spec_from_set(tiny_shards / "train-64", seed=0, rank=0, **base), 0, 3)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, same, strict=True))
    assert not all(torch.equal(x["index"], y["index"]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x["index"], y["index"]) for x, y in zip(a, c, strict=True))


def test_random_crop_and_flip_cover_the_load_size(tiny_shards):
    spec = spec_from_set(tiny_shards / "train-64", batch_size=4, num_workers=0, seed=0)
    batches = _take(spec, 0, 20)
    # Same sample seen several times must show different crops/flips.
    crops: dict[int, set[bytes]] = {}
    for b in batches:
        for idx, img in zip(b["index"].tolist(), b["image"], strict=True):
            crops.setdefault(idx, set()).add(img.numpy().tobytes())
    assert max(len(v) for v in crops.values()) >= 2


def test_caption_modes():
    emb = np.eye(10, dtype=np.float32)  # caption i is the one-hot vector e_i
    rng = np.random.default_rng(0)
    single = [_choose_embedding(emb, "single", rng) for _ in range(50)]
    assert all(np.count_nonzero(s) == 1 and s.max() == 1 for s in single)  # exactly one caption
    assert len({int(s.argmax()) for s in single}) > 3
    for _ in range(50):
        m = _choose_embedding(emb, "mean4", rng)
        # the mean of 4 DISTINCT captions: four entries of 1/4, nothing else
        assert np.count_nonzero(m) == 4 and np.allclose(m[m > 0], 0.25)


def test_worker_loader_leaves_the_global_rng_alone(tiny_shards):
    """A resumed run creates its loader after restoring the RNG states; the loader must not
    draw from the global torch RNG (it would shift the training noise after a resume)."""
    spec = spec_from_set(tiny_shards / "train-64", batch_size=4, num_workers=2, seed=3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    it = train_loader(spec, 5)
    assert int(next(it)["step"]) == 5
    assert torch.equal(torch.get_rng_state(), before)


def test_workers_ignore_stop_signals_when_asked(tiny_shards):
    """SLURM signals every process of a job; with ``ignore_stop_signals`` the loader workers
    survive SIGTERM/SIGUSR1 and keep serving the stream (the training process decides)."""
    spec = spec_from_set(tiny_shards / "train-64", batch_size=4, num_workers=2, seed=3)
    expected = _take(spec, 0, 6)
    before = {p.pid for p in psutil.Process().children()}
    it = train_loader(spec, 0, ignore_stop_signals)
    got = [next(it) for _ in range(2)]
    workers = [p for p in psutil.Process().children() if p.pid not in before]
    assert len(workers) == 2
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    got += [next(it) for _ in range(4)]
    for a, b in zip(expected, got, strict=True):
        assert int(a["step"]) == int(b["step"]) and torch.equal(a["image"], b["image"])


def test_an_in_process_stream_leaves_the_training_threads_alone(tiny_shards):
    """num_workers 0 reads in the training process: it must not cut torch to one thread
    (loader workers do, to leave the cores to the training)."""
    spec = spec_from_set(tiny_shards / "train-64", batch_size=4, num_workers=0, seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _take(spec, 0, 2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
