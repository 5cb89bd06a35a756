"""How exact, and how fast, is Stage-II's ``model.stage2_exact_consistency``?

For a Stage-II network file trained with the option, this regenerates the first chunks of
its final evaluation (same captions, noise and protocol), keeps each chunk's Stage-II image
before the projection and its Stage-I image, and then runs on them:

* ``one step``: the minimum-norm correction, clamped to [-1, 1] (the solver's first round);
* ``POCS x10``: the former method, that step alternated with the clamp up to 10 times on
  the images the clamp cut (the baseline, reimplemented here);
* ``solver``: ``enforce_consistency`` as the generator runs it (accelerated dual ascent,
  each channel until its read-back is within the tolerance).

Per method: the median time over ``--repeats`` passes (one thread count, the same inputs),
how many images read back (the protocol's antialiased bilinear) further than 1e-4 from
their Stage-I image and the largest such pixel error, and how many colour decisions of the
attribute classifier differ from the Stage-I image's.

    python bench/bench_consistency.py --help
    python bench/bench_consistency.py --data results/data/twin-<key> \\
        --network results/demo/stage2/network-final.pt \\
        --eval-metrics results/demo/eval/stage2/metrics.json --out bench-out/consistency
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stage2_readback import _protocol_of
from bench_train import machine

OFF = 1e-4  # a read-back pixel further than this from the Stage-I image counts as off


def capture(network: Path, data: Path, protocol: Any, chunks: int) -> list[tuple[Any, Any]]:
    """(Stage-II image before the projection, Stage-I image) of the first ``chunks``
    chunks of the evaluation's requests."""
    import stackgan.networks.stage2 as stage2
    from stackgan.evaluation.protocol import load_requests
    from stackgan.sampling import Sampler
    from stackgan.sampling import chunks as spans

    sampler = Sampler.load(network, use_ema=protocol.use_ema, channels_last=protocol.channels_last)
    if sampler.stage != 2 or not sampler.model.stage2_exact_consistency:
        raise SystemExit(f"{network}: not a Stage-II network with model.stage2_exact_consistency")
    requests = load_requests(data / "shards" / "test-index.h5", protocol)
    pairs: list[tuple[Any, Any]] = []
    solve = stage2.enforce_consistency

    def keep(high: torch.Tensor, low: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        pairs.append((high.detach().float().clone(), low.detach().float().clone()))
        return solve(high, low, 1)

    stage2.enforce_consistency = keep  # the generator looks it up at call time
    try:
        for chunk, (start, stop) in enumerate(spans(len(requests), protocol.batch_size)):
            if chunk == chunks:
                break
            sampler.sample_chunk(requests.embeddings[start:stop], chunk, protocol.seed)
    finally:
        stage2.enforce_consistency = solve
    return pairs


def pocs(high: torch.Tensor, low: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """The former method: one projection, then the projection and the clamp alternated on
    the images the clamp cut, up to ``iterations`` projections in all."""
    from stackgan.networks.stage2 import _projection_matrices, downsample

    p = _projection_matrices(low.shape[-1], high.shape[-1])[1].float()

    def project(img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (img + p @ (target - downsample(img, target.shape[-1])) @ p.T).clamp(-1.0, 1.0)

    z = project(high, low)
    for _ in range(iterations - 1):
        cut = (z.abs() >= 1.0).flatten(1).any(dim=1).nonzero().flatten()
        if cut.numel() == 0:
            break
        z = z.index_copy(0, cut, project(z[cut], low[cut]))
    return z


def measure(
    name: str,
    method: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pairs: list[tuple[Any, Any]],
    classifier: torch.nn.Module,
    repeats: int,
) -> dict[str, Any]:
    """Median time of ``repeats`` passes, then the read-back errors and changed decisions."""
    from stackgan.evaluation.attributes.model import predict, read_back

    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            outs = [method(high, low) for high, low in pairs]
            times.append(time.perf_counter() - start)
        errors, changed = [], np.zeros(2, dtype=int)
        for o, (_, low) in zip(outs, pairs, strict=True):
            errors.append((read_back(o) - low).abs().flatten(1).amax(1))
            changed += (predict(classifier, low) != predict(classifier, read_back(o))).sum(0)
        errors = torch.cat(errors)
    images = sum(low.shape[0] for _, low in pairs)
    row = {
        "seconds_median": statistics.median(times),
        "seconds": times,
        "ms_per_image": 1000 * statistics.median(times) / images,
        "images_off": int((errors > OFF).sum()),
        "max_error": float(errors.max()),
        "decisions_changed": {"body": int(changed[0]), "wing": int(changed[1])},
        "images": images,
    }
    print(
        f"  {name:<10} {row['seconds_median']:7.2f} s ({row['ms_per_image']:6.2f} ms/image)  "
        f"off by >{OFF:g}: {row['images_off']:5d} of {images}, max {row['max_error']:.2e};  "
        f"decisions changed body {changed[0]}, wing {changed[1]}"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="the twin's data directory")
    p.add_argument("--network", type=Path, required=True, help="a Stage-II network file")
    p.add_argument(
        "--eval-metrics", type=Path, required=True, help="its final evaluation's metrics.json"
    )
    p.add_argument("--chunks", type=int, default=8, help="evaluation chunks to regenerate")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per method")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from stackgan.evaluation.attributes.model import load_classifier
    from stackgan.fileio import write_json
    from stackgan.networks.stage2 import enforce_consistency

    for path in (args.data / "attribute_classifier.pt", args.network, args.eval_metrics):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    torch.set_num_threads(args.threads)
    protocol = _protocol_of(args.eval_metrics)
    classifier = load_classifier(args.data / "attribute_classifier.pt")
    print(f"machine: {machine()}, torch {torch.__version__}, {args.threads} threads")
    pairs = capture(args.network, args.data, protocol, args.chunks)
    print(f"{sum(lo.shape[0] for _, lo in pairs)} images in {len(pairs)} chunks:")
    methods = {
        "one step": lambda high, low: enforce_consistency(high, low, iterations=1),
        "POCS x10": pocs,
        "solver": enforce_consistency,
    }
    report: dict[str, Any] = {"machine": machine(), "threads": args.threads, "methods": {}}
    for name, method in methods.items():
        report["methods"][name] = measure(name, method, pairs, classifier, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "consistency.json", report)
    print(f"wrote {args.out / 'consistency.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
