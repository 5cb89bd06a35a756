"""Training data stream from the WebDataset shard sets: deterministic, resumable, DDP-safe.

Each rank reads an *infinite resampled* stream (WebDataset ``ResampledShards``): every
rank draws shards with replacement from its own seed, so all ranks run the same number
of steps and none can wait forever for data (exact splitting hangs DDP on uneven
shards). An "epoch" is a fixed number of steps, ``N // global_batch`` like the
references' ``drop_last`` loaders.

Determinism and exact resume: the batch at (epoch ``e``, step ``b``) of rank ``r`` is a
pure function of ``(seed, r, e, b, num_workers)``. Loader worker streams are seeded per
(epoch, ``b % num_workers``), the shuffle buffer consumes randomness only from that
seed, and augmentation (crop offset, flip, caption choice) uses a per-batch generator.
Resuming at step ``b`` re-creates the streams and skips raw (undecoded) samples, so a
restarted run sees exactly the batches an uninterrupted run would.

Batches hold uint8 images ``[B, 3, S, S]`` (normalise to [-1, 1] on the training
device with :func:`stackgan.data.imagesets.to_float_images`), one text embedding per
sample ``[B, 1024]``, class ids and sample indices.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from stackgan.data import format as fmt
from stackgan.data.tarstream import tar_samples

CaptionMode = Literal["single", "mean4"]
CAPTION_MODES: tuple[str, ...] = ("single", "mean4")


@dataclass(frozen=True)
class StreamSpec:
    """Everything that determines a rank's training stream."""

    urls: tuple[str, ...]  # shard files of one set
    image_size: int  # crop size: 64 (from 76) or 256 (from 304)
    load_size: int  # stored image size
    image_member: str  # "png" or "jpg"
    batch_size: int  # per rank (batch_gpu)
    steps_per_epoch: int
    caption_mode: CaptionMode = (
        "single"  # single: 1 random of 10 (PyTorch); mean4: mean of 4 distinct (TF)
    )
    seed: int = 0
    rank: int = 0
    num_workers: int = 2
    shuffle_buffer: int = 1000
    shuffle_initial: int = 100

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("StreamSpec.urls is empty: no shards to read")
        if self.caption_mode not in CAPTION_MODES:
            raise ValueError(
                f"caption_mode: expected one of {CAPTION_MODES}, got {self.caption_mode!r}"
            )
        if not 0 < self.image_size <= self.load_size:
            raise ValueError(
                f"image_size {self.image_size} must be in (0, load_size={self.load_size}]"
            )
        if self.batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError("batch_size and steps_per_epoch must be >= 1")


def spec_from_set(
    set_dir: str | Path,
    *,
    batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    caption_mode: CaptionMode = "single",
    seed: int = 0,
    num_workers: int = 2,
    shuffle_buffer: int = 1000,
) -> StreamSpec:
    """Build a :class:`StreamSpec` from a complete shard set (reads its manifest)."""
    set_dir = Path(set_dir)
    manifest = fmt.read_manifest(set_dir)
    global_batch = batch_size * world_size
    steps = manifest["num_samples"] // global_batch
    if steps < 1:
        raise ValueError(
            f"{set_dir}: {manifest['num_samples']} samples cannot fill one global batch of "
            f"{global_batch} "
            f"(batch {batch_size} x world size {world_size})"
        )
    return StreamSpec(
        urls=tuple(str(set_dir / s["name"]) for s in manifest["shards"]),
        image_size=int(manifest["resolution"]),
        load_size=int(manifest["load_size"]),
        image_member=str(manifest["image_member"]),
        batch_size=batch_size,
        steps_per_epoch=steps,
        caption_mode=caption_mode,
        seed=seed,
        rank=rank,
        num_workers=num_workers,
        shuffle_buffer=shuffle_buffer,
    )


def _seed(*parts: int) -> int:
    """Stable 63-bit seed from integers (no Python ``hash`` randomisation)."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
        >> 1
    )


def _raw_samples(spec: StreamSpec, epoch: int, lane: int) -> Iterator[dict]:
    """Infinite shuffled raw samples of one worker lane (undecoded bytes)."""
    import webdataset as wds

    lanes = max(1, spec.num_workers)
    base = _seed(spec.seed, spec.rank, epoch, lane, lanes)
    shards = wds.ResampledShards(
        list(spec.urls), seed=base, worker_seed=lambda: 0, deterministic=True
    )
    pipeline = wds.DataPipeline(
        shards,
        tar_samples,  # the project's shards; same samples as wds.tarfile_to_samples, faster
        wds.shuffle(spec.shuffle_buffer, initial=spec.shuffle_initial, rng=random.Random(base + 1)),
    )
    return iter(pipeline)


def _decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}


def _load_npy(data: bytes) -> np.ndarray:
    """``np.load`` of an in-memory .npy, with each distinct header parsed only once.

    Every sample of a shard set has the same header, and parsing it (``ast``) costs as
    much as the rest of the sample; objects and Fortran order are refused.
    """
    if data[:8] != b"\x93NUMPY\x01\x00":
        return np.load(io.BytesIO(data), allow_pickle=False)  # other versions: the slow path
    end = 10 + int.from_bytes(data[8:10], "little")
    header = data[10:end]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(data[:end][8:]))
        if fortran or dtype.hasobject:
            return np.load(io.BytesIO(data), allow_pickle=False)  # raises for objects
        parsed = _NPY_HEADERS.setdefault(header, (dtype, shape))
    dtype, shape = parsed
    count = int(np.prod(shape))
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(
            f".npy member: expected {count * dtype.itemsize} data bytes, got {len(data) - end}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape)


def _choose_embedding(emb: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "single":
        return emb[int(rng.integers(emb.shape[0]))]
    picks = rng.choice(emb.shape[0], size=min(4, emb.shape[0]), replace=False)
    return emb[picks].mean(axis=0)


def make_batch(
    samples: Sequence[dict], spec: StreamSpec, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Decode, random-crop, flip and pick caption embeddings for one batch."""
    size, span = spec.image_size, spec.load_size - spec.image_size
    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    embs, classes, indices = [], [], []
    for i, sample in enumerate(samples):
        img = _decode_image(sample[spec.image_member])
        if img.shape[:2] != (spec.load_size, spec.load_size):
            raise ValueError(
                f"{sample.get('__url__')}: sample {sample['__key__']} is "
                f"{img.shape[1]}x{img.shape[0]}, "
                f"expected the load size {spec.load_size}"
            )
        x, y = (int(v) for v in rng.integers(0, span + 1, size=2))
        crop = img[y : y + size, x : x + size]
        images[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
        emb = _load_npy(sample[fmt.KEY_EMB])
        embs.append(_choose_embedding(emb, spec.caption_mode, rng))
        classes.append(int(sample[fmt.KEY_CLS]))
        indices.append(int(sample["__key__"][1:]))
    return {
        "image": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # [B, 3, S, S] uint8
        "emb": torch.from_numpy(np.stack(embs).astype(np.float32)),  # [B, text_dim]
        "class_id": torch.tensor(classes, dtype=torch.int64),
        "index": torch.tensor(indices, dtype=torch.int64),
    }


def lane_batches(
    spec: StreamSpec, epoch: int, lane: int, first_step: int
) -> Iterator[tuple[int, dict]]:
    """Batches ``b = lane, lane + W, ...`` of ``epoch`` with ``b >= first_step``, as (b, batch)."""
    lanes = max(1, spec.num_workers)
    raw = _raw_samples(spec, epoch, lane)
    for b in range(lane, spec.steps_per_epoch, lanes):
        samples = [next(raw) for _ in range(spec.batch_size)]
        if b < first_step:
            continue  # skipped without decoding: only the raw stream advances
        rng = np.random.default_rng(_seed(spec.seed, spec.rank, epoch, b, 7))
        yield b, make_batch(samples, spec, rng)


class _Stream(IterableDataset):
    """Batches from global step ``start_step`` on; worker ``j`` serves steps
    ``start + j (mod W)``.
    """

    def __init__(self, spec: StreamSpec, start_step: int) -> None:
        super().__init__()
        self.spec, self.start_step = spec, start_step

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        lanes = max(1, self.spec.num_workers)
        worker = info.id if info is not None else 0
        steps, start = self.spec.steps_per_epoch, self.start_step
        if info is not None:  # a loader worker: leave the cores to the training process
            torch.set_num_threads(1)
        epoch = start // steps
        while True:
            # Worker `worker` serves global steps start + worker + k * lanes; inside this
            # epoch those are the batches of one lane, from `first` on.
            low = start - epoch * steps if epoch == start // steps else 0
            lane = (worker + start - epoch * steps) % lanes
            first = low + (lane - low) % lanes
            if first < steps:
                for b, batch in lane_batches(self.spec, epoch, lane, first):
                    batch["step"] = torch.tensor(epoch * steps + b)
                    yield batch
            epoch += 1


def train_loader(
    spec: StreamSpec, start_step: int = 0, worker_init: Callable[[int], None] | None = None
) -> Iterator[dict]:
    """Infinite iterator of batches starting at global step ``start_step``.

    ``worker_init`` runs in every loader worker process (the training job passes
    :func:`stackgan.training.control.ignore_stop_signals`).

    Batch ``k`` of the iterator is global step ``start_step + k``; ``batch["step"]``
    carries that number so callers can assert alignment.
    """
    dataset = _Stream(spec, start_step)
    if spec.num_workers <= 0:
        return iter(dataset)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=spec.num_workers,
        persistent_workers=False,
        prefetch_factor=2,
        multiprocessing_context="fork",
        worker_init_fn=worker_init,
        # The loader draws its workers' base seed from this generator; without one it
        # would take a draw from the global torch RNG when a (resumed) run creates it,
        # shifting the training noise against an uninterrupted run. The stream itself is
        # seeded explicitly (see the module docstring), so the value does not matter.
        generator=torch.Generator().manual_seed(spec.seed),
    )
    return iter(loader)
