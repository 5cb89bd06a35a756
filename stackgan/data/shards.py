"""Crop, resize and write WebDataset shards, an HDF5 index and a manifest per shard set.

For one split this writes ``<out>/<split>-64/`` and ``<out>/<split>-256/`` (tar shards
plus ``manifest.json``) and ``<out>/<split>-index.h5``; see :mod:`stackgan.data.format`.

Guarantees:

* **Deterministic**: the same inputs and options give byte-identical files (fixed
  sample order from a seeded permutation, tar headers without times or owners, PNG/JPEG
  encoders with fixed settings, HDF5 without timestamps, JSON with sorted keys).
* **Streaming**: images are decoded, cropped and encoded in worker processes over a
  bounded window; embeddings are read row by row from the pickle; peak memory does not
  grow with the dataset.
* **Never half-written**: each shard and the index are written to a temporary name
  and renamed; a set's manifest is deleted first and written last, so a set without a
  manifest is incomplete.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from stackgan import __version__
from stackgan.data import format as fmt
from stackgan.data.crop import HR_LOAD_SIZE, LR_LOAD_SIZE, RESIZE_MODES, crop_and_resize, load_rgb
from stackgan.data.cub import (
    SPLITS,
    DataPaths,
    DataValidationError,
    EmbeddingRow,
    Problem,
    Sample,
    SplitData,
    read_dataset,
)
from stackgan.data.tarstream import BLOCK, end_of_archive, ustar_header
from stackgan.fileio import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

OnBadImage = Literal["error", "skip"]


@dataclass(frozen=True)
class ShardOptions:
    """Preprocessing parameters; all of them are recorded in each manifest."""

    resize: str = "tf_bicubic"  # see stackgan.data.crop
    hr_format: str = "jpeg"  # jpeg | png for the 304 px images (76 px are always PNG)
    jpeg_quality: int = 95
    min_shards: int = 32  # >= 8 GPUs x 4 loader workers for the full dataset
    max_per_shard: int = 250
    shuffle_seed: int = 0  # sample order inside the shards (mixes classes)
    on_bad_image: OnBadImage = "error"
    workers: int = 2
    text_encoder: str | None = None  # None: the bundle's embeddings; else a load_encoder spec

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize: expected one of {RESIZE_MODES}, got {self.resize!r}")
        if self.hr_format not in ("jpeg", "png"):
            raise ValueError(f"hr_format: expected 'jpeg' or 'png', got {self.hr_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality: expected 1..100, got {self.jpeg_quality}")
        if self.min_shards < 1 or self.max_per_shard < 1:
            raise ValueError("min_shards and max_per_shard must be >= 1")
        if self.on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image: expected 'error' or 'skip', got {self.on_bad_image!r}")
        if self.workers < 1:
            raise ValueError(f"workers: expected >= 1, got {self.workers}")

    def manifest_params(self) -> dict[str, object]:
        params = asdict(self)
        params.pop("workers")  # does not change the output
        if params["text_encoder"] is None:  # the default leaves manifests as they were
            params.pop("text_encoder")
        params.update(
            crop=(
                "R = int(0.75*max(w,h)) around (int((2x+w)/2), int((2y+h)/2)), clipped; "
                "boxes read as int"
            ),
            lr_load_size=LR_LOAD_SIZE,
            hr_load_size=HR_LOAD_SIZE,
            lr_format="png",
        )
        return params


def samples_per_shard(count: int, opts: ShardOptions) -> int:
    """Shard size giving at least ``min_shards`` shards and at most ``max_per_shard``
    samples each.
    """
    return max(1, min(opts.max_per_shard, math.ceil(count / opts.min_shards)))


# --------------------------------------------------------------------------- per-image work


@dataclass(frozen=True)
class _Job:
    index: int
    path: str
    bbox: tuple[float, float, float, float] | None
    resize: str
    hr_format: str
    jpeg_quality: int
    embedding: EmbeddingRow | None = None  # read and serialised in the worker


@dataclass(frozen=True)
class _Result:
    index: int
    lr: bytes = b""
    hr: bytes = b""
    crop_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: tuple[int, int] = (0, 0)
    mode: str = ""
    sha256: str = ""
    emb_npy: bytes = b""
    error: str | None = None


def _encode(image: Image.Image, fmt_name: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt_name == "png":
        image.save(buf, format="PNG", compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def _process(job: _Job) -> _Result:
    """Decode, crop, resize and encode one image; errors are returned, not raised."""
    try:
        raw = Path(job.path).read_bytes()
        image, mode, size = load_rgb(io.BytesIO(raw))
        lr, hr, box = crop_and_resize(image, job.bbox, resize=job.resize)  # type: ignore[arg-type]
        return _Result(
            index=job.index,
            lr=_encode(lr, "png", 0),
            hr=_encode(hr, job.hr_format, job.jpeg_quality),
            crop_box=box,
            size=size,
            mode=mode,
            sha256=hashlib.sha256(raw).hexdigest(),
            emb_npy=_npy_bytes(job.embedding.read()) if job.embedding is not None else b"",
        )
    except FileNotFoundError:
        return _Result(job.index, error=f"{job.path}: image file not found")
    except Exception as err:  # any decode failure is reported per image
        return _Result(
            job.index,
            error=f"{job.path}: unreadable or corrupt image ({type(err).__name__}: {err})",
        )


def _process_chunk(jobs: Sequence[_Job]) -> list[_Result]:
    return [_process(job) for job in jobs]


def _bounded_imap(
    jobs: Sequence[_Job], workers: int, window: int = 256, chunk: int = 32
) -> Iterator[_Result]:
    """Results in job order, with at most ``window`` jobs in flight (bounded memory).

    A sliding window: each result handed out lets another chunk start, so the workers
    never wait for a slow chunk at a window boundary.
    """
    if workers <= 1:
        yield from map(_process, jobs)
        return
    chunks = (jobs[i : i + chunk] for i in range(0, len(jobs), chunk))
    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for part in itertools.islice(chunks, max(1, window // chunk)):
            pending.append(pool.apply_async(_process_chunk, (part,)))
        while pending:
            results = pending.popleft().get()
            part = next(chunks, None)
            if part is not None:
                pending.append(pool.apply_async(_process_chunk, (part,)))
            yield from results


# --------------------------------------------------------------------------- tar writing


class _HashingFile:
    """Write-only file wrapper that hashes what passes through (no re-read for the manifest)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _ShardSet:
    """Rotating tar writer for one shard set; each shard is renamed into place when full."""

    def __init__(self, set_dir: Path, split: str, resolution: int, per_shard: int) -> None:
        self.set_dir, self.split, self.resolution, self.per_shard = (
            set_dir,
            split,
            resolution,
            per_shard,
        )
        self.shards: list[dict[str, object]] = []
        self._file: _HashingFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def _open(self) -> None:
        name = fmt.shard_name(self.split, self.resolution, len(self.shards))
        self._tmp = self.set_dir / f".{name}.tmp"
        self._file = _HashingFile(self._tmp)
        self._count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self._file is None:
            self._open()
        out = self._file
        assert out is not None
        for ext, data in members.items():  # the bytes tarfile would write (tested)
            out.write(ustar_header(f"{key}.{ext}", len(data)))
            out.write(data)
            out.write(b"\0" * (-len(data) % BLOCK))
        self._count += 1
        if self._count >= self.per_shard:
            self._close()

    def _close(self) -> None:
        hashed = self._file
        if hashed is None:
            return
        hashed.write(end_of_archive(hashed.size))
        hashed.close()
        name = fmt.shard_name(self.split, self.resolution, len(self.shards))
        final = self.set_dir / name
        os.replace(self._tmp, final)  # type: ignore[arg-type]
        self.shards.append(
            {
                "name": name,
                "count": self._count,
                "bytes": hashed.size,
                "sha256": hashed.sha256.hexdigest(),
            }
        )
        self._file, self._tmp = None, None

    def finish(self) -> list[dict[str, object]]:
        self._close()
        return self.shards

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            Path(self._tmp).unlink(missing_ok=True)  # type: ignore[arg-type]
            self._file = None


def _clear_set(set_dir: Path, split: str, resolution: int) -> None:
    """Delete the manifest first, then old shards, so nothing stale looks complete."""
    set_dir.mkdir(parents=True, exist_ok=True)
    (set_dir / fmt.MANIFEST).unlink(missing_ok=True)
    prefix = fmt.set_name(split, resolution)
    for p in set_dir.iterdir():
        if p.name.startswith((prefix, f".{prefix}")) and p.name.endswith((".tar", ".tmp")):
            p.unlink()


# --------------------------------------------------------------------------- inputs


def input_checksums(data: SplitData, image_digests: dict[int, str]) -> dict[str, str]:
    """sha256 of every input file, plus digests over all images and all caption files."""
    sums = {name: sha256_file(path) for name, path in data.input_files.items()}
    images = hashlib.sha256()
    captions = hashlib.sha256()
    for s in data.samples:
        if s.index in image_digests:
            images.update(f"{s.key}\t{image_digests[s.index]}\n".encode())
        if s.captions is not None:
            captions.update((s.key + "\t" + "\t".join(s.captions) + "\n").encode("utf-8"))
    sums["images (sha256 of 'key<TAB>sha256' lines)"] = images.hexdigest()
    sums["text_c10 (sha256 of 'key<TAB>captions' lines)"] = captions.hexdigest()
    return sums


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- main entry


def write_index(path: Path, data: SplitData, samples: Sequence[Sample]) -> None:
    """Write the split's HDF5 index (keys, ids, embeddings, captions) atomically."""
    import h5py

    n = len(samples)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        str_dt = h5py.string_dtype("utf-8")
        h5.create_dataset(
            "keys", data=np.array([s.key for s in samples], dtype=object), dtype=str_dt
        )
        h5.create_dataset("indices", data=np.array([s.index for s in samples], dtype=np.int64))
        h5.create_dataset(
            "image_ids", data=np.array([s.image_id or -1 for s in samples], dtype=np.int64)
        )
        h5.create_dataset("class_ids", data=np.array([s.class_id for s in samples], dtype=np.int64))
        shape = (n, *data.embeddings[samples[0].index].shape) if n else (0, 10, 1024)
        emb = h5.create_dataset(
            "embeddings", shape=shape, dtype=np.float32, chunks=(1, *shape[1:]) if n else None
        )
        caps = h5.create_dataset("captions", shape=(n, shape[1]), dtype=str_dt)
        block = 256  # rows per HDF5 write: few calls, bounded memory
        for start in range(0, n, block):
            rows = samples[start : start + block]
            emb[start : start + len(rows)] = np.stack([data.embeddings[s.index] for s in rows])
            caps[start : start + len(rows)] = np.array(
                [list(s.captions) if s.captions is not None else [""] * shape[1] for s in rows],
                dtype=object,
            )
        h5.attrs["split"] = data.split
        h5.attrs["format_version"] = fmt.FORMAT_VERSION
        h5.attrs["has_captions"] = any(s.captions is not None for s in samples)


def _plan_split(data: SplitData, opts: ShardOptions) -> tuple[list[Sample], list[_Job]]:
    """The split's samples in shard order (seeded shuffle, known-bad ones left out) and jobs."""
    if data.problems and opts.on_bad_image == "error":
        raise DataValidationError(
            [p.detail for p in data.problems] + ["(set on_bad_image: skip to skip these images)"]
        )
    bad = {p.index for p in data.problems}
    candidates = [s for s in data.samples if s.index not in bad]
    order = np.random.default_rng(opts.shuffle_seed).permutation(len(candidates))
    ordered = [candidates[i] for i in order]
    jobs = [
        _Job(
            s.index,
            str(s.image_path),
            s.bbox,
            opts.resize,
            opts.hr_format,
            opts.jpeg_quality,
            data.embeddings.row_ref(s.index),
        )
        for s in ordered
    ]
    return ordered, jobs


def _open_outputs(
    out: Path, split: str, per_shard: int
) -> tuple[dict[int, Path], dict[int, _ShardSet]]:
    """Clear the split's old sets and index; a shard writer per resolution."""
    sets = {res: out / fmt.set_name(split, res) for res in fmt.RESOLUTIONS}
    for res, d in sets.items():
        _clear_set(d, split, res)
    (out / fmt.index_name(split)).unlink(missing_ok=True)
    writers = {res: _ShardSet(d, split, res, per_shard) for res, d in sets.items()}
    return sets, writers


def _write_sample(
    writers: dict[int, _ShardSet], sample: Sample, result: _Result, split: str, hr_ext: str
) -> None:
    """One processed image into both shard sets (image, embedding, class, metadata)."""
    meta = {
        "key": sample.key,
        "index": sample.index,
        "image_id": sample.image_id,
        "class_id": sample.class_id,
        "split": split,
        "captions": list(sample.captions) if sample.captions is not None else None,
        "bbox": list(sample.bbox) if sample.bbox is not None else None,
        "crop_box": list(result.crop_box),
        "orig_size": list(result.size),
        "orig_mode": result.mode,
    }
    common = {
        fmt.KEY_EMB: result.emb_npy,
        fmt.KEY_CLS: str(sample.class_id).encode(),
    }
    key = fmt.sample_key(sample.index)
    writers[64].write(
        key, {fmt.KEY_PNG: result.lr, **common, fmt.KEY_JSON: _json(meta, LR_LOAD_SIZE)}
    )
    writers[256].write(key, {hr_ext: result.hr, **common, fmt.KEY_JSON: _json(meta, HR_LOAD_SIZE)})


def _write_results(
    results: Iterator[_Result],
    count: int,
    ordered: Sequence[Sample],
    writers: dict[int, _ShardSet],
    opts: ShardOptions,
    split: str,
    *,
    progress: bool,
    skipped: list[dict[str, object]],
) -> dict[int, str]:
    """Write the next ``count`` results into the shard sets; the sha256 of each written image.

    A bad image raises under ``on_bad_image: error`` and is appended to ``skipped``
    under ``skip``.
    """
    from tqdm import tqdm

    by_index = {s.index: s for s in ordered}
    hr_ext = fmt.KEY_JPG if opts.hr_format == "jpeg" else fmt.KEY_PNG
    digests: dict[int, str] = {}
    bar = tqdm(
        total=count,
        desc=f"{split} shards",
        unit="img",
        disable=not progress,
        file=sys.stderr,
    )
    for result in itertools.islice(results, count):
        bar.update(1)
        sample = by_index[result.index]
        if result.error is not None:
            if opts.on_bad_image == "error":
                raise DataValidationError(
                    [
                        f"{result.error} (key {sample.key!r}, index {sample.index}); "
                        "set on_bad_image: skip to skip it"
                    ]
                )
            log.warning("skipping %s: %s", sample.key, result.error)
            skipped.append(Problem(sample.index, sample.key, "bad_image", result.error).as_dict())
            continue
        digests[result.index] = result.sha256
        _write_sample(writers, sample, result, split, hr_ext)
    bar.close()
    return digests


def _write_manifests(
    out: Path,
    data: SplitData,
    opts: ShardOptions,
    sets: dict[int, Path],
    shards: dict[int, list[dict[str, object]]],
    written: Sequence[Sample],
    per_shard: int,
    inputs: dict[str, str],
    skipped: list[dict[str, object]],
) -> None:
    """Each set's ``manifest.json``, written last (a set without one is incomplete)."""
    split = data.split
    hr_ext = fmt.KEY_JPG if opts.hr_format == "jpeg" else fmt.KEY_PNG
    for res, d in sets.items():
        manifest = {
            "format_version": fmt.FORMAT_VERSION,
            "stackgan_version": __version__,
            "set": fmt.set_name(split, res),
            "split": split,
            "resolution": res,
            "load_size": fmt.LOAD_SIZES[res],
            "image_member": fmt.KEY_PNG if res == 64 else hr_ext,
            "num_samples": sum(int(s["count"]) for s in shards[res]),  # type: ignore[call-overload]
            "num_classes": len({s.class_id for s in written}),
            "samples_per_shard": per_shard,
            "shards": shards[res],
            "index_file": fmt.index_name(split),
            "index_sha256": sha256_file(out / fmt.index_name(split)),
            "preprocessing": opts.manifest_params(),
            "inputs": inputs,
            "skipped": skipped,
        }
        write_json(d / fmt.MANIFEST, manifest)


def build_split(
    data: SplitData,
    out_dir: str | Path,
    opts: ShardOptions,
    *,
    progress: bool = True,
    results: Iterator[_Result] | None = None,
) -> dict:
    """Write both shard sets, the index and the manifests for one validated split.

    ``results``: the processed images of this split's jobs, in job order (from a pool
    shared across splits); ``None`` processes them here.

    Returns:
        A summary with per-set sample counts and the skipped items.

    Raises:
        DataValidationError: a bad image under ``on_bad_image: error``.
    """
    out = Path(out_dir)
    split = data.split
    ordered, jobs = _plan_split(data, opts)
    if results is None:
        results = _bounded_imap(jobs, opts.workers)
    skipped: list[dict[str, object]] = [p.as_dict() for p in data.problems]
    per_shard = samples_per_shard(len(ordered), opts)
    sets, writers = _open_outputs(out, split, per_shard)
    start = time.perf_counter()
    try:
        digests = _write_results(
            results, len(jobs), ordered, writers, opts, split, progress=progress, skipped=skipped
        )
        shards = {res: w.finish() for res, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    written = [s for s in ordered if s.index in digests]
    written.sort(key=lambda s: s.index)
    write_index(out / fmt.index_name(split), data, written)
    inputs = input_checksums(data, digests)
    skipped.sort(key=lambda d: int(d["index"]))  # type: ignore[call-overload]
    _write_manifests(out, data, opts, sets, shards, written, per_shard, inputs, skipped)
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d samples in %d+%d shards, %d skipped, %.1f s (%.0f img/s)",
        split,
        len(written),
        len(shards[64]),
        len(shards[256]),
        len(skipped),
        seconds,
        len(jobs) / max(seconds, 1e-9),
    )
    return {"split": split, "samples": len(written), "skipped": skipped, "seconds": seconds}


def _json(meta: dict, load_size: int) -> bytes:
    return json.dumps({**meta, "load_size": load_size}, sort_keys=True).encode("utf-8")


def build_shards(
    paths: DataPaths,
    out_dir: str | Path,
    opts: ShardOptions,
    splits: Sequence[str] = SPLITS,
    *,
    progress: bool = True,
) -> list[dict]:
    """Validate the raw data and write shards, indexes and manifests for ``splits``."""
    data = read_dataset(paths, splits)
    for d in data.values():
        for w in d.warnings:
            log.warning("%s", w)
    if opts.text_encoder is not None:
        from stackgan.data.reembed import reembed_splits

        data = reembed_splits(data, opts.text_encoder)
    # One pool for all splits, fed in split order: while a split's index and manifests
    # are written, the workers already process the next split's images.
    jobs = [job for s in splits for job in _plan_split(data[s], opts)[1]]
    results = _bounded_imap(jobs, opts.workers)
    try:
        return [
            build_split(data[s], out_dir, opts, progress=progress, results=results) for s in splits
        ]
    finally:
        results.close()  # stops the pool if a split failed


__all__ = [
    "ShardOptions",
    "build_shards",
    "build_split",
    "samples_per_shard",
    "write_index",
]
