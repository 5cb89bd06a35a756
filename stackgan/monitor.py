"""Cheap evaluation during training: is the generator learning the test captions?

Every ``train.eval_every`` steps (and at the end) the training loop hands this module an
eval-mode copy of the generator (``G_ema`` when there is one, BatchNorm statistics
averaged over ranks). It generates a fixed set of test-split requests -- ``captions``
test captions x ``samples_per_caption`` noise draws, seeded per chunk as in
:mod:`stackgan.sampling` -- and scores them with the twin attribute classifier:

* ``eval.{body,wing,joint}_accuracy`` with their ``_chance`` levels;
* ``eval.twin_fid``: Frechet distance to the real test images in the classifier's
  penultimate features (real features cached next to the training state);
* ``eval.diversity``: within-caption feature spread relative to the real within-class spread;
* Stage-II only: ``eval.consistency_attributes`` (Stage-I and Stage-II images get the same
  predicted colours) and ``eval.consistency_lowfreq`` (correlation of their 8x8 block means).
* ``eval.inception_fid`` (when Inception weights and the real test statistics of the
  evaluation are given): a small-sample FID of the same images against the real test set.
  Small samples bias FID upwards, so it tracks progress within a run; it is not the
  paper-protocol number of ``stackgan evaluate``.

The attribute metrics need the twin's classifier; with real CUB the monitor runs with
the Inception FID alone.

Generation is sharded: chunk ``c`` goes to rank ``c % world`` and the results are
gathered in request order, so every rank returns the same numbers as a single process
would, and no rank waits on another for long.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stackgan import distributed as dist_utils
from stackgan.data.imagesets import iter_real_images
from stackgan.data.index import SplitIndex, evenly_spaced_rows
from stackgan.evaluation.attributes.model import AttributeClassifier, load_classifier
from stackgan.evaluation.attributes.score import accuracy, attribute_labels
from stackgan.fileio import atomic_path, sha256_file
from stackgan.metrics import quality
from stackgan.sampling import Sampler, shard_chunks

if TYPE_CHECKING:
    from stackgan.evaluation.reference import ExtractorSpec

log = logging.getLogger(__name__)

REAL_CACHE_FORMAT = "stackgan-monitor-real/1"


def monitor_seed(train_seed: int) -> int:
    """Seed of the evaluation's noise: fixed per run, apart from the training streams."""
    return train_seed * 1_000_003 + 777


@dataclass(frozen=True)
class MonitorRequests:
    """The fixed evaluation set: embeddings and wanted attributes, caption-major."""

    embeddings: torch.Tensor  # [N, text_dim]
    labels: np.ndarray | None  # [N, 2] (body, wing) colour indices; None: not a twin
    caption_ids: np.ndarray  # [N] which caption (0..captions-1) each row samples

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def load_requests(
    index_path: str | Path, captions: int, samples_per_caption: int, *, labels: bool = True
) -> MonitorRequests:
    """``captions`` test captions spread evenly over the index's images, each repeated.

    ``labels``: parse the twin's (body, wing) colours from the captions (an error for
    captions that name none); False for real CUB.
    """
    with SplitIndex(index_path) as idx:
        rows = evenly_spaced_rows(idx.num_images, captions)
        cols = np.arange(len(rows)) % idx.captions_per_image
        emb = idx.embedding_pairs(rows, cols)
        text = idx.caption_pairs(rows, cols)
    wanted = attribute_labels(text) if labels else None
    if wanted is not None and (wanted < 0).any():
        raise ValueError(
            f"{index_path}: some captions name no body/wing colour (not a twin index?)"
        )
    k = samples_per_caption
    return MonitorRequests(
        embeddings=torch.from_numpy(np.repeat(emb.astype(np.float32), k, axis=0)),
        labels=None if wanted is None else np.repeat(wanted, k, axis=0),
        caption_ids=np.repeat(np.arange(len(rows)), k),
    )


@torch.no_grad()
def classify(
    classifier: AttributeClassifier, images: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float32, predicted (body, wing) [N, 2]) of images in [-1, 1]."""
    feats, body, wing = classifier.forward_features(images.float().cpu())
    preds = torch.stack([body.argmax(1), wing.argmax(1)], dim=1)
    return feats.numpy().astype(np.float32), preds.numpy()


def real_reference(
    classifier: AttributeClassifier,
    classifier_path: Path,
    real_set: Path,
    index_path: Path,
    cache: Path | None,
) -> tuple[np.ndarray, float]:
    """Real test-image features and their mean within-class pairwise distance (cached)."""
    from stackgan.provenance import manifest_hash

    key = {
        "format": REAL_CACHE_FORMAT,
        "classifier_sha256": sha256_file(classifier_path),
        "set": manifest_hash(real_set),
    }
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if json.loads(str(z["key"])) == key:
                return z["features"], float(z["within_class"])
    feats = np.concatenate(
        [classify(classifier, batch)[0] for batch in iter_real_images(real_set, size=64)]
    )
    with SplitIndex(index_path) as idx:
        class_ids = idx.class_ids()
    if len(class_ids) != len(feats):
        raise ValueError(
            f"{index_path}: {len(class_ids)} rows, but {real_set} has {len(feats)} images"
        )
    within = quality.grouped_pairwise_distance(feats, class_ids)
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, key=json.dumps(key), features=feats, within_class=within)
    return feats, within


@dataclass(frozen=True)
class InceptionReference:
    """The Inception FID's half of the monitor: the extractor and the real test statistics."""

    extractor: Any  # stackgan.metrics.extractors.FeatureExtractor
    mu: np.ndarray  # [2048]
    sigma: np.ndarray  # [2048, 2048]
    batch_size: int = 50

    @classmethod
    def from_files(
        cls, spec: ExtractorSpec, real_stats: Path, batch_size: int = 50
    ) -> InceptionReference:
        """Build the extractor and read the real statistics written by ``evaluate real-stats``.

        Raises:
            ValueError: the statistics were computed with other weights than ``spec``'s.
        """
        from stackgan.evaluation.reference import build_extractor, read_real_stats
        from stackgan.metrics.scores import feature_statistics

        extractor = build_extractor(spec)
        if extractor is None:
            raise ValueError("the in-training Inception FID needs Inception weights")
        feats, meta = read_real_stats(real_stats)
        want = extractor.metadata().get("weights_sha256")
        if meta.get("weights_sha256") not in (None, "", want):
            raise ValueError(
                f"{real_stats}: real statistics of weights {meta.get('weights_sha256')}, "
                f"but the Inception weights given are {want}"
            )
        mu, sigma = feature_statistics(feats)
        return cls(extractor, mu, sigma, batch_size)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """Pool features [N, D] of images in [-1, 1], on the images' device (the GPU of a
        GPU run: Inception is too slow for a CPU there)."""
        from stackgan.metrics.extractors import extract

        self.extractor.to(images.device)
        return extract(self.extractor, images.float(), self.batch_size, device=images.device)[0]

    def fid(self, fake_features: np.ndarray) -> float:
        """FID of the generated features against the real statistics."""
        from stackgan.metrics.scores import feature_statistics, fid_from_stats

        return fid_from_stats(self.mu, self.sigma, *feature_statistics(fake_features))


class TrainingMonitor:
    """The fixed test-caption evaluation, run by the training loop on every rank.

    ``classifier`` (the twin's) gives the attribute metrics, ``inception`` the Inception
    FID; at least one of them is needed.
    """

    def __init__(
        self,
        classifier: AttributeClassifier | None,
        requests: MonitorRequests,
        real_features: np.ndarray | None,
        real_within_class: float | None,
        *,
        inception: InceptionReference | None = None,
        batch_size: int = 50,
        seed: int = 1234,
    ) -> None:
        if classifier is None and inception is None:
            raise ValueError("the in-training evaluation needs a classifier or Inception weights")
        if classifier is not None and (requests.labels is None or real_features is None):
            raise ValueError("the attribute metrics need labelled requests and real features")
        self.classifier = None if classifier is None else classifier.eval()
        self.requests = requests
        self.real_features = real_features
        self.real_within_class = real_within_class
        self.inception = inception
        self.batch_size = batch_size
        self.seed = seed

    @classmethod
    def from_files(
        cls,
        *,
        index: Path,
        captions: int,
        samples_per_caption: int,
        batch_size: int,
        seed: int,
        classifier: Path | None = None,
        real_set: Path | None = None,
        cache: Path | None = None,
        inception: ExtractorSpec | None = None,
        real_stats: Path | None = None,
    ) -> TrainingMonitor:
        """Load the classifier, the requests, the (cached) real reference and, with
        ``inception`` and ``real_stats``, the Inception FID's extractor and statistics."""
        model, feats, within = None, None, None
        if classifier is not None:
            if real_set is None:
                raise ValueError("the attribute metrics need the real test set (real_set)")
            model = load_classifier(classifier)
            feats, within = real_reference(model, classifier, real_set, index, cache)
        requests = load_requests(index, captions, samples_per_caption, labels=model is not None)
        ref = None
        if inception is not None:
            if real_stats is None:
                raise ValueError("the in-training Inception FID needs the real statistics")
            ref = InceptionReference.from_files(inception, real_stats, batch_size)
        return cls(model, requests, feats, within, inception=ref, batch_size=batch_size, seed=seed)

    def _score_chunk(self, samples: Any, stage: int) -> dict[str, Any]:
        """The per-image results of one generated chunk."""
        part: dict[str, Any] = {}
        if self.classifier is not None:
            part["features"], part["preds"] = classify(self.classifier, samples.final)
            if stage == 2:
                part["preds_stage1"] = classify(self.classifier, samples.stage1)[1]
        if stage == 2:
            part["lowfreq"] = quality.low_frequency_correlation(
                samples.stage1.cpu(), samples.final.cpu()
            )
        if self.inception is not None:
            part["inception"] = self.inception.features(samples.final)
        return part

    def evaluate(self, sampler: Sampler, info: dist_utils.DistInfo) -> dict[str, float]:
        """Generate this rank's chunks, gather all ranks' results, compute the metrics."""
        t0 = time.perf_counter()
        device = info.device
        mine = []
        for chunk, (start, stop) in shard_chunks(
            len(self.requests), self.batch_size, info.rank, info.world_size
        ):
            emb = self.requests.embeddings[start:stop].to(device)
            samples = sampler.sample_chunk(emb, chunk, self.seed)
            mine.append({"start": start, **self._score_chunk(samples, sampler.stage)})
        parts = sorted(
            (p for rank_parts in dist_utils.all_gather_object(mine) for p in rank_parts),
            key=lambda p: p["start"],
        )
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "start"}
        return self._metrics(merged, sampler.stage, time.perf_counter() - t0)

    def _metrics(
        self, merged: dict[str, np.ndarray], stage: int, seconds: float
    ) -> dict[str, float]:
        r = self.requests
        out: dict[str, float] = {}
        if self.classifier is not None:
            out |= {f"eval.{k}": float(v) for k, v in accuracy(merged["preds"], r.labels).items()}
            out["eval.twin_fid"] = quality.twin_fid(self.real_features, merged["features"])
            if int(np.bincount(r.caption_ids).max()) >= 2:
                out["eval.diversity"] = quality.diversity(
                    merged["features"], r.caption_ids, self.real_within_class
                )
            if stage == 2:
                agree = quality.attribute_agreement(merged["preds_stage1"], merged["preds"])
                out["eval.consistency_attributes"] = agree["attributes"]
                out["eval.consistency_joint"] = agree["joint"]
        if stage == 2:
            out["eval.consistency_lowfreq"] = float(np.mean(merged["lowfreq"]))
        if self.inception is not None:
            out["eval.inception_fid"] = self.inception.fid(merged["inception"])
        out["eval.seconds"] = seconds
        return out


__all__ = [
    "InceptionReference",
    "MonitorRequests",
    "TrainingMonitor",
    "classify",
    "load_requests",
    "monitor_seed",
    "real_reference",
]
