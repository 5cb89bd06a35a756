"""Stage-II against Stage-I: which colour changes are Stage-II's, and which the read-back's?

The attribute classifier reads 64 px images, so a 256 px Stage-II image is reduced to 64 px
first (the evaluation protocol: antialiased bilinear). For each Stage-II network file this
regenerates the final evaluation's requests (same captions, noise and protocol) and counts,
image for image against the Stage-I image of the same request, the colour decisions that
went from right to wrong (lost) and from wrong to right (won), with the sign test:

* of the Stage-II image;
* of the Stage-I image upsampled to 256 px as the network's Stage-II skip does (``skip_base``
  with its ``model.stage2_skip_base``: what a Stage-II that refines nothing would be; with
  ``model.stage2_zero_init`` it is where Stage-II starts): the changes that the upsampling
  and the read-back make by themselves;

under each read-back of ``READ_BACKS``. It also reads the real test images at 256 px and
compares them with their 64 px versions (decision agreement, mean pixel error), which shows
how close each read-back is to the way the data's 64 px images were made.

    python bench/bench_stage2_readback.py --help
    python bench/bench_stage2_readback.py --data results/data/twin-<key> \\
        --network results/demo/stage2/network-final.pt \\
        --eval-metrics results/demo/eval/stage2/metrics.json --out bench-out/readback

``--eval-metrics`` takes the protocol (captions, batch size, noise seed, layout) from that
final evaluation, so the images are the evaluation's own and the protocol's row
(``bilinear_aa``) repeats its Stage-II accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import machine


def _predict(classifier: torch.nn.Module, images: torch.Tensor, mode: str) -> np.ndarray:
    from stackgan.evaluation.attributes.model import predict, read_back

    with torch.no_grad():
        return predict(classifier, read_back(images.float(), mode))


def real_images(data: Path, classifier: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Per read-back: agreement of the decisions on the real 256 px test images with those on
    their 64 px versions, and the mean absolute pixel difference of the two 64 px images.
    Streams both sets batch by batch (they are in the same index order)."""
    from stackgan.data.imagesets import iter_real_images
    from stackgan.evaluation.attributes.model import READ_BACKS, predict, read_back

    shards = data / "shards"
    agree = {m: np.zeros(2) for m in READ_BACKS}
    abs_diff = dict.fromkeys(READ_BACKS, 0.0)
    n = values = 0
    batches = zip(
        iter_real_images(shards / "test-64", 64),
        iter_real_images(shards / "test-256", 256),
        strict=True,  # a set with more images than the other is an error
    )
    with torch.no_grad():
        for low, high in batches:
            want = predict(classifier, low)
            for mode in READ_BACKS:
                read = read_back(high, mode)
                agree[mode] += (predict(classifier, read) == want).sum(axis=0)
                abs_diff[mode] += float((read - low).abs().sum())
            n += low.shape[0]
            values += low.numel()
    return {
        mode: {
            "body_agreement": float(agree[mode][0] / n),
            "wing_agreement": float(agree[mode][1] / n),
            "pixel_mae": abs_diff[mode] / values,
            "images": n,
        }
        for mode in READ_BACKS
    }


def stage2_against_stage1(
    network: Path, data: Path, classifier: torch.nn.Module, protocol: Any
) -> dict[str, Any]:
    """Stage-I and Stage-II accuracies and the paired counts of Stage-II and of the skip base."""
    from tqdm import tqdm

    from stackgan.evaluation.attributes.model import READ_BACKS, predict
    from stackgan.evaluation.attributes.paired import paired_changes
    from stackgan.evaluation.attributes.score import accuracy, attribute_labels
    from stackgan.evaluation.protocol import load_requests
    from stackgan.networkfile import read_network
    from stackgan.networks.stage2 import skip_base
    from stackgan.sampling import Sampler, chunks

    sampler = Sampler.load(network, use_ema=protocol.use_ema, channels_last=protocol.channels_last)
    if sampler.stage != 2:
        raise SystemExit(f"{network}: a Stage-{sampler.stage} network; this needs Stage-II")
    skip_mode = read_network(network).model_config().stage2_skip_base
    requests = load_requests(data / "shards" / "test-index.h5", protocol)
    wanted = attribute_labels(requests.captions)
    stage1: list[np.ndarray] = []
    final: dict[str, list[np.ndarray]] = {m: [] for m in READ_BACKS}
    base: dict[str, list[np.ndarray]] = {m: [] for m in READ_BACKS}
    for chunk, (start, stop) in enumerate(
        tqdm(chunks(len(requests), protocol.batch_size), desc=network.parent.parent.name)
    ):
        samples = sampler.sample_chunk(requests.embeddings[start:stop], chunk, protocol.seed)
        low = samples.stage1.float()
        high = samples.final.float()
        stage1.append(predict(classifier, low))
        upsampled = skip_base(low, high.shape[-1], skip_mode)
        for mode in READ_BACKS:
            final[mode].append(_predict(classifier, high, mode))
            base[mode].append(_predict(classifier, upsampled, mode))
    before = np.concatenate(stage1)
    result: dict[str, Any] = {"stage1": accuracy(before, wanted), "requests": len(requests)}
    for mode in READ_BACKS:
        after, copy = np.concatenate(final[mode]), np.concatenate(base[mode])
        result[mode] = {
            "stage2": accuracy(after, wanted),
            "stage2_vs_stage1": paired_changes(before, after, wanted),
            "skip_base_vs_stage1": paired_changes(before, copy, wanted),
        }
    return result


def _print(name: str, res: dict[str, Any]) -> None:
    s1 = res["stage1"]
    print(
        f"\n{name}: {res['requests']} requests; Stage-I body {s1['body_accuracy']:.4f}, "
        f"wing {s1['wing_accuracy']:.4f}"
    )
    print(
        f"{'read-back':<12} {'S2 body':>8} {'S2 wing':>8}   "
        f"{'Stage-II lost/won (p)':<34} {'skip base lost/won (p)':<34}"
    )
    for mode, row in res.items():
        if mode in ("stage1", "requests"):
            continue
        cells = []
        for key in ("stage2_vs_stage1", "skip_base_vs_stage1"):
            c = row[key]
            cells.append(
                f"body {c['body_lost']:.0f}/{c['body_won']:.0f} ({c['body_sign_p']:.2f}) "
                f"wing {c['wing_lost']:.0f}/{c['wing_won']:.0f} ({c['wing_sign_p']:.2f})"
            )
        acc = row["stage2"]
        print(
            f"{mode:<12} {acc['body_accuracy']:>8.4f} {acc['wing_accuracy']:>8.4f}"
            f"   {cells[0]:<34} {cells[1]:<34}"
        )


def _protocol_of(metrics_json: Path) -> Any:
    """The evaluation protocol recorded in a final evaluation's ``metrics.json``."""
    import json
    from dataclasses import fields

    from stackgan.evaluation.protocol import Protocol

    try:
        recorded = json.loads(metrics_json.read_text())["protocol"]
        return Protocol(**{f.name: recorded[f.name] for f in fields(Protocol)})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{metrics_json}: no evaluation protocol in it ({exc!r})") from exc


def main(argv: list[str] | None = None) -> int:
    from stackgan.config import EvalConfig

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, required=True, help="the twin's data directory (results/data/twin-*)"
    )
    p.add_argument(
        "--network", type=Path, action="append", required=True, help="a Stage-II network file"
    )
    p.add_argument(
        "--eval-metrics",
        type=Path,
        help="a final evaluation's metrics.json: use its protocol (overrides the flags below)",
    )
    p.add_argument("--captions-per-image", type=int, default=EvalConfig.captions_per_image)
    p.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    p.add_argument("--seed", type=int, default=EvalConfig.seed, help="the protocol's noise seed")
    p.add_argument("--channels-last", action="store_true", help="the protocol's eval.channels_last")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from stackgan.evaluation.attributes.model import load_classifier
    from stackgan.evaluation.protocol import Protocol
    from stackgan.fileio import write_json

    for path in [args.data / "attribute_classifier.pt", *args.network]:
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    torch.set_num_threads(args.threads)
    if args.eval_metrics is not None:
        protocol = _protocol_of(args.eval_metrics)
    else:
        protocol = Protocol(
            captions_per_image=args.captions_per_image,
            batch_size=args.batch_size,
            seed=args.seed,
            channels_last=args.channels_last,
        )
    classifier = load_classifier(args.data / "attribute_classifier.pt")
    print(f"machine: {machine()}")
    report: dict[str, Any] = {"machine": machine(), "protocol": vars(protocol), "networks": {}}
    report["real"] = real_images(args.data, classifier)
    print("real test images, 256 px read back against their 64 px versions:")
    for mode, row in report["real"].items():
        print(
            f"  {mode:<12} decisions agree: body {row['body_agreement']:.4f}, wing "
            f"{row['wing_agreement']:.4f}; mean |pixel difference| {row['pixel_mae']:.4f}"
        )
    for network in args.network:
        res = stage2_against_stage1(network, args.data, classifier, protocol)
        report["networks"][str(network)] = res
        _print(str(network), res)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "readback.json", report)
    print(f"\nwrote {args.out / 'readback.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
