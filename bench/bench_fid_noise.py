"""How much does the in-training twin-FID move when only the evaluation's draw changes?

The quality benchmark reads its Stage-I twin-FID curve "falling from point to point,
allowing for noise". This measures the evaluation's own part of that noise on one trained
network file: the in-training evaluation (the same classifier, real test features,
caption count, draws per caption and chunking as ``stackgan.monitor``) is repeated

* ``noise``: on the training's fixed captions with ``--draws`` other noise seeds
  (draw 0 is the training's own seed, so it reproduces the run's last point);
* ``captions``: on ``--draws`` other sets of test captions (every image's next caption
  and images shifted along the index), each with its own noise.

It prints the twin-FID, body and wing accuracy of each draw, and per kind the mean, the
standard deviation and the coefficient of variation (std / mean) of the twin-FID. The
network's own fluctuation from one training step to the next is not measured here.

    python bench/bench_fid_noise.py --help
    python bench/bench_fid_noise.py --data bench-out/q/results/data/twin-<key> \\
        --run bench-out/q/results/quality-s1/stage1 --out bench-out/fid-noise
    # a point inside the run: one of the training states the run keeps (train.keep_checkpoints)
    python bench/bench_fid_noise.py --data ... --run ... \\
        --state bench-out/q/results/quality-s1/work/stage1/training-state-00004001.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import machine


def shifted_requests(index: Path, captions: int, per_caption: int, shift: int):
    """``captions`` test captions as ``stackgan.monitor.load_requests`` picks them, with
    every row moved ``shift`` images along the index and caption column ``shift``."""
    from stackgan.data.index import SplitIndex, evenly_spaced_rows
    from stackgan.evaluation.attributes.score import attribute_labels
    from stackgan.monitor import MonitorRequests

    with SplitIndex(index) as idx:
        rows = (evenly_spaced_rows(idx.num_images, captions) + shift) % idx.num_images
        cols = (np.arange(len(rows)) + shift) % idx.captions_per_image
        emb = idx.embedding_pairs(rows, cols)
        wanted = attribute_labels(idx.caption_pairs(rows, cols))
    return MonitorRequests(
        embeddings=torch.from_numpy(np.repeat(emb.astype(np.float32), per_caption, axis=0)),
        labels=np.repeat(wanted, per_caption, axis=0),
        caption_ids=np.repeat(np.arange(len(rows)), per_caption),
    )


def state_sampler(state: Path, data: Path, cfg):
    """A Stage-I training state's G_ema as the training's snapshot at that step: eval
    mode, ``channels_last`` as trained, standing BatchNorm statistics over the same 512
    training captions and seed as ``stackgan.training``."""
    from stackgan.checkpoint import load
    from stackgan.data.index import SplitIndex, evenly_spaced_rows
    from stackgan.networks import build_networks
    from stackgan.sampling import Sampler
    from stackgan.training.run import STANDING_STAT_CAPTIONS
    from stackgan.training.state import STATE_FORMAT

    saved = load(state, expected_format=STATE_FORMAT)
    if cfg.stage != 1 or saved.get("G_ema") is None:
        raise SystemExit(f"bench_fid_noise: {state} is not a Stage-I state with G_ema")
    g, _ = build_networks(cfg.model, 1)
    g.load_state_dict(saved["G_ema"])
    sampler = Sampler(1, cfg.model, g, None, {"step": int(saved["step"]), "weights": "G_ema"})
    if cfg.train.channels_last:
        sampler = sampler.to(memory_format=torch.channels_last)
    with SplitIndex(data / "shards" / "train-index.h5") as idx:
        rows = evenly_spaced_rows(idx.num_images, STANDING_STAT_CAPTIONS, rounded=False)
        k = idx.captions_per_image
        emb = idx.embedding_pairs(rows.tolist(), [i % k for i in range(len(rows))])
    sampler.recompute_bn_statistics(torch.from_numpy(emb).float(), seed=cfg.train.seed + 4242)
    return sampler


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation and coefficient of variation of ``values``."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "cv": std / mean}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the twin's data directory")
    p.add_argument("--run", type=Path, required=True, help="a Stage-I run directory")
    p.add_argument("--network", default="network-final.pt", help="file in --run to evaluate")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help="evaluate G_ema of this Stage-I training state instead (its BatchNorm statistics\n"
        "recomputed as the training's snapshots do: standing statistics)",
    )
    p.add_argument("--draws", type=int, default=8, help="evaluations per kind (default 8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error("--draws must be at least 2")

    from stackgan.config import RunConfig, from_dict
    from stackgan.distributed import DistInfo
    from stackgan.monitor import TrainingMonitor, monitor_seed
    from stackgan.sampling import Sampler

    torch.set_num_threads(args.threads)
    cfg = from_dict(RunConfig, yaml.safe_load((args.run / "run_config.yaml").read_text()))
    t = cfg.train
    index = args.data / "shards" / "test-index.h5"
    classifier = args.data / "attribute_classifier.pt"
    for path in (index, classifier, args.state or args.run / args.network):
        if not path.exists():
            raise SystemExit(f"bench_fid_noise: {path} does not exist")
    monitor = TrainingMonitor.from_files(
        index=index,
        captions=t.eval_captions,
        samples_per_caption=t.eval_samples_per_caption,
        batch_size=t.eval_batch_size,
        seed=monitor_seed(t.seed),
        classifier=classifier,
        real_set=args.data / "shards" / "test-64",
        cache=args.run / "eval-real-features.npz",
    )
    if args.state is None:
        sampler = Sampler.load(args.run / args.network, channels_last=cfg.train.channels_last)
        source = args.run / args.network
    else:
        sampler = state_sampler(args.state, args.data, cfg)
        source = args.state
    print(f"machine: {machine()}; {source} (step {sampler.meta['step']})")
    print(
        f"{len(monitor.requests)} images per evaluation ({t.eval_captions} captions x "
        f"{t.eval_samples_per_caption} draws), {args.draws} evaluations per kind"
    )

    fixed_requests = monitor.requests
    rows: list[dict[str, float | int | str]] = []
    for kind in ("noise", "captions"):
        for d in range(args.draws):
            monitor.seed = monitor_seed(t.seed) + d * 7919
            monitor.requests = (
                fixed_requests
                if kind == "noise"
                else shifted_requests(
                    index, t.eval_captions, t.eval_samples_per_caption, shift=d + 1
                )
            )
            t0 = time.perf_counter()
            m = monitor.evaluate(sampler, DistInfo())
            row = {
                "kind": kind,
                "draw": d,
                "twin_fid": m["eval.twin_fid"],
                "body": m["eval.body_accuracy"],
                "wing": m["eval.wing_accuracy"],
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"{kind:9s} draw {d}: twin-FID {row['twin_fid']:.3f} body {row['body']:.3f} "
                f"wing {row['wing']:.3f} ({row['seconds']:.1f} s)",
                flush=True,
            )
    summary = {
        kind: spread([float(r["twin_fid"]) for r in rows if r["kind"] == kind])
        for kind in ("noise", "captions")
    }
    for kind, s in summary.items():
        print(
            f"twin-FID over {kind}: mean {s['mean']:.3f}, std {s['std']:.3f}, "
            f"std / mean {100 * s['cv']:.1f}%"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"run": str(args.run), "network": args.network, "rows": rows, "summary": summary}
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
