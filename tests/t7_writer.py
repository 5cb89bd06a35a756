"""A small writer of the Torch7 binary serialisation format (what Lua's ``torch.save`` writes
in binary mode on a little-endian 64-bit machine), for tests.

Format (torch7 ``File.lua`` ``writeObject``, ``generic/Tensor.c`` and ``generic/Storage.c``
``write``): every object starts with an int32 type code: 0 nil, 1 number (then a float64),
2 string (int32 length, bytes), 3 table, 4 torch object, 5 boolean (int32 0/1). Tables and
torch objects then carry an int32 object index (1, 2, ... in order of first writing); an
object written again is only that index (a back-reference). A table follows with its int32
entry count and key/value objects. A torch object follows with the version string ``"V 1"``
and its class name (both int32 length + bytes), then its payload: a tensor writes int32 ndim,
int64 sizes, int64 strides, the int64 1-based storage offset and its storage as an object (nil
if none); a storage writes its int64 element count and the raw elements; any other class (an
nn module) writes its fields as one table object.

It also builds the module tree of Reed et al.'s hybrid char-CNN-GRU
(``HybridCNNLong.lua`` + ``FixedGRU.lua``) with random weights.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_TENSOR_CLASS = {np.dtype(np.float32): "Float", np.dtype(np.float64): "Double"}
_TENSOR_CLASS |= {np.dtype(np.int64): "Long", np.dtype(np.uint8): "Byte"}


@dataclass(eq=False)
class Storage:
    """A torch storage: a flat array; share one between tensors to share memory."""

    data: np.ndarray


@dataclass(eq=False)
class Tensor:
    """A torch tensor viewing ``storage`` (contiguous, from ``offset``, 0-based)."""

    storage: Storage | None
    shape: tuple[int, ...] = ()
    offset: int = 0
    dtype: Any = np.float32  # the tensor class when there is no storage

    @classmethod
    def of(cls, array: np.ndarray) -> Tensor:
        """A tensor with its own storage holding ``array``."""
        return cls(Storage(np.ascontiguousarray(array).ravel()), tuple(array.shape))

    @classmethod
    def empty(cls, dtype: Any = np.float32) -> Tensor:
        """``torch.FloatTensor()``: no dimensions, no storage."""
        return cls(None, dtype=np.dtype(dtype))

    @property
    def array(self) -> np.ndarray:
        """The values, as numpy."""
        n = int(np.prod(self.shape))
        return self.storage.data[self.offset : self.offset + n].reshape(self.shape)


@dataclass(eq=False)
class Obj:
    """A torch object of class ``typename`` (an nn module) with its Lua fields."""

    typename: str
    fields: dict[str, Any] = field(default_factory=dict)


class T7Writer:
    """Writes one object graph; identical Python objects become back-references."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.index: dict[int, int] = {}
        self.keep: list[Any] = []

    def _int(self, v: int) -> None:
        self.chunks.append(struct.pack("<i", v))

    def _long(self, v: int) -> None:
        self.chunks.append(struct.pack("<q", v))

    def _str(self, s: str | bytes) -> None:
        data = s.encode("utf-8") if isinstance(s, str) else s
        self._int(len(data))
        self.chunks.append(data)

    def _ref(self, obj: Any) -> bool:
        """Write the object index; True if ``obj`` was written before (back-reference)."""
        if id(obj) in self.index:
            self._int(self.index[id(obj)])
            return True
        self.index[id(obj)] = len(self.index) + 1
        self.keep.append(obj)
        self._int(self.index[id(obj)])
        return False

    def write(self, obj: Any) -> None:
        """Write ``obj``: None, bool, int/float, str/bytes, dict/list, Obj, Tensor, Storage."""
        if obj is None:
            self._int(0)
        elif isinstance(obj, bool):
            self._int(5)
            self._int(int(obj))
        elif isinstance(obj, int | float):
            self._int(1)
            self.chunks.append(struct.pack("<d", float(obj)))
        elif isinstance(obj, str | bytes):
            self._int(2)
            self._str(obj)
        elif isinstance(obj, dict | list):
            self._int(3)
            if not self._ref(obj):
                self._table(obj)
        elif isinstance(obj, Obj | Tensor | Storage):
            self._int(4)
            if not self._ref(obj):
                self._torch(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    def _table(self, obj: dict | list) -> None:
        items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj, 1))
        self._int(len(items))
        for k, v in items:
            self.write(k)
            self.write(v)

    def _torch(self, obj: Obj | Tensor | Storage) -> None:
        self._str("V 1")
        if isinstance(obj, Storage):
            self._str(f"torch.{_TENSOR_CLASS[obj.data.dtype]}Storage")
            self._long(obj.data.size)
            little = obj.data.dtype.newbyteorder("<")
            self.chunks.append(np.ascontiguousarray(obj.data, dtype=little).tobytes())
        elif isinstance(obj, Tensor):
            self._tensor(obj)
        else:
            self._str(obj.typename)
            self.write(dict(obj.fields))  # a fresh table: File.lua copies the fields too

    def _tensor(self, t: Tensor) -> None:
        dtype = t.storage.data.dtype if t.storage is not None else np.dtype(t.dtype)
        self._str(f"torch.{_TENSOR_CLASS[dtype]}Tensor")
        self._int(len(t.shape))
        strides = [int(np.prod(t.shape[i + 1 :])) for i in range(len(t.shape))]
        for v in [*t.shape, *strides]:
            self._long(v)
        self._long(t.offset + 1)
        self.write(t.storage)

    def getvalue(self) -> bytes:
        """Everything written so far."""
        return b"".join(self.chunks)


def save_t7(obj: Any, path: str | Path) -> bytes:
    """Write ``obj`` as a Torch7 binary file; returns its bytes."""
    writer = T7Writer()
    writer.write(obj)
    data = writer.getvalue()
    Path(path).write_bytes(data)
    return data


# --- the hybrid char-CNN-GRU module tree -------------------------------------------------


def _module(typename: str, **fields: Any) -> Obj:
    base = {"output": Tensor.empty(), "gradInput": Tensor.empty(), "train": False}
    base["_type"] = "torch.FloatTensor"
    return Obj(typename, base | fields)


def _rand(rng: np.random.Generator, scale: float, fan_in: int, *shape: int) -> np.ndarray:
    """Uniform in +-scale/sqrt(fan_in) (the Lua modules' reset() draws +-1/sqrt(fan_in))."""
    bound = scale / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def temporal_conv(
    rng: np.random.Generator, in_dim: int, out_dim: int, kw: int, scale: float = 1.0
) -> Obj:
    """nn.TemporalConvolution(in, out, kW): weight [out, kW * in], bias [out]."""
    fan_in = kw * in_dim
    w, b = _rand(rng, scale, fan_in, out_dim, fan_in), _rand(rng, scale, fan_in, out_dim)
    return _module(
        "nn.TemporalConvolution",
        inputFrameSize=in_dim,
        outputFrameSize=out_dim,
        kW=kw,
        dW=1,
        weight=Tensor.of(w),
        bias=Tensor.of(b),
        gradWeight=Tensor.of(np.zeros_like(w)),
        gradBias=Tensor.of(np.zeros_like(b)),
    )


def linear(
    rng: np.random.Generator,
    in_dim: int,
    out_dim: int,
    share: Obj | None = None,
    scale: float = 1.0,
) -> Obj:
    """nn.Linear(in, out); with ``share``, its tensors share ``share``'s storages."""
    if share is None:
        w, b = _rand(rng, scale, in_dim, out_dim, in_dim), _rand(rng, scale, in_dim, out_dim)
        tensors = {"weight": Tensor.of(w), "bias": Tensor.of(b)}
        tensors |= {"gradWeight": Tensor.of(w * 0), "gradBias": Tensor.of(b * 0)}
    else:
        tensors = {
            k: Tensor(share.fields[k].storage, share.fields[k].shape)
            for k in ("weight", "bias", "gradWeight", "gradBias")
        }
    return _module("nn.Linear", **tensors)


def sequential(*mods: Obj) -> Obj:
    """nn.Sequential holding ``mods``."""
    return _module("nn.Sequential", modules=list(mods))


def gmodule(mods: list[Obj], n_inputs: int) -> Obj:
    """nngraph.gModule with its flat ``modules`` list (and node objects pointing at them)."""
    nodes = [Obj("nngraph.Node", {"id": i + 1, "data": {"module": m}}) for i, m in enumerate(mods)]
    return _module("nngraph.gModule", modules=mods, forwardnodes=nodes, nInputs=n_inputs)


def fixed_gru(
    rng: np.random.Generator, dim: int, steps: int, avg: bool, scale: float = 1.0
) -> tuple[Obj, dict]:
    """The FixedGRU gModule (module order as in the released model) and its six weights."""
    first = {r: linear(rng, dim, dim, scale=scale) for r in ("i2h", "i2h_update", "i2h_reset")}
    first |= {r: linear(rng, dim, dim, scale=scale) for r in ("h2h", "h2h_update", "h2h_reset")}
    seq = {r: (lambda r=r: sequential(linear(rng, dim, dim, share=first[r]))) for r in first}
    mods = [_module("nn.Identity"), seq["i2h"](), _module("nn.Tanh")]
    for _ in range(1, steps):
        mods += [_module("nn.Identity"), seq["i2h_update"](), seq["h2h_update"]()]
        mods += [_module("nn.CAddTable"), _module("nn.Sigmoid")]
        mods += [_module("nn.MulConstant", constant_scalar=-1, inplace=False)]
        mods += [seq["i2h_reset"](), seq["h2h_reset"](), _module("nn.CAddTable")]
        mods += [_module("nn.Sigmoid"), _module("nn.CMulTable"), seq["h2h"](), seq["i2h"]()]
        mods += [_module("nn.CAddTable"), _module("nn.Tanh"), _module("nn.CMulTable")]
        mods += [_module("nn.AddConstant", constant_scalar=1, inplace=False)]
        mods += [_module("nn.CMulTable"), _module("nn.CAddTable")]
    if avg:
        mods += [_module("nn.CAddTable") for _ in range(steps - 1)]
        mods += [_module("nn.MulConstant", constant_scalar=1.0 / steps, inplace=False)]
    weights = {r: (m.fields["weight"].array, m.fields["bias"].array) for r, m in first.items()}
    return gmodule(mods, steps), weights


def hybrid_model(
    rng: np.random.Generator,
    conv_dims: tuple[int, int, int] = (384, 512, 512),
    emb_dim: int = 1024,
    alphabet_size: int = 70,
    steps: int = 18,
    avg: bool = True,
    scale: float = 1.0,
) -> tuple[Obj, dict[str, Any]]:
    """``HybridCNNLong.cnn(alphabet_size, emb_dim, 0, avg, conv_dims[2])`` with random weights,
    and the Torch-layout weights (``conv1``..``conv3`` (weight, bias), ``gru`` {role: (w, b)},
    ``proj`` (w, b)) for a reference implementation. ``scale`` widens the weights' range."""
    c1, c2, c3 = conv_dims
    convs = [
        temporal_conv(rng, alphabet_size, c1, 4, scale),
        temporal_conv(rng, c1, c2, 4, scale),
        temporal_conv(rng, c2, c3, 4, scale),
    ]
    thresh = [_module("nn.Threshold", threshold=1e-6, val=0, inplace=False) for _ in range(3)]
    pools = [_module("nn.TemporalMaxPooling", kW=3, dW=3, indices=Tensor.empty()) for _ in "ab"]
    stack = sequential(convs[0], thresh[0], pools[0], convs[1], thresh[1], pools[1])
    stack.fields["modules"] += [convs[2], thresh[2]]
    gru, gru_weights = fixed_gru(rng, c3, steps, avg, scale)
    proj = linear(rng, c3, emb_dim, scale=scale)
    mods = [_module("nn.Identity"), stack, _module("nn.SplitTable", dimension=2), gru]
    mods += [_module("nn.Dropout", p=0, v2=True, noise=Tensor.empty()), proj]
    weights: dict[str, Any] = {
        f"conv{i + 1}": (c.fields["weight"].array, c.fields["bias"].array)
        for i, c in enumerate(convs)
    }
    weights["gru"] = gru_weights
    weights["proj"] = (proj.fields["weight"].array, proj.fields["bias"].array)
    return gmodule(mods, 1), weights


def checkpoint(enc_doc: Obj) -> dict[str, Any]:
    """A training checkpoint table like the released file: ``protos.enc_doc`` is the model."""
    return {
        "protos": {"enc_doc": enc_doc, "enc_image": sequential()},
        "opt": {"doc_length": 201, "cnn_dim": 512, "emb_dim": 1024, "gpuid": 0},
        "i": 30000,
    }
