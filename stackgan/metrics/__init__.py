"""Evaluation metrics: torchvision-free FID Inception, feature extractors, FID/KID/IS math.

Public names are re-exported lazily (PEP 562), so importing one submodule does not import
the others. The attribute classifier behind conditional accuracy is in
:mod:`stackgan.evaluation.attributes`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "TEST_EXTRACTOR_LABEL": "extractors",
    "FeatureExtractor": "extractors",
    "InceptionExtractor": "extractors",
    "TestExtractor": "extractors",
    "extract": "extractors",
    "CUB_BACKGROUND_INDEX": "inception",
    "CUB_NUM_CLASSES": "inception",
    "FID_NUM_CLASSES": "inception",
    "FID_WEIGHTS_FILENAME": "inception",
    "FID_WEIGHTS_SHA256_PREFIX": "inception",
    "FIDInceptionV3": "inception",
    "drop_background_logit": "inception",
    "load_cub_classifier": "inception",
    "load_fid_inception": "inception",
    "feature_statistics": "scores",
    "fid_from_stats": "scores",
    "frechet_distance": "scores",
    "implementation_info": "scores",
    "inception_score": "scores",
    "kernel_inception_distance": "scores",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
