"""Birds from your own sentences: does the generator follow sentences it has never seen?

Embeds fresh sentences (not twin captions) with the twin text encoder, draws ``--samples``
images per sentence from a trained generator (``stackgan generate --text`` does the
same), and reads the colours back with the twin attribute classifier. Prints, per sentence
and overall, the body / wing / joint accuracy next to the run's own final evaluation on
the test captions (``--eval-metrics``), and writes the captioned grid.

    python bench/bench_text.py --network results/demo/stage2/network-final.pt \\
        --classifier results/data/twin-<key>/attribute_classifier.pt \\
        --eval-metrics results/demo/eval/stage2/metrics.json --out bench-out/text
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

#: five sentences written for this benchmark: none is a twin caption or template
SENTENCES = (
    "i saw a red bird with blue wings in my garden today.",
    "there is a tiny white bird here, it has black feathers on its wings.",
    "a green belly and orange wingbars make this one easy to spot.",
    "the yellow breasted songbird spread its purple wings.",
    "what a lovely brown chest and grey coverts this big bird has.",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--network", type=Path, required=True)
    p.add_argument("--classifier", type=Path, required=True, help="attribute_classifier.pt")
    p.add_argument("--eval-metrics", type=Path, help="the run's eval/stageN/metrics.json")
    p.add_argument("--sentence", action="append", help="replace the five built-in sentences")
    p.add_argument("--samples", type=int, default=40, help="images per sentence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from stackgan.evaluation.attributes.model import load_classifier, predict
    from stackgan.evaluation.attributes.score import accuracy, attribute_labels
    from stackgan.generate import generate
    from stackgan.sampling import Sampler, iterate_samples
    from stackgan.text.encoder import load_encoder

    sentences = list(args.sentence or SENTENCES)
    wanted = attribute_labels(sentences)
    if (wanted < 0).any():
        bad = [s for s, w in zip(sentences, wanted, strict=True) if (w < 0).any()]
        raise SystemExit(f"the twin encoder reads no body or wing colour in: {bad}")
    encoder = load_encoder("twin")
    emb = torch.from_numpy(encoder.encode(sentences))
    sampler = Sampler.load(args.network, use_ema=True)
    classifier = load_classifier(args.classifier)
    requests = emb.repeat_interleave(args.samples, dim=0)
    preds = []
    for _, _, out in iterate_samples(sampler, requests, batch_size=50, seed=args.seed):
        preds.append(predict(classifier, out.final.float().cpu()))
    predicted = np.concatenate(preds)
    want_rows = np.repeat(wanted, args.samples, axis=0)
    overall = accuracy(predicted, want_rows)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(
        f"network: {args.network} ({sampler.meta.get('stage', '?')}), {args.samples} per sentence"
    )
    print(f"{'sentence':<72} {'body':>5} {'wing':>5} {'joint':>5}")
    rows = []
    for i, s in enumerate(sentences):
        part = slice(i * args.samples, (i + 1) * args.samples)
        acc = accuracy(predicted[part], want_rows[part])
        rows.append({"sentence": s, **acc})
        print(f"{s:<72} {acc['body_accuracy']:>5.2f} {acc['wing_accuracy']:>5.2f} "
              f"{acc['joint_accuracy']:>5.2f}")  # fmt: skip
    print(f"{'all five (chance: body ' + format(overall['body_chance'], '.2f') + ')':<72} "
          f"{overall['body_accuracy']:>5.2f} {overall['wing_accuracy']:>5.2f} "
          f"{overall['joint_accuracy']:>5.2f}")  # fmt: skip
    reference = None
    if args.eval_metrics is not None:
        m = json.loads(args.eval_metrics.read_text())["metrics"]
        reference = {
            k: m[f"cond_{k}"] for k in ("body_accuracy", "wing_accuracy", "joint_accuracy")
        }
        print(f"{'the run final evaluation on its test captions':<72} "
              f"{reference['body_accuracy']:>5.2f} {reference['wing_accuracy']:>5.2f} "
              f"{reference['joint_accuracy']:>5.2f}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    generate(sampler, emb, sentences, args.out / "grid", source="bench_text", samples=6)
    (args.out / "text.json").write_text(
        json.dumps({"sentences": rows, "overall": overall, "test_captions": reference}, indent=1)
    )
    print(f"grid: {args.out / 'grid' / 'grid.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
