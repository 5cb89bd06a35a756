"""The hybrid character CNN-GRU text encoder of Reed et al. (2016), as used for the StackGAN
CUB embeddings (icml2016 model ``lm_sje_nc4_cub_hybrid_gru18_a1_c512_...``).

The network follows ``modules/HybridCNNLong.lua`` and ``modules/FixedGRU.lua`` of
reedscot/icml2016: three TemporalConvolutions (kernel 4, stride 1), each followed by
``nn.Threshold()`` (x if x > 1e-6 else 0), the first two by TemporalMaxPooling(3, 3); the 18
frames left are the 18 steps of a fixed-length GRU whose hidden states are averaged (``a1``);
a Linear maps the average to the 1024-dimensional embedding.

Weights come from the Torch7 ``.t7`` file through :func:`stackgan.text.t7_convert.convert_t7`,
which writes a ``stackgan-text-encoder/1`` file that :meth:`CharCnnRnnEncoder.load` reads.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: the alphabet of the Lua code, in its order; "-" appears twice (positions 37 and 60)
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} "
#: characters (bytes) per caption that the network reads
DOC_LENGTH = 201
#: the format field of a converted weights file
FORMAT = "stackgan-text-encoder/1"
#: bumped whenever the encoder's output for given weights changes
CHAR_CNN_RNN_VERSION = "1"


def _byte_columns() -> dict[int, int]:
    # Lua builds dict[alphabet:sub(i,i)] = i in order, so a repeated character keeps its
    # last position: "-" maps to the second "-" and the first "-" column is never set.
    table: dict[int, int] = {}
    for i, ch in enumerate(ALPHABET.encode("ascii")):
        table[ch] = i
    return table


_COLUMNS = _byte_columns()


def encode_text(text: str, doc_length: int = DOC_LENGTH) -> torch.Tensor:
    """One-hot float32 ``[doc_length, len(ALPHABET)]`` of ``text``, as the Lua demo builds it.

    Rules (``txt2img_demo.lua``): the string is read byte by byte (its UTF-8 bytes, as Lua's
    ``str:sub(t, t)`` does), position ``t`` gets a 1 in the column of the byte's (last)
    position in :data:`ALPHABET`; a byte that is not in the alphabet (upper case, non-ASCII
    bytes, tabs, ...) leaves its column all zero; there is no lower-casing and no stripping;
    bytes past ``doc_length`` are dropped and positions past the end of the text stay all zero.
    """
    out = torch.zeros(doc_length, len(ALPHABET), dtype=torch.float32)
    for t, byte in enumerate(text.encode("utf-8")[:doc_length]):
        col = _COLUMNS.get(byte)
        if col is not None:
            out[t, col] = 1.0
    return out


class FixedGru(nn.Module):
    """The fixed-length GRU of ``FixedGRU.lua``: step 1 is ``tanh(i2h(x1))``; later steps
    use update/reset gates; the output is the mean of all hidden states (``average``) or the
    last one."""

    def __init__(self, dim: int, steps: int, average: bool = True) -> None:
        super().__init__()
        self.steps, self.average = steps, average
        for name in ("i2h", "i2h_update", "i2h_reset", "h2h", "h2h_update", "h2h_reset"):
            setattr(self, name, nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, steps, dim] -> [B, dim]."""
        if x.shape[1] != self.steps:
            raise ValueError(f"the GRU takes {self.steps} steps, got {x.shape[1]}")
        h = torch.tanh(self.i2h(x[:, 0]))
        total = h
        for t in range(1, self.steps):
            xt = x[:, t]
            update = torch.sigmoid(self.i2h_update(xt) + self.h2h_update(h))
            reset = torch.sigmoid(self.i2h_reset(xt) + self.h2h_reset(h))
            cand = torch.tanh(self.i2h(xt) + self.h2h(reset * h))
            h = update * cand + (1 - update) * h
            total = total + h
        return total / self.steps if self.average else h


def _default_arch() -> dict[str, Any]:
    return {
        "alphabet_size": len(ALPHABET),
        "doc_length": DOC_LENGTH,
        "conv_dims": [384, 512, 512],
        "kernels": [4, 4, 4],
        "pools": [[3, 3], [3, 3]],
        "emb_dim": 1024,
        "average": True,
        "threshold": 1e-6,
        "threshold_value": 0.0,
    }


#: the CUB model's sizes (``hybrid_gru18_a1_c512``); also the keys every arch dict has
CUB_ARCH: dict[str, Any] = _default_arch()


def gru_steps(arch: dict[str, Any]) -> int:
    """Frames left after the convolutions and poolings of ``arch`` (the GRU's steps)."""
    n = int(arch["doc_length"])
    for i, k in enumerate(arch["kernels"]):
        n = n - int(k) + 1
        if i < len(arch["pools"]):
            kw, dw = arch["pools"][i]
            n = (n - int(kw)) // int(dw) + 1
    return n


def check_arch(arch: Any) -> dict[str, Any]:
    """``arch`` with its keys and value types checked (ValueError naming the key)."""
    if not isinstance(arch, dict):
        raise ValueError(f"arch: expected a dict, got {type(arch).__name__}")
    for key, default in CUB_ARCH.items():
        if key not in arch:
            raise ValueError(f"arch: missing key {key!r}")
        if type(arch[key]) is not type(default) and not (
            isinstance(default, float) and isinstance(arch[key], int)
        ):
            raise ValueError(f"arch[{key!r}]: expected {type(default).__name__}")
    if len(arch["conv_dims"]) != 3 or len(arch["kernels"]) != 3 or len(arch["pools"]) != 2:
        raise ValueError("arch: expected 3 conv_dims, 3 kernels and 2 pools")
    if not all(isinstance(p, list) and len(p) == 2 for p in arch["pools"]):
        raise ValueError("arch['pools']: expected [kW, dW] pairs")
    sizes = {"alphabet_size": [arch["alphabet_size"]], "doc_length": [arch["doc_length"]]}
    sizes |= {"conv_dims": arch["conv_dims"], "kernels": arch["kernels"]}
    sizes |= {"pools": [v for p in arch["pools"] for v in p], "emb_dim": [arch["emb_dim"]]}
    for key, values in sizes.items():
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ValueError(f"arch[{key!r}]: expected positive integers")
    if arch["alphabet_size"] != len(ALPHABET):
        raise ValueError(f"arch['alphabet_size']: {arch['alphabet_size']}, not {len(ALPHABET)}")
    if gru_steps(arch) < 1:
        raise ValueError(f"arch: doc_length {arch['doc_length']} leaves no GRU step")
    return arch


class CharCnnRnn(nn.Module):
    """The hybrid char-CNN-GRU: one-hot ``[B, doc_length, alphabet]`` -> ``[B, emb_dim]``."""

    def __init__(self, arch: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.arch = check_arch(copy.deepcopy(arch if arch is not None else CUB_ARCH))
        a = self.arch
        dims = [a["alphabet_size"], *a["conv_dims"]]
        self.conv1 = nn.Conv1d(dims[0], dims[1], a["kernels"][0])
        self.conv2 = nn.Conv1d(dims[1], dims[2], a["kernels"][1])
        self.conv3 = nn.Conv1d(dims[2], dims[3], a["kernels"][2])
        self.gru = FixedGru(dims[3], gru_steps(a), a["average"])
        self.proj = nn.Linear(dims[3], a["emb_dim"])

    def _threshold(self, x: torch.Tensor) -> torch.Tensor:
        return F.threshold(x, float(self.arch["threshold"]), float(self.arch["threshold_value"]))

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        """``onehot`` [B, doc_length, alphabet_size] -> [B, emb_dim] (Dropout is the identity
        at evaluation, as in the Lua model's ``evaluate()`` mode)."""
        x = onehot.transpose(1, 2)
        for i, conv in enumerate((self.conv1, self.conv2, self.conv3)):
            x = self._threshold(conv(x))
            if i < len(self.arch["pools"]):
                kw, dw = self.arch["pools"][i]
                x = F.max_pool1d(x, kw, dw)
        return self.proj(self.gru(x.transpose(1, 2)))


def _check_state_dict(state: Any, model: CharCnnRnn, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ValueError(f"{where}: state_dict is not a dict")
    want = model.state_dict()
    for key, ref in want.items():
        got = state.get(key)
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"{where}: state_dict is missing tensor {key!r}")
        if tuple(got.shape) != tuple(ref.shape):
            raise ValueError(
                f"{where}: state_dict[{key!r}] has shape {tuple(got.shape)}, "
                f"expected {tuple(ref.shape)}"
            )
        if not got.is_floating_point():
            raise ValueError(f"{where}: state_dict[{key!r}] is not a float tensor")
    extra = sorted(set(state) - set(want))
    if extra:
        raise ValueError(f"{where}: unexpected state_dict key {extra[0]!r}")
    return {k: v.float() for k, v in state.items()}


class CharCnnRnnEncoder:
    """Captions -> float32 [N, emb_dim] with converted Reed et al. weights."""

    name = "char-cnn-rnn"
    version = CHAR_CNN_RNN_VERSION

    def __init__(self, model: CharCnnRnn, sha256: str, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.sha256 = sha256
        self.dim = int(model.arch["emb_dim"])
        self.batch_size = batch_size
        self.path: Path | None = None  # the converted weights file, once loaded from one

    @classmethod
    def load(cls, path: str | Path) -> CharCnnRnnEncoder:
        """Read a ``stackgan-text-encoder/1`` file (``torch.load(weights_only=True)``)."""
        where = str(path)
        try:
            raw = Path(path).read_bytes()
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as err:
            raise ValueError(f"{where}: cannot read ({err.strerror})") from err
        except Exception as err:  # torch raises many types for a bad file
            raise ValueError(f"{where}: not a loadable weights file ({err})") from err
        if not isinstance(payload, dict):
            raise ValueError(f"{where}: expected a dict, got {type(payload).__name__}")
        if payload.get("format") != FORMAT:
            raise ValueError(f"{where}: format is {payload.get('format')!r}, expected {FORMAT!r}")
        try:
            model = CharCnnRnn(check_arch(payload.get("arch")))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from err
        model.load_state_dict(_check_state_dict(payload.get("state_dict"), model, where))
        encoder = cls(model, hashlib.sha256(raw).hexdigest())
        encoder.path = Path(path)
        return encoder

    def encode(self, captions: list[str]) -> np.ndarray:
        """float32 ``[len(captions), dim]``, one row per caption."""
        doc_length = int(self.model.arch["doc_length"])
        rows: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(captions), self.batch_size):
                batch = captions[start : start + self.batch_size]
                x = torch.stack([encode_text(c, doc_length) for c in batch])
                rows.append(self.model(x).numpy().astype(np.float32))
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(rows)
