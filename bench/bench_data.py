"""Data-preparation benchmarks: preprocessing throughput, peak memory, loader throughput.

Prints numbers only (no pass/fail). Results and the machine go into docs/benchmarks.md.

    python bench/bench_data.py --help
    python bench/bench_data.py                      # everything, default sizes 2000 and 12000
    python bench/bench_data.py --only loader --sizes 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}"
    )


def ensure_twin(workdir: Path, images: int, seed: int = 0) -> Path:
    """A twin with ~``images`` images at CUB-like image sizes (200 classes when possible)."""
    from stackgan.data.twin import TwinSpec, write_twin

    classes = 200 if images >= 2000 else max(8, images // 10)
    per_class = max(1, images // classes)
    root = workdir / f"twin-{classes}x{per_class}-s{seed}"
    if not (root / "twin.json").exists():
        print(f"# writing twin {root.name} ({classes * per_class} images) ...", flush=True)
        t0 = time.perf_counter()
        spec = TwinSpec(
            num_classes=classes, images_per_class=per_class, seed=seed, min_side=300, max_side=500
        )
        write_twin(spec, root, workers=os.cpu_count() or 1, progress=False)
        print(f"#   done in {time.perf_counter() - t0:.0f} s", flush=True)
    return root


class TreeRssSampler:
    """Polls the summed RSS of a process and its children; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_total = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs]
            except psutil.Error:
                rss = []
            if rss:
                self.peak_total = max(self.peak_total, sum(rss))
                self.peak_single = max(self.peak_single, max(rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_build(
    root: Path, out: Path, workers: int, splits: list[str]
) -> tuple[float, int, int, int]:
    """Run ``stackgan build-shards`` in a subprocess; return (seconds, images, peak tree RSS,
    peak single RSS).
    """
    cmd = [
        sys.executable, "-m", "stackgan.cli.build_shards", "--root", str(root), "--out", str(out),
        "--workers", str(workers), "--quiet", "--splits", *splits,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with TreeRssSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"build-shards failed:\n{err}")
    images = sum(
        json.loads((out / f"{s}-64" / "manifest.json").read_text())["num_samples"] for s in splits
    )
    return seconds, images, sampler.peak_total, sampler.peak_single


def bench_preprocess(root: Path, workdir: Path, repeats: int) -> None:
    print("\n## Preprocessing throughput (build-shards, train+test, wall clock incl. start-up)")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(repeats):
        for workers in (1, 2):  # interleaved so that machine noise hits both
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                seconds, images, _, _ = run_build(root, Path(tmp), workers, ["train", "test"])
            rates[workers].append(images / seconds)
            print(
                f"  repeat {r}: {workers} process(es): {images} images in {seconds:.1f} s = "
                f"{images / seconds:.1f} img/s"
            )
    ratios = [b / a for a, b in zip(rates[1], rates[2], strict=True)]
    m1, m2 = statistics.median(rates[1]), statistics.median(rates[2])
    print(
        f"  median: 1 process {m1:.1f} img/s, 2 processes {m2:.1f} img/s; "
        f"median of per-repeat ratios {statistics.median(ratios):.2f}x"
    )


def bench_memory(roots: dict[int, Path], workdir: Path) -> None:
    print("\n## Peak RSS of build-shards (2 processes; sampled every 50 ms)")
    for root in roots.values():
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            seconds, images, total, single = run_build(root, Path(tmp), 2, ["train", "test"])
        print(
            f"  {images:6d} images: peak RSS of the process tree {total / 2**20:.0f} MiB, "
            f"largest single process {single / 2**20:.0f} MiB ({seconds:.0f} s)"
        )


def bench_loader(root: Path, workdir: Path, repeats: int, batches: int) -> None:
    from stackgan.data.loader import spec_from_set, train_loader

    print(
        "\n## Loader throughput per worker process (decode + random crop + flip + caption choice)"
    )
    shard_dir = workdir / f"shards-{root.name}"
    if not (shard_dir / "train-256" / "manifest.json").exists():
        run_build(root, shard_dir, 2, ["train"])
    import torch

    torch.set_num_threads(1)
    for res in (64, 256):
        rates = []
        for r in range(repeats):
            spec = spec_from_set(
                shard_dir / f"train-{res}",
                batch_size=64,
                num_workers=0,
                seed=r,
                caption_mode="mean4",
            )
            it = train_loader(spec, 0)
            next(it)  # fill the shuffle buffer outside the timing
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            rates.append(batches * 64 / (time.perf_counter() - t0))
        print(
            f"  train-{res}: median {statistics.median(rates):.0f} samples/s per worker "
            f"({', '.join(f'{x:.0f}' for x in rates)})"
        )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "stackgan-bench",
        help="cache for twins/shards",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[2000, 12000],
        help="twin sizes (images) for the memory test",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--loader-batches", type=int, default=30, help="batches of 64 per loader measurement"
    )
    p.add_argument("--only", choices=("preprocess", "memory", "loader"), nargs="+")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ("preprocess", "memory", "loader"))
    print(f"# machine: {machine()}")
    roots = {n: ensure_twin(args.workdir, n) for n in args.sizes}
    smallest = roots[min(roots)]
    if "preprocess" in only:
        bench_preprocess(smallest, args.workdir, args.repeats)
    if "memory" in only:
        bench_memory(roots, args.workdir)
    if "loader" in only:
        bench_loader(smallest, args.workdir, args.repeats, args.loader_batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
