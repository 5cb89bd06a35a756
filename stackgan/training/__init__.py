"""Training internals: the D and G updates as functions (:mod:`stackgan.training.step`)."""
