"""What MLflow accepts: size limits, param flattening and truncation, tolerant param batches.

:func:`log_params` is the one way the project writes params: batches of 100, and a batch that
MLflow refuses because a param already has another value (a continued run, a re-run parent)
is written one param at a time, each conflicting param keeping its first value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from stackgan.config import flatten

if TYPE_CHECKING:
    from stackgan.tracking.protocol import InputRecord

log = logging.getLogger(__name__)

# MLflow limits (mlflow/utils/validation.py in 3.17.2).
MAX_PARAM_VALUE_LEN = 6000
MAX_TAG_VALUE_LEN = 8000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
TRUNCATION_MARKER = "...[truncated]"


def truncate(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, ending in :data:`TRUNCATION_MARKER` when cut."""
    if len(value) <= limit:
        return value
    return value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def param_items(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Flatten nested params to ``[(dotted.key, str value)]`` within MLflow's value limit."""
    return [(k, truncate(str(v), MAX_PARAM_VALUE_LEN)) for k, v in flatten(params).items()]


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def send_param_batch(client: Any, run_id: str, params: list[Any]) -> None:
    """``log_batch`` up to 100 ``Param``; on a value conflict, log them one by one.

    A continued run may re-log a param with a new value (e.g. another git commit); MLflow
    refuses the whole batch then. The first value is kept (with a warning), the others land.
    Any other error is raised (the tracker's worker retries it).
    """
    from mlflow.exceptions import MlflowException

    try:
        client.log_batch(run_id, params=params)
    except MlflowException as err:
        if err.error_code != "INVALID_PARAMETER_VALUE":
            raise
        for param in params:
            try:
                client.log_param(run_id, param.key, param.value)
            except MlflowException as one_err:
                if one_err.error_code != "INVALID_PARAMETER_VALUE":
                    raise
                log.warning("param %s kept its first value: %s", param.key, one_err)


def param_batches(params: dict[str, Any]) -> Iterator[list[tuple[str, str]]]:
    """:func:`param_items` of ``params`` in batches of :data:`MAX_PARAMS_TAGS_PER_BATCH`."""
    return chunks(param_items(params), MAX_PARAMS_TAGS_PER_BATCH)


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log (nested) params synchronously: flattened, truncated, :func:`send_param_batch`."""
    from mlflow.entities import Param

    for batch in param_batches(params):
        send_param_batch(client, run_id, [Param(k, v) for k, v in batch])


def context_tags(tags: dict[str, Any]) -> dict[str, str]:
    """``tags`` plus MLflow's standard source/user/git tags (as ``mlflow.start_run`` adds)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        resolved = resolve_tags(dict(tags))
    except Exception as err:  # context providers are best effort
        log.debug("run context tags unavailable: %s", err)
        resolved = dict(tags)
    return {k: truncate(str(v), MAX_TAG_VALUE_LEN) for k, v in resolved.items()}


def dataset_input(record: InputRecord) -> Any:
    """An :class:`InputRecord` as MLflow's ``DatasetInput`` (source type ``local``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    tags = [
        InputTag(MLFLOW_DATASET_CONTEXT, record.context),
        InputTag("sha256", record.sha256),
        *(InputTag(k, truncate(str(v), MAX_TAG_VALUE_LEN)) for k, v in record.tags.items()),
    ]
    return DatasetInput(Dataset(record.name, record.digest, "local", record.source), tags)
