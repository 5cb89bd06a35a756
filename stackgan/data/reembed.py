"""Embeddings from a text encoder instead of the birds bundle's pickles.

``build-shards --text-encoder SPEC`` (pipeline: ``data.text_encoder``) embeds each image's
``text_c10`` captions with the encoder (``stackgan.text.encoder.load_encoder``) and writes
those rows into the shards and the index instead of ``char-CNN-RNN-embeddings.pickle``.
The bundle's pickles stay the default: for real CUB they are the paper's inputs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from stackgan.data.cub import EMBEDDINGS_FILE, DataValidationError, EmbeddingStore, SplitData
from stackgan.text.encoder import TextEncoder, load_encoder

log = logging.getLogger(__name__)


def reembed(data: SplitData, encoder: TextEncoder) -> SplitData:
    """``data`` with its embeddings replaced by ``encoder``'s of its captions [N, C, D]."""
    missing = [s.key for s in data.samples if not s.captions]
    if missing:
        first = missing[0]
        message = f"{data.split}: {len(missing)} image(s) have no text_c10 captions (first: "
        raise DataValidationError([message + f"{first}); a text encoder needs the captions"])
    counts = {len(s.captions or ()) for s in data.samples}
    if len(counts) != 1:
        message = f"{data.split}: images have {sorted(counts)} captions; a text encoder "
        raise DataValidationError([message + "needs the same number for every image"])
    per = counts.pop()
    flat = [c for s in data.samples for c in (s.captions or ())]
    emb = encoder.encode(flat).reshape(len(data.samples), per, -1)
    rows = np.zeros((len(data.embeddings), per, emb.shape[-1]), dtype=np.float32)
    for s, row in zip(data.samples, emb, strict=True):
        rows[s.index] = row
    name = f"<{encoder.name} text encoder {encoder.sha256[:12]}>"
    # The manifests' input checksums: the pickle is not an input any more; the encoder's
    # weights file is (when it has one).
    inputs = {k: v for k, v in data.input_files.items() if v.name != EMBEDDINGS_FILE}
    weights = getattr(encoder, "path", None)  # a converted weights file, if there is one
    if weights is not None:
        inputs[f"text encoder {encoder.name} v{encoder.version}"] = Path(weights)
    return dataclasses.replace(
        data, embeddings=EmbeddingStore(rows, Path(name)), input_files=inputs
    )


def reembed_splits(data: dict[str, SplitData], spec: str) -> dict[str, SplitData]:
    """Every split re-embedded with the encoder ``spec``."""
    encoder = load_encoder(spec)
    log.info("embedding the captions with %s v%s (%s)", encoder.name, encoder.version,
             encoder.sha256[:12])  # fmt: skip
    return {split: reembed(d, encoder) for split, d in data.items()}
