"""Training: one StackGAN stage, from a job's inputs to its network file.

* :mod:`~stackgan.training.run` -- one training job (input checks, rank error agreement,
  tracker lifecycle, monitor set-up, final artefacts); ``stackgan train`` calls it.
* :mod:`~stackgan.training.loop` -- the training loop (orchestration only).
* :mod:`~stackgan.training.step` -- the D and G updates of one step, as functions.
* :mod:`~stackgan.training.state` -- training states: capture, restore, files, pruning.
* :mod:`~stackgan.training.snapshots` -- eval-mode snapshots, sample grids, the monitor
  call and the final network file.
* :mod:`~stackgan.training.schedule` -- steps, learning rates, Adam, EMA, device checks.
* :mod:`~stackgan.training.control` -- stop signals, preemption, non-finite losses, results.
* :mod:`~stackgan.training.artefacts` -- metrics history, loss curves, the summary JSON.
"""
