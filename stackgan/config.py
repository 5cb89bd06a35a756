"""Typed, validated configuration for models, losses and training.

Every component takes explicit arguments; these frozen dataclasses are the single
home of training defaults. ``from_dict`` rejects unknown keys and names the bad key.
Options marked "per preset" default to ``None`` and are resolved from the
architecture preset (``paper`` = TensorFlow birds code, ``pytorch`` = StackGAN-Pytorch).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

Arch = Literal["paper", "pytorch"]
CaNonlinearity = Literal["relu", "leaky_relu"]
MismatchMode = Literal["shift", "class_aware"]
Amp = Literal["fp32", "bf16", "fp16"]
BnMode = Literal["per_rank", "sync"]
FrozenBn = Literal["eval", "train"]
GStepFakes = Literal["reuse", "redraw"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range (the message names the key)."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Network sizes and architecture switches (see docs/architecture.md).

    ``arch='paper'`` follows the TensorFlow birds code (LeakyReLU CA, own text FC in
    D, bottleneck residual blocks); ``arch='pytorch'`` follows StackGAN-Pytorch
    (ReLU CA, D conditioned on G's detached mu, unconditional Stage-II D head).
    """

    arch: Arch = "paper"
    text_dim: int = 1024  # char-CNN-RNN embedding size
    z_dim: int = 100  # noise size (Stage-I only; Stage-II draws no new z)
    cond_dim: int = 128  # CA output size Ng
    d_text_dim: int = 128  # text code size Nd inside D (pytorch: must equal cond_dim)
    gf_dim: int = 128  # Stage-I G starts at 8*gf_dim channels; Stage-II G base width
    df_dim: int = 64  # D base width
    r_num: int = 4  # residual blocks in Stage-II G
    ca_nonlinearity: CaNonlinearity | None = None  # per preset: paper leaky_relu, pytorch relu
    uncond_head: bool | None = None  # Stage-II D unconditional head; per preset: pytorch True

    def __post_init__(self) -> None:
        _check(
            self.arch in get_args(Arch),
            "model.arch",
            f"expected one of {get_args(Arch)}, got {self.arch!r}",
        )
        for key in ("text_dim", "z_dim", "cond_dim", "d_text_dim", "gf_dim", "df_dim"):
            _check(
                int(getattr(self, key)) > 0,
                f"model.{key}",
                f"must be > 0, got {getattr(self, key)}",
            )
        _check(self.r_num >= 0, "model.r_num", f"must be >= 0, got {self.r_num}")
        _check(self.gf_dim % 8 == 0, "model.gf_dim", f"must be a multiple of 8, got {self.gf_dim}")
        if self.ca_nonlinearity is None:
            object.__setattr__(
                self, "ca_nonlinearity", "leaky_relu" if self.arch == "paper" else "relu"
            )
        if self.uncond_head is None:
            object.__setattr__(self, "uncond_head", self.arch == "pytorch")
        if self.arch == "pytorch":
            _check(
                self.d_text_dim == self.cond_dim,
                "model.d_text_dim",
                f"the pytorch arch conditions D on G's mu, so it must equal cond_dim={self.cond_dim}",
            )


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Loss weights and the mismatched-pair policy."""

    kl_weight: float = 2.0  # CA KL, mean over batch and dims, as in the released code
    uncond_weight: float = 1.0  # weight of the unconditional-head terms (when the head exists)
    mismatch: MismatchMode = (
        "shift"  # shift = reference batch roll; class_aware = other class guaranteed
    )

    def __post_init__(self) -> None:
        _check(self.kl_weight >= 0, "loss.kl_weight", f"must be >= 0, got {self.kl_weight}")
        _check(
            self.uncond_weight >= 0, "loss.uncond_weight", f"must be >= 0, got {self.uncond_weight}"
        )
        _check(
            self.mismatch in get_args(MismatchMode),
            "loss.mismatch",
            f"expected one of {get_args(MismatchMode)}, got {self.mismatch!r}",
        )


# --------------------------------------------------------------------------- helpers


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a (simple) type hint and coerce ints to floats."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: got {value!r}, expected {hint}")
    if origin is Literal:
        _check(
            value in get_args(hint), key, f"expected one of {list(get_args(hint))}, got {value!r}"
        )
        return value
    if dataclasses.is_dataclass(hint):
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return from_dict(hint, value, prefix=key)
    if origin in (list, tuple):
        _check(isinstance(value, list | tuple), key, f"expected a list, got {value!r}")
        (inner, *_rest) = get_args(hint) or (Any,)
        return origin(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"expected a number, got {value!r}",
        )
        return float(value)
    if hint is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"expected an integer, got {value!r}",
        )
        return value
    if hint is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if hint is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad types."""
    data = dict(data or {})
    hints = _resolve_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    where = prefix or cls.__name__
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # missing required keys
        raise ConfigError(f"{where}: {err}") from err


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (tuples become lists, for YAML/JSON)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        return v

    return convert(obj)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


__all__ = [
    "ConfigError",
    "LossConfig",
    "ModelConfig",
    "field",
    "flatten",
    "from_dict",
    "to_dict",
]
