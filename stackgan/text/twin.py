"""The twin's caption language and its deterministic text encoder.

Captions name a body colour, a wing colour and a size in varied wording. The embedding of
a caption is a fixed function of its text: a bag of hashed word vectors plus hashed
(part, colour) bindings (and the size), so that it carries what the caption says about
the bird. The twin generator (:mod:`stackgan.data.twin`) stores these embeddings plus small
seeded noise; :class:`TwinTextEncoder` gives the noise-free embedding of any sentence.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

COLOUR_NAMES = (
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "orange",
    "purple",
    "brown",
    "grey",
)
SIZES = ("small", "medium", "large")
BODY_WORDS = ("body", "belly", "breast", "chest", "bird", "crown")
WING_WORDS = ("wings", "wing", "wingbars", "secondaries", "coverts", "feathers")
_FILLER = {"coloured", "colored", "and", "tinted"}
TEXT_DIM = 1024
COLOURS = frozenset(COLOUR_NAMES)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def parse_caption_attributes(caption: str) -> dict[str, str]:
    """Recover ``{"body": colour, "wing": colour}`` from a twin caption.

    A colour binds to the first body or wing word that follows it (skipping fillers such
    as "coloured"); "bird" counts as body. Missing attributes are absent from the dict.
    """
    tokens = _tokens(caption)
    out: dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok not in COLOURS:
            continue
        for nxt in tokens[i + 1 : i + 4]:
            if nxt in _FILLER or nxt in SIZES:
                continue
            part = next(
                (p for p in ("body", "wing") if any(nxt.startswith(w) for w in _part_words(p))),
                None,
            )
            if part is not None:
                out.setdefault(part, tok)
            break
    return out


def _part_words(part: str) -> tuple[str, ...]:
    return BODY_WORDS if part == "body" else WING_WORDS


@functools.lru_cache(maxsize=4096)
def _hashed_vector(label: str, dim: int) -> np.ndarray:
    """The fixed random vector of ``label`` (read-only and cached: a twin has a few hundred
    distinct labels and embeds them hundreds of thousands of times)."""
    seed = int.from_bytes(hashlib.sha256(label.encode("utf-8")).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float64) / np.sqrt(dim)
    vec.setflags(write=False)
    return vec


def embed_caption(caption: str, dim: int = TEXT_DIM) -> np.ndarray:
    """Deterministic text embedding: hashed bag of words + hashed (part, colour) bindings."""
    tokens = _tokens(caption)
    bag = sum((_hashed_vector(f"word:{t}", dim) for t in tokens), np.zeros(dim))
    bag /= max(1.0, np.sqrt(len(tokens)))
    attrs = parse_caption_attributes(caption)
    binding = sum(
        (_hashed_vector(f"attr:{p}:{c}", dim) for p, c in sorted(attrs.items())), np.zeros(dim)
    )
    size = next((t for t in tokens if t in SIZES), None)
    if size is not None:
        binding += 0.5 * _hashed_vector(f"size:{size}", dim)
    return (0.5 * bag + 2.0 * binding) * np.sqrt(dim) / 8.0


#: bumped whenever :func:`embed_caption` changes what it returns
TWIN_ENCODER_VERSION = "1"


class TwinTextEncoder:
    """The twin's caption encoder: captions -> float32 [N, 1024], deterministic.

    It has no weights; its ``sha256`` identifies the function (name, version, dimension),
    so that results record which encoder made their embeddings as for a real one.
    """

    name = "twin"
    version = TWIN_ENCODER_VERSION

    def __init__(self, dim: int = TEXT_DIM) -> None:
        self.dim = dim
        self.sha256 = hashlib.sha256(f"twin-text-encoder/{self.version}/{dim}".encode()).hexdigest()

    def encode_float64(self, captions: list[str]) -> np.ndarray:
        """The embeddings in float64 (what the twin generator adds its noise to)."""
        if not captions:
            return np.zeros((0, self.dim), dtype=np.float64)
        return np.stack([embed_caption(c, self.dim) for c in captions])

    def encode(self, captions: list[str]) -> np.ndarray:
        """float32 embeddings, one row per caption."""
        return self.encode_float64(captions).astype(np.float32)
