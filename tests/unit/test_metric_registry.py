"""The evaluation's metric registry: names, availability, results equal to the score functions."""

from __future__ import annotations

import numpy as np
import pytest

from stackgan.evaluation import registry
from stackgan.evaluation.attributes.score import accuracy, attribute_labels
from stackgan.evaluation.registry import MetricInputs, MetricOptions, compute_metrics
from stackgan.metrics.scores import frechet_distance, inception_score, kernel_inception_distance

CAPTIONS = ["a red bird with blue wings."] * 6 + ["a green bird with yellow wings."] * 6


def _inputs(*, real: bool = True, attributes: bool = True, extractor: bool = True) -> MetricInputs:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {"request": np.arange(12)}
    if extractor:
        arrays["features"] = rng.normal(size=(12, 8))
        arrays["logits"] = rng.normal(size=(12, 5))
    if attributes:
        arrays["attributes"] = rng.integers(0, 3, size=(12, 2))
    return MetricInputs(
        arrays,
        rng.normal(size=(10, 8)) if real else None,
        CAPTIONS,
        MetricOptions(is_splits=2, kid_subsets=3, kid_subset_size=5, seed=7),
    )


def test_builtin_metrics_are_registered_in_order():
    assert registry.list_valid_metrics()[:4] == ["is", "fid", "kid", "conditional_accuracy"]
    assert registry.is_valid_metric("fid") and not registry.is_valid_metric("nope")


def test_available_metrics_follow_the_inputs():
    assert registry.available_metrics(_inputs()) == ["is", "fid", "kid", "conditional_accuracy"]
    assert registry.available_metrics(_inputs(real=False)) == ["is", "conditional_accuracy"]
    assert registry.available_metrics(_inputs(extractor=False, attributes=False)) == []


def test_results_equal_the_score_functions():
    inputs = _inputs()
    got = compute_metrics(inputs)
    a = inputs.arrays
    notes: list[str] = []
    is_mean, is_std = inception_score(a["logits"], splits=2, seed=7, notes=notes)
    kid_mean, kid_std = kernel_inception_distance(
        inputs.real_features, a["features"], subsets=3, subset_size=5, seed=7, notes=notes
    )
    want = {
        "is_mean": is_mean,
        "is_std": is_std,
        "fid": frechet_distance(inputs.real_features, a["features"]),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **{
            f"cond_{k}": v for k, v in accuracy(a["attributes"], attribute_labels(CAPTIONS)).items()
        },
    }
    assert got == want
    assert inputs.notes == notes


def test_requested_metrics_only_and_errors():
    assert set(compute_metrics(_inputs(), ["fid"])) == {"fid"}
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        compute_metrics(_inputs(), ["nope"])
    with pytest.raises(ValueError, match="needs real_features"):
        compute_metrics(_inputs(real=False), ["kid"])
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_metric("fid", needs=())(lambda inputs: {})
