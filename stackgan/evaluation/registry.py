"""The evaluation's metrics, registered by name (in the way of stylegan3's ``metric_main``).

A metric is a function ``MetricInputs -> {result key: value}`` registered with
:func:`register_metric` under a name and the inputs it needs: arrays of the activation
cache (``logits``, ``features``, ``attributes``) and/or ``real_features`` (the reference
set). :func:`compute_metrics` runs the requested ones -- by default every registered
metric whose inputs are there, in registration order -- and merges their results.

Built in: ``is`` (``is_mean``, ``is_std``), ``fid`` (``fid``), ``kid`` (``kid_mean``,
``kid_std``) and ``conditional_accuracy`` (``cond_*``, the twin attribute classifier's
accuracy and chance levels); the names are also the keys of ``skipped`` in metrics.json.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stackgan.config import EvalConfig

#: the inputs a metric can need besides the activation cache's arrays
REAL_FEATURES = "real_features"


@dataclass(frozen=True)
class MetricOptions:
    """Settings of the built-in metrics (defaults: :class:`~stackgan.config.EvalConfig`)."""

    is_splits: int = EvalConfig.is_splits
    kid_subsets: int = EvalConfig.kid_subsets
    kid_subset_size: int = EvalConfig.kid_subset_size
    seed: int = EvalConfig.seed


@dataclass
class MetricInputs:
    """What metrics are computed from; ``notes`` collects the metrics' remarks."""

    arrays: dict[str, np.ndarray]  # the activation cache: features, logits, attributes
    real_features: np.ndarray | None  # features of the reference set (FID/KID)
    captions: Sequence[str]  # the caption of each request
    options: MetricOptions = field(default_factory=MetricOptions)
    notes: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        """Whether the input ``name`` (an array of the cache, or ``real_features``) is there."""
        if name == REAL_FEATURES:
            return self.real_features is not None
        return name in self.arrays


MetricFn = Callable[[MetricInputs], dict[str, float]]


@dataclass(frozen=True)
class Metric:
    """A registered metric: its name, the inputs it needs, its function."""

    name: str
    needs: tuple[str, ...]
    fn: MetricFn


_METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, needs: Sequence[str]) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register ``fn`` as the metric ``name`` computed from the inputs ``needs``."""

    def wrap(fn: MetricFn) -> MetricFn:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        _METRICS[name] = Metric(name, tuple(needs), fn)
        return fn

    return wrap


def is_valid_metric(name: str) -> bool:
    """Whether ``name`` is a registered metric."""
    return name in _METRICS


def list_valid_metrics() -> list[str]:
    """The registered metrics' names, in registration order."""
    return list(_METRICS)


def available_metrics(inputs: MetricInputs) -> list[str]:
    """The registered metrics whose inputs are all there, in registration order."""
    return [m.name for m in _METRICS.values() if all(inputs.has(n) for n in m.needs)]


def calc_metric(name: str, inputs: MetricInputs) -> dict[str, float]:
    """Compute one metric; an unknown name or a missing input is a ``ValueError``."""
    if not is_valid_metric(name):
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(list_valid_metrics())})")
    metric = _METRICS[name]
    missing = [n for n in metric.needs if not inputs.has(n)]
    if missing:
        raise ValueError(f"metric {name!r} needs {', '.join(missing)}, which is not there")
    return metric.fn(inputs)


def compute_metrics(inputs: MetricInputs, names: Sequence[str] | None = None) -> dict[str, float]:
    """The results of the metrics ``names`` (default: every available one), merged."""
    out: dict[str, float] = {}
    for name in available_metrics(inputs) if names is None else names:
        out.update(calc_metric(name, inputs))
    return out


# --------------------------------------------------------------------------- built-in metrics


@register_metric("is", needs=("logits",))
def inception_score_metric(inputs: MetricInputs) -> dict[str, float]:
    """Inception Score of the generated images' logits: ``is_mean``, ``is_std``."""
    from stackgan.metrics.scores import inception_score

    mean, std = inception_score(
        inputs.arrays["logits"],
        splits=inputs.options.is_splits,
        seed=inputs.options.seed,
        notes=inputs.notes,
    )
    return {"is_mean": mean, "is_std": std}


@register_metric("fid", needs=("features", REAL_FEATURES))
def fid_metric(inputs: MetricInputs) -> dict[str, float]:
    """Frechet distance of real vs generated features: ``fid``."""
    from stackgan.metrics.scores import frechet_distance

    return {"fid": frechet_distance(inputs.real_features, inputs.arrays["features"])}


@register_metric("kid", needs=("features", REAL_FEATURES))
def kid_metric(inputs: MetricInputs) -> dict[str, float]:
    """Kernel Inception Distance of real vs generated features: ``kid_mean``, ``kid_std``."""
    from stackgan.metrics.scores import kernel_inception_distance

    mean, std = kernel_inception_distance(
        inputs.real_features,
        inputs.arrays["features"],
        subsets=inputs.options.kid_subsets,
        subset_size=inputs.options.kid_subset_size,
        seed=inputs.options.seed,
        notes=inputs.notes,
    )
    return {"kid_mean": mean, "kid_std": std}


@register_metric("conditional_accuracy", needs=("attributes",))
def conditional_accuracy_metric(inputs: MetricInputs) -> dict[str, float]:
    """Twin attribute accuracy of the generated images against their captions: ``cond_*``."""
    from stackgan.evaluation.attributes.score import accuracy, attribute_labels

    wanted = attribute_labels(inputs.captions)
    return {f"cond_{k}": v for k, v in accuracy(inputs.arrays["attributes"], wanted).items()}


__all__ = [
    "REAL_FEATURES",
    "Metric",
    "MetricInputs",
    "MetricOptions",
    "available_metrics",
    "calc_metric",
    "compute_metrics",
    "is_valid_metric",
    "list_valid_metrics",
    "register_metric",
]
