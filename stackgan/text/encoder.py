"""Text encoders: captions -> float32 embeddings [N, D], with a name, a version and the
sha256 of their weights, which every result made with them records.

    encoder = load_encoder("twin")
    emb = encoder.encode(["a small bird with red wings and a blue belly."])

Encoders: ``twin`` (the synthetic twin's deterministic encoder, :mod:`stackgan.text.twin`)
and ``char-cnn-rnn:PATH`` (the Reed et al. encoder of the CUB embeddings,
:mod:`stackgan.text.char_cnn_rnn`, from a file converted once from its ``.t7`` by
:mod:`stackgan.text.t7_convert`; docs/text.md).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

#: the longest caption the commands accept (characters); CUB captions are far shorter
MAX_CAPTION_CHARS = 1000


class TextEncoder(Protocol):
    """What every text encoder provides."""

    name: str
    version: str
    sha256: str
    dim: int

    def encode(self, captions: list[str]) -> np.ndarray:
        """float32 [len(captions), dim]."""
        ...


def load_encoder(spec: str) -> TextEncoder:
    """The encoder named by ``spec``: ``twin`` or ``char-cnn-rnn:PATH`` (a converted file)."""
    if spec == "twin":
        from stackgan.text.twin import TwinTextEncoder

        return TwinTextEncoder()
    name, _, path = spec.partition(":")
    if name == "char-cnn-rnn":
        if not path:
            raise ValueError(
                "--encoder char-cnn-rnn:PATH: give the converted weights file "
                "(stackgan text-encoder convert --t7 FILE --out PATH)"
            )
        if path.endswith(".t7"):
            raise ValueError(
                f"--encoder {spec}: a .t7 file is never loaded directly; convert it first "
                "with stackgan text-encoder convert --t7 FILE --out FILE.pt"
            )
        from stackgan.text.char_cnn_rnn import CharCnnRnnEncoder

        return CharCnnRnnEncoder.load(path)
    raise ValueError(
        f"--encoder {spec!r}: unknown text encoder; available: twin, char-cnn-rnn:PATH"
    )


def encoder_metadata(encoder: TextEncoder) -> dict[str, Any]:
    """The record that results keep of the encoder."""
    return {
        "name": encoder.name,
        "version": encoder.version,
        "sha256": encoder.sha256,
        "dim": encoder.dim,
    }


def check_captions(captions: list[str], where: str) -> list[str]:
    """The captions, stripped; a ValueError for none, an empty one or one too long."""
    out = [c.strip() for c in captions]
    if not out:
        raise ValueError(f"{where}: no caption given")
    for i, c in enumerate(out, 1):
        if not c:
            raise ValueError(f"{where}: caption {i} is empty")
        if len(c) > MAX_CAPTION_CHARS:
            raise ValueError(
                f"{where}: caption {i} has {len(c)} characters (at most {MAX_CAPTION_CHARS})"
            )
    return out


def read_caption_file(path: str) -> list[str]:
    """One caption per non-empty line of a UTF-8 text file (errors name the file and line)."""
    from pathlib import Path

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        line = Path(path).read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not UTF-8") from err
    return [line for line in text.splitlines() if line.strip()]
