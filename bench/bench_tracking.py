"""Training-thread overhead of MLflowTracker against an sqlite store.

Per step the "training thread" calls ``log_metrics`` with ``--scalars`` values, plus one
``--image-size``² uint8 image every ``--image-every`` steps. Reported (median over
``--repeats``):

* time spent inside tracker calls per step, as a percentage of ``--step-ms`` (the
  reference Stage-I step on this machine) and of a measured tiny compute step;
* the tiny compute step alone vs. with the tracker's worker running beside it (the
  worker competes for CPU/GIL; this is the overhead a real step would also see);
* ``close()`` time (flush) and drops.

Prints numbers only, no asserts. Example: ``python bench/bench_tracking.py --steps 200``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stackgan.tracking import MLflowTracker, NullTracker, Tracker, resolve_tracking_uri


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_compute_step(size: int) -> tuple[Callable[[], None], torch.nn.Module]:
    """A tiny conv forward+backward+SGD step on CPU (stands in for training work)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 3, 3, padding=1)
    )
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(4, 3, size, size)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()

    return step, net


def time_compute(step: Callable[[], None], n: int) -> float:
    """Median seconds of ``n`` compute steps."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_repeat(
    args: argparse.Namespace, tracker: Tracker, repeat: int, compute: Callable[[], None]
) -> dict[str, float]:
    """One training-like loop; returns per-step timings (ms)."""
    image = np.random.default_rng(repeat).integers(0, 256, (args.image_size,) * 2 + (3,), np.uint8)
    in_tracker, totals = [], []
    for step in range(args.steps):
        metrics = {f"loss_{k}": float(step * k) for k in range(args.scalars)}
        t0 = time.perf_counter()
        tracker.log_metrics(metrics, step=step)
        if step % args.image_every == 0:
            tracker.log_image(image, key="samples", step=step)
        t1 = time.perf_counter()
        compute()
        totals.append(time.perf_counter() - t0)
        in_tracker.append(t1 - t0)
    t0 = time.perf_counter()
    tracker.close()
    return {
        "tracker_ms": 1000 * statistics.mean(in_tracker),
        "tracker_max_ms": 1000 * max(in_tracker),
        "step_ms": 1000 * statistics.mean(totals),
        "close_ms": 1000 * (time.perf_counter() - t0),
    }


def worker_costs(uri: str, args: argparse.Namespace, n: int = 20) -> tuple[float, float]:
    """Median ms of one synchronous ``log_batch`` (one step's scalars) and one image upload.

    This is what the background worker spends per item; an upper bound of what it can
    take from the training process when every step is sent on its own (slow steps).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("bench").experiment_id
    run_id = client.create_run(exp_id, run_name="worker-cost").info.run_id
    image = np.random.default_rng(0).integers(0, 256, (args.image_size,) * 2 + (3,), np.uint8)
    batch_ms, image_ms = [], []
    for step in range(n):
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        client.log_batch(run_id, [Metric(f"m{k}", 1.0, now, step) for k in range(args.scalars)])
        t1 = time.perf_counter()
        if step < 5:
            client.log_image(run_id, image, key="samples", step=step)
        batch_ms.append(1000 * (t1 - t0))
        image_ms.append(1000 * (time.perf_counter() - t1))
    client.set_terminated(run_id)
    return statistics.median(batch_ms), statistics.median(image_ms[:5])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a small report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scalars", type=int, default=12, help="metrics per step")
    p.add_argument("--image-every", type=int, default=50)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--step-ms", type=float, default=2700.0, help="reference training step (ms)")
    p.add_argument("--compute-size", type=int, default=64, help="side of the tiny compute step")
    p.add_argument("--system-metrics", action="store_true", help="also run system metrics")
    p.add_argument("--store", type=Path, help="results dir for mlflow.db (default: a temp dir)")
    args = p.parse_args(argv)

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores")
    print(
        f"  torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        uri = resolve_tracking_uri(None, args.store or Path(tmp))
        compute, _ = make_compute_step(args.compute_size)
        for _ in range(20):  # warm up torch
            compute()

        def mlflow_tracker(r: int) -> MLflowTracker:
            return MLflowTracker.start(
                tracking_uri=uri,
                experiment="bench",
                run_name=f"bench-{r}",
                log_system_metrics=args.system_metrics,
            )

        mlflow_tracker(-1).close()  # creates the database and experiment
        batch_ms, image_ms = worker_costs(uri, args)
        with_mlflow, baseline = [], []
        for r in range(args.repeats):  # interleaved, so machine noise hits both alike
            baseline.append(one_repeat(args, NullTracker(), r, compute))
            with_mlflow.append(one_repeat(args, mlflow_tracker(r), r, compute))

    def med(results: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in results)

    tracker_ms = med(with_mlflow, "tracker_ms")
    base_ms, step_ms = med(baseline, "step_ms"), med(with_mlflow, "step_ms")
    print(
        f"workload: {args.steps} steps x {args.repeats} repeats, {args.scalars} scalars/step, "
        f"{args.image_size}x{args.image_size} image every {args.image_every} steps"
    )
    print(f"training thread inside tracker calls: {tracker_ms:.3f} ms/step (median of means)")
    print(f"  worst single call (median over repeats): {med(with_mlflow, 'tracker_max_ms'):.2f} ms")
    print(f"  = {100 * tracker_ms / args.step_ms:.4f} % of a {args.step_ms:.0f} ms reference step")
    print(f"  = {100 * tracker_ms / base_ms:.2f} % of the measured tiny step ({base_ms:.2f} ms)")
    extra = step_ms - base_ms
    print(
        f"tiny step wall time: {base_ms:.2f} ms with NullTracker, {step_ms:.2f} ms with "
        f"MLflowTracker ({extra:+.2f} ms = {100 * extra / base_ms:+.1f} %, includes the worker's "
        "CPU/GIL competition)"
    )
    print(
        f"that extra time vs the {args.step_ms:.0f} ms reference step: "
        f"{100 * max(extra, tracker_ms) / args.step_ms:.3f} % (target < 2 %)"
    )
    print(f"close() flush: {med(with_mlflow, 'close_ms'):.0f} ms median")
    per_step = batch_ms + image_ms / args.image_every
    print(
        f"worker cost per item: log_batch {batch_ms:.2f} ms, image {image_ms:.1f} ms; with one "
        f"log_batch per {args.step_ms:.0f} ms step: {per_step:.2f} ms/step = "
        f"{100 * per_step / args.step_ms:.3f} % (upper bound: worker time fully stolen)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
