"""Convert the Torch7 ``.t7`` file of Reed et al.'s hybrid char-CNN-GRU text encoder into a
``stackgan-text-encoder/1`` file that :meth:`CharCnnRnnEncoder.load` reads.

The ``.t7`` holds either the text network itself (an ``nngraph.gModule``) or a training
checkpoint table whose ``protos.enc_doc`` is that network (what ``txt2img_demo.lua`` unwraps).
Its ``modules`` list holds an ``nn.Sequential`` of TemporalConvolution / Threshold /
TemporalMaxPooling layers, the fixed GRU (an ``nngraph.gModule``), an ``nn.Linear`` and
parameter-free glue (Identity, SplitTable, Dropout). In the GRU the Linears of every step
share their storage; the six distinct Linears are told apart by the order in which they
first appear in its ``modules`` list: i2h, i2h_update, h2h_update, i2h_reset, h2h_reset, h2h
(the order of the released model's module list, as char_cnn_rnn_pytorch indexes it).

Module paths in error messages are 0-based indices into the ``modules`` lists:
``module 1.3`` is the fourth module of the outer model's second module.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from stackgan.text.char_cnn_rnn import ALPHABET, DOC_LENGTH, FORMAT, CharCnnRnn, gru_steps

_DTYPES = {
    "Byte": np.uint8,
    "Char": np.int8,
    "Short": np.int16,
    "Int": np.int32,
    "Long": np.int64,
    "Float": np.float32,
    "Double": np.float64,
    "Cuda": np.float32,
    "CudaDouble": np.float64,
}
_CONV_STACK = [
    "nn.TemporalConvolution",
    "nn.Threshold",
    "nn.TemporalMaxPooling",
    "nn.TemporalConvolution",
    "nn.Threshold",
    "nn.TemporalMaxPooling",
    "nn.TemporalConvolution",
    "nn.Threshold",
]
_OUTER_GLUE = {"nn.Identity", "nn.SplitTable", "nn.Dropout"}
_GRU_GLUE = {
    "nn.Identity",
    "nn.Tanh",
    "nn.Sigmoid",
    "nn.CAddTable",
    "nn.CMulTable",
    "nn.MulConstant",
    "nn.AddConstant",
}
#: the GRU's Linears in the order of their first appearance in its module list
_GRU_ROLES = ["i2h", "i2h_update", "h2h_update", "i2h_reset", "h2h_reset", "h2h"]
_READ_ERRORS = (EOFError, struct.error, NotImplementedError, ValueError, OverflowError)
_READ_ERRORS += (MemoryError, UnicodeDecodeError, IndexError, TypeError, KeyError)


def _read_storage(dtype: Any) -> Any:
    def read(reader: Any, version: Any) -> np.ndarray:
        size = reader.read_long()
        if size < 0:
            raise ValueError(f"negative storage size {size}")
        arr = np.fromfile(reader.f, dtype=dtype, count=size)
        if arr.size != size:
            raise EOFError(f"storage of {size} elements cut short after {arr.size}")
        return arr

    return read


def _read_tensor(dtype: Any) -> Any:
    def read(reader: Any, version: Any) -> np.ndarray:
        ndim = reader.read_int()
        if not 0 <= ndim <= 16:
            raise ValueError(f"tensor with {ndim} dimensions")
        size = reader.read_long_array(ndim)
        stride = reader.read_long_array(ndim)
        offset = reader.read_long() - 1
        storage = reader.read_obj()
        if storage is None or ndim == 0:
            return np.empty(0, dtype=dtype)
        if not isinstance(storage, np.ndarray) or storage.dtype != dtype:
            raise ValueError("tensor whose storage is of another type")
        if offset < 0 or min(size) < 0 or min(stride) < 0:
            raise ValueError("tensor with a negative size, stride or offset")
        if min(size) == 0:
            return np.empty(size, dtype=dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise ValueError("tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride]
        )
        return view.copy()

    return read


def _safe_handlers() -> dict[bytes, Any]:
    """Storage and tensor readers that refuse short or out-of-bounds data."""
    out: dict[bytes, Any] = {}
    for kind, dtype in _DTYPES.items():
        out[f"torch.{kind}Storage".encode()] = _read_storage(dtype)
        out[f"torch.{kind}Tensor".encode()] = _read_tensor(dtype)
    return out


def _strict_reader(torchfile: Any) -> type:
    class StrictReader(torchfile.T7Reader):
        """torchfile's reader, refusing strings cut short by the end of the file."""

        def read_string(self, disable_utf8: bool = False) -> Any:
            size = self.read_int()
            if size < 0:
                raise ValueError(f"negative string length {size}")
            data = self.f.read(size)
            if len(data) != size:
                raise EOFError(f"string of {size} bytes cut short after {len(data)}")
            return data

    return StrictReader


def read_t7(path: Path) -> Any:
    """The object of a Torch7 binary file, read with torchfile (which runs no code)."""
    try:
        import torchfile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("converting a .t7 file needs the torchfile package") from err
    errors = (*_READ_ERRORS, torchfile.T7ReaderException)
    try:
        with open(path, "rb") as f, mock.patch.dict(torchfile.type_handlers, _safe_handlers()):
            obj = _strict_reader(torchfile)(f).read_obj()
            trailing = f.read(1)
    except OSError as err:
        raise ValueError(f"{path.name}: cannot read ({err.strerror})") from err
    except errors as err:
        raise ValueError(
            f"{path.name}: truncated or corrupt Torch7 file ({type(err).__name__}: {err})"
        ) from err
    if trailing:
        raise ValueError(f"{path.name}: trailing bytes after the Torch7 object")
    return obj


def _typename(obj: Any) -> str:
    get = getattr(type(obj), "torch_typename", None)
    if get is not None:
        name = obj.torch_typename()
        return name.decode("latin-1") if isinstance(name, bytes) else str(name)
    if isinstance(obj, np.ndarray):
        return f"a {obj.dtype} tensor"
    kinds = ((type(None), "nil"), (bool, "a boolean"), (int | float, "a number"))
    kinds += ((bytes | str, "a string"), (dict | list, "a table"))
    return next((k for t, k in kinds if isinstance(obj, t)), f"a {type(obj).__name__}")


def _fields(mod: Any, where: str) -> dict:
    fields = getattr(mod, "_obj", None)
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: its fields are not a table")
    return fields


def _field(mod: Any, key: str, where: str) -> Any:
    return _fields(mod, where).get(key.encode())


def _int_field(mod: Any, key: str, where: str) -> int:
    value = _field(mod, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: {key} is {_typename(value)}, expected an integer")
    return value


def _num_field(mod: Any, key: str, where: str) -> float:
    value = _field(mod, key, where)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{where}: {key} is {_typename(value)}, expected a number")
    return float(value)


def _tensor(mod: Any, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    value = _field(mod, key, where)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise ValueError(f"{where}: {key} is {_typename(value)}, expected a float tensor")
    if value.shape != shape:
        raise ValueError(f"{where}: {key} has shape {value.shape}, expected {shape}")
    return value


def _modules(mod: Any, where: str, path: str) -> list[tuple[str, str, Any]]:
    """``(path, typename, module)`` for each entry of ``mod.modules``."""
    mods = _field(mod, "modules", where)
    if not isinstance(mods, list) or not mods:
        raise ValueError(f"{where}: modules is {_typename(mods)}, expected a non-empty list")
    prefix = f"{path}." if path else ""
    return [(f"{prefix}{i}", _typename(m), m) for i, m in enumerate(mods)]


def _where(name: str, path: str, typename: str) -> str:
    return f"{name}: module {path} ({typename})"


def find_enc_doc(obj: Any, name: str) -> Any:
    """The text network: the object itself or a checkpoint's ``protos.enc_doc``."""
    if _typename(obj) == "nngraph.gModule":
        return obj
    if isinstance(obj, dict) and b"protos" in obj:
        protos = obj[b"protos"]
        enc = protos.get(b"enc_doc") if isinstance(protos, dict) else None
        if _typename(enc) == "nngraph.gModule":
            return enc
        raise ValueError(f"{name}: protos.enc_doc is {_typename(enc)}, expected an nngraph.gModule")
    raise ValueError(
        f"{name}: the file holds {_typename(obj)}, not the hybrid char-CNN-RNN text encoder "
        "(an nngraph.gModule, or a checkpoint table with protos.enc_doc)"
    )


def _split_outer(enc: Any, name: str) -> dict[str, tuple[str, Any]]:
    """The outer model's conv stack, GRU and final Linear (by type; glue is skipped)."""
    found: dict[str, list[tuple[str, Any]]] = {}
    for path, tname, mod in _modules(enc, f"{name}: the model", ""):
        if tname not in _OUTER_GLUE | {"nn.Sequential", "nngraph.gModule", "nn.Linear"}:
            raise ValueError(
                f"{_where(name, path, tname)}: not part of the hybrid char-CNN-RNN "
                "(another architecture?)"
            )
        found.setdefault(tname, []).append((path, mod))
    out = {}
    for key, tname in (("convs", "nn.Sequential"), ("gru", "nngraph.gModule")):
        if len(found.get(tname, [])) != 1:
            raise ValueError(
                f"{name}: expected one {tname} in the model's modules, found "
                f"{len(found.get(tname, []))} (another architecture?)"
            )
        out[key] = found[tname][0]
    if len(found.get("nn.Linear", [])) != 1:
        raise ValueError(f"{name}: expected one nn.Linear in the model's modules")
    out["proj"] = found["nn.Linear"][0]
    return out


def _conv(mod: Any, where: str, in_dim: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(out_dim, kW, weight [out, in, kW], bias)`` of a TemporalConvolution."""
    got_in = _int_field(mod, "inputFrameSize", where)
    if got_in != in_dim:
        raise ValueError(f"{where}: inputFrameSize is {got_in}, expected {in_dim}")
    out_dim = _int_field(mod, "outputFrameSize", where)
    kw = _int_field(mod, "kW", where)
    if _int_field(mod, "dW", where) != 1:
        raise ValueError(f"{where}: dW is {_field(mod, 'dW', where)}, expected 1")
    weight = _tensor(mod, "weight", (out_dim, kw * in_dim), where)
    bias = _tensor(mod, "bias", (out_dim,), where)
    return out_dim, kw, weight.reshape(out_dim, kw, in_dim).transpose(0, 2, 1), bias


def _conv_stack(seq: tuple[str, Any], name: str, arch: dict, state: dict) -> None:
    """Fill ``arch`` and ``state`` from the nn.Sequential of convolutions."""
    mods = _modules(seq[1], _where(name, seq[0], "nn.Sequential"), seq[0])
    types = [t for _, t, _ in mods]
    if types != _CONV_STACK:
        raise ValueError(
            f"{_where(name, seq[0], 'nn.Sequential')}: holds {types}, expected {_CONV_STACK} "
            "(another architecture?)"
        )
    in_dim, thresholds = len(ALPHABET), set()
    arch.update(conv_dims=[], kernels=[], pools=[])
    for path, tname, mod in mods:
        where = _where(name, path, tname)
        if tname == "nn.TemporalConvolution":
            in_dim, kw, weight, bias = _conv(mod, where, in_dim)
            n = len(arch["kernels"]) + 1
            state[f"conv{n}.weight"], state[f"conv{n}.bias"] = weight, bias
            arch["conv_dims"].append(in_dim)
            arch["kernels"].append(kw)
        elif tname == "nn.TemporalMaxPooling":
            arch["pools"].append([_int_field(mod, "kW", where), _int_field(mod, "dW", where)])
        else:
            thresholds.add((_num_field(mod, "threshold", where), _num_field(mod, "val", where)))
    if len(thresholds) != 1:
        raise ValueError(f"{name}: the three nn.Threshold modules differ: {sorted(thresholds)}")
    arch["threshold"], arch["threshold_value"] = thresholds.pop()


def _gru_linears(gru: tuple[str, Any], name: str, dim: int) -> tuple[list, list[float]]:
    """The GRU's Linears ``(path, weight, bias)`` in module order, and its MulConstants."""
    linears, scalars = [], []
    for path, tname, mod in _modules(gru[1], _where(name, gru[0], "nngraph.gModule"), gru[0]):
        where = _where(name, path, tname)
        if tname == "nn.MulConstant":
            scalars.append(_num_field(mod, "constant_scalar", where))
        elif tname == "nn.Sequential":
            inner = _modules(mod, where, path)
            if [t for _, t, _ in inner] != ["nn.Linear"]:
                raise ValueError(f"{where}: expected a lone nn.Linear inside")
            lpath, ltype, lin = inner[0]
            lwhere = _where(name, lpath, ltype)
            weight = _tensor(lin, "weight", (dim, dim), lwhere)
            linears.append((lpath, weight, _tensor(lin, "bias", (dim,), lwhere)))
        elif tname not in _GRU_GLUE:
            raise ValueError(f"{where}: not part of the fixed GRU (another architecture?)")
    return linears, scalars


def _gru(gru: tuple[str, Any], name: str, arch: dict, state: dict) -> None:
    """Fill ``state`` with the six shared GRU Linears and ``arch`` with ``average``."""
    steps = gru_steps(arch)
    linears, scalars = _gru_linears(gru, name, arch["conv_dims"][-1])
    groups: dict[bytes, list] = {}
    for path, weight, bias in linears:
        groups.setdefault(weight.tobytes() + bias.tobytes(), []).append((path, weight, bias))
    sizes = [len(g) for g in groups.values()]
    if sizes != [steps] + [steps - 1] * 5:
        raise ValueError(
            f"{_where(name, gru[0], 'nngraph.gModule')}: its Linears form groups of sizes "
            f"{sizes} (in order of appearance), expected {[steps] + [steps - 1] * 5} for a "
            f"{steps}-step fixed GRU over the convolution output"
        )
    for role, group in zip(_GRU_ROLES, groups.values(), strict=True):
        state[f"gru.{role}.weight"], state[f"gru.{role}.bias"] = group[0][1], group[0][2]
    means = [s for s in scalars if s != -1.0]
    if means and (len(means) != 1 or abs(means[0] * steps - 1.0) > 1e-6):
        raise ValueError(f"{name}: the GRU's MulConstants {scalars} are not 1/{steps} and -1")
    arch["average"] = bool(means)


def convert_module(enc: Any, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(arch, state_dict)`` of the :class:`CharCnnRnn` equal to the Lua network ``enc``."""
    parts = _split_outer(enc, name)
    arch: dict[str, Any] = {"alphabet_size": len(ALPHABET), "doc_length": DOC_LENGTH}
    state: dict[str, np.ndarray] = {}
    _conv_stack(parts["convs"], name, arch, state)
    _gru(parts["gru"], name, arch, state)
    path, lin = parts["proj"]
    where = _where(name, path, "nn.Linear")
    weight = _field(lin, "weight", where)
    emb_dim = weight.shape[0] if isinstance(weight, np.ndarray) and weight.ndim == 2 else -1
    state["proj.weight"] = _tensor(lin, "weight", (emb_dim, arch["conv_dims"][-1]), where)
    state["proj.bias"] = _tensor(lin, "bias", (emb_dim,), where)
    arch["emb_dim"] = emb_dim
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}
    CharCnnRnn(arch).load_state_dict(tensors)  # strict: every name and shape must match
    return arch, tensors


def _atomic_save(payload: dict[str, Any], out: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_t7(t7_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Convert ``t7_path`` into a ``stackgan-text-encoder/1`` file at ``out_path``.

    Returns ``{"path", "sha256", "arch", "source_sha256", "source_name"}``; ``sha256`` is that
    of the written file (what :class:`CharCnnRnnEncoder` reports). ValueErrors name the file,
    and the module at fault where there is one.
    """
    src, out = Path(t7_path), Path(out_path)
    try:
        source_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    except OSError as err:
        raise ValueError(f"{src.name}: cannot read ({err.strerror})") from err
    arch, state = convert_module(find_enc_doc(read_t7(src), src.name), src.name)
    payload = {
        "format": FORMAT,
        "arch": arch,
        "state_dict": state,
        "source_sha256": source_sha,
        "source_name": src.name,
    }
    _atomic_save(payload, out)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"path": str(out), "sha256": sha, "arch": arch} | {
        "source_sha256": source_sha,
        "source_name": src.name,
    }
