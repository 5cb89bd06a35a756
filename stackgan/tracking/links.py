"""Links into the MLflow UI.

MLflow 3.17's UI opens every experiment in its GenAI view in a browser that has not yet
been switched to "Model training" (the toggle is remembered per browser, and the
``mlflow.experimentKind`` tag does not override it). Links that carry
``workflowType=machine_learning`` open the training-runs view directly.
"""

from __future__ import annotations

TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str) -> str:
    """The UI address for a tracking URI: the server itself, or ``mlflow ui``'s default."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's training-runs page."""
    return f"{base}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's comparison of runs (params, metrics; "show diff only" in the page)."""
    runs = ",".join(f'"{r}"' for r in run_ids)
    return f'{base}/#/compare-runs?runs=[{runs}]&experiments=["{experiment_id}"]&{TRAINING_VIEW}'
