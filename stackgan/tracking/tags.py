"""The tag vocabulary of the project's MLflow runs: tag names and the values each writer uses.

One place for every tag the project reads back (``stackgan runs``, the run hierarchy, the
retry logic). The values below are the ones written to MLflow today; filters such as
``stackgan runs --filter "tags.stage = 'eval2'"`` rely on them, so they must not change.

=====================  ==============================  ===========================================
tag                    values                          written by
=====================  ==============================  ===========================================
``stage``              ``"1"``, ``"2"``                a training stage's run (``stackgan train``)
                       ``"eval1"``, ``"eval2"``        an evaluation run (``stackgan evaluate``)
                       ``"pipeline"``                  the parent run (the workflow passes
                                                       ``--tag stage=pipeline`` to
                                                       ``stackgan track start-parent``)
``stackgan.role``      ``"pipeline"``                  the parent run (``start-parent``)
``stackgan.attempt``   ``"1"``, ``"2"``, ...           every tracked run: 1 when created, +1 each
                                                       time a retried job continues it
``mlflow.parentRunId`` the parent's run id             every child run (training, evaluation)
``status``             ``FINISHED``/``FAILED``/        the parent run (``finish-parent``)
                       ``KILLED``
                       ``"finished"``                  a training or evaluation run that ended
``<name>_path``        an absolute path                ``Tracker.log_checkpoint_path`` (training:
                                                       ``workdir_path``)
``preset``,            free text (``"none"`` when      training and evaluation runs (the workflow
``dataset``            not given)                      passes them to the parent as ``--tag``)
``arch``, ``slurm.*``  model preset, SLURM job info    a training run
=====================  ==============================  ===========================================

Run *names* are a different thing: ``stage1``/``stage2`` and ``eval-stage1``/``eval-stage2``
by default (``--run-name``), the pipeline run's name for the parent.
"""

from __future__ import annotations

#: MLflow's own tag linking a child run to its parent (set explicitly, across processes)
PARENT_RUN_TAG = "mlflow.parentRunId"
#: what a run is: :func:`training_stage`, :func:`evaluation_stage` or :data:`PIPELINE_STAGE`
STAGE_TAG = "stage"
#: 1 for a new run, +1 each time it is continued by a retried job
ATTEMPT_TAG = "stackgan.attempt"
#: set on the parent run only, with the value :data:`PIPELINE_ROLE`
ROLE_TAG = "stackgan.role"
PIPELINE_ROLE = "pipeline"
#: ``stage`` tag value of the parent (pipeline) run
PIPELINE_STAGE = "pipeline"
#: the parent run's final status (one of :data:`RUN_STATUSES`); a training or evaluation
#: run that ended normally: :data:`JOB_FINISHED`
STATUS_TAG = "status"
JOB_FINISHED = "finished"
#: the statuses a run can end with
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


def training_stage(stage: int) -> str:
    """``stage`` tag value of a training run: ``"1"`` or ``"2"``."""
    return str(stage)


def evaluation_stage(stage: int) -> str:
    """``stage`` tag value of the evaluation of stage ``stage``: ``"eval1"`` or ``"eval2"``."""
    return f"eval{stage}"


__all__ = [
    "ATTEMPT_TAG",
    "JOB_FINISHED",
    "PARENT_RUN_TAG",
    "PIPELINE_ROLE",
    "PIPELINE_STAGE",
    "ROLE_TAG",
    "RUN_STATUSES",
    "STAGE_TAG",
    "STATUS_TAG",
    "evaluation_stage",
    "training_stage",
]
