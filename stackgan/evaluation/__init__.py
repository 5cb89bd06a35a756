"""Evaluation of a generator: the protocol, activations and their cache, metrics, grids.

The package, from the bottom up (no module imports one above it):

* :mod:`~stackgan.evaluation.protocol` -- :class:`Protocol` and the (test image, caption)
  :class:`Requests` read from the test split's HDF5 index;
* :mod:`~stackgan.evaluation.attributes` -- the twin attribute classifier (model, scores,
  training) behind conditional accuracy, also used by the in-training monitor;
* :mod:`~stackgan.evaluation.activations` -- sharded generation into features, logits and
  attribute predictions; the activation cache;
* :mod:`~stackgan.evaluation.reference` -- the feature extractor named by the options and the
  real-image statistics file (``stackgan evaluate real-stats``);
* :mod:`~stackgan.evaluation.grid` -- the captioned evaluation grid;
* :mod:`~stackgan.evaluation.registry` -- the metrics (IS, FID, KID, conditional accuracy)
  registered by name, computed from the activations;
* :mod:`~stackgan.evaluation.run` -- :func:`~stackgan.evaluation.run.evaluate`: one generator
  file in, ``metrics.json``, ``grid.png`` and ``activations.h5`` out.

The command line (``stackgan evaluate``, ``stackgan attr-classifier``) is in
:mod:`stackgan.cli`; the score functions (FID/KID/IS math, the Inception network, feature
extractors, twin-FID and diversity) are in :mod:`stackgan.metrics`.
"""
