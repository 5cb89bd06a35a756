"""Run comparison (the library part of ``stackgan runs``): rows of runs, sorted and formatted.

Reads runs through ``MlflowClient.search_runs``; rows are runs, columns are run id (short in
the table), run name, status, start time, stage tag, the chosen params and the chosen metrics
(latest value of each). Missing values print as ``-`` in the table, as empty cells in CSV and
as ``null`` in JSON.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stackgan.tracking.tags import PARENT_RUN_TAG, STAGE_TAG

MISSING = "-"
BASE_COLUMNS = ("run_id", "run_name", "status", "start_time", "duration", "stage")
FORMATS = ("table", "csv", "json")
# The default columns: the few numbers that say how a run did, per kind of run (pipeline
# parents, evaluation runs, training runs); those present on the listed runs are shown.
KEY_METRICS = (
    "stage1.cond_body_accuracy",
    "stage1.cond_wing_accuracy",
    "stage2.cond_body_accuracy",
    "stage2.cond_wing_accuracy",
    "stage2.fid",
    "cond_body_accuracy",
    "cond_wing_accuracy",
    "fid",
    "inception_score",
    "eval.body_accuracy",
    "eval.wing_accuracy",
    "eval.twin_fid",
    "loss_d",
    "loss_g",
)


@dataclass(frozen=True)
class Row:
    """One run, reduced to what the table shows."""

    run_id: str
    run_name: str
    status: str
    start_time_ms: int | None
    end_time_ms: int | None
    stage: str | None
    parent_run_id: str | None
    params: dict[str, str]
    metrics: dict[str, float]


def split_list(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]


def fetch_rows(
    client: Any,
    experiments: list[str],
    filter_string: str = "",
    children_of: str | None = None,
    parents_only: bool = False,
) -> list[Row]:
    """All matching runs of the named experiments (all active experiments when empty).

    Raises:
        ValueError: An experiment name is unknown.
    """
    if experiments:
        ids = []
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise ValueError(f"unknown experiment {name!r}")
            ids.append(exp.experiment_id)
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    clauses = [filter_string] if filter_string else []
    if children_of:
        clauses.append(f"tags.{PARENT_RUN_TAG} = '{children_of}'")
    rows, token = [], None
    while ids:
        page = client.search_runs(
            ids, filter_string=" AND ".join(clauses), max_results=1000, page_token=token
        )
        rows.extend(_row(run) for run in page)
        token = page.token
        if not token:
            break
    return [r for r in rows if not (parents_only and r.parent_run_id)]


def _row(run: Any) -> Row:
    tags = run.data.tags
    return Row(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        status=run.info.status,
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
        stage=tags.get(STAGE_TAG),
        parent_run_id=tags.get(PARENT_RUN_TAG),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


def sort_rows(rows: list[Row], key: str | None, descending: bool = False) -> list[Row]:
    """Sort by ``metrics.X``, ``params.Y``, ``start_time`` or ``run_name``; missing last.

    Params sort numerically when every present value parses as a number.

    Raises:
        ValueError: ``key`` has an unsupported form.
    """
    if not key:
        return sorted(rows, key=lambda r: r.start_time_ms or 0, reverse=True)
    if key.startswith("metrics."):
        name = key.removeprefix("metrics.")
        values: dict[str, Any] = {r.run_id: r.metrics.get(name) for r in rows}
    elif key.startswith("params."):
        name = key.removeprefix("params.")
        values = {r.run_id: r.params.get(name) for r in rows}
        present = [v for v in values.values() if v is not None]
        if present and all(_is_number(v) for v in present):
            values = {k: None if v is None else float(v) for k, v in values.items()}
    elif key in ("start_time", "attributes.start_time"):
        values = {r.run_id: r.start_time_ms for r in rows}
    elif key in ("run_name", "attributes.run_name"):
        values = {r.run_id: r.run_name for r in rows}
    else:
        raise ValueError(f"--sort expects metrics.X, params.Y, start_time or run_name, got {key!r}")
    have = sorted((r for r in rows if values[r.run_id] is not None), key=lambda r: values[r.run_id])
    if descending:
        have.reverse()
    return have + [r for r in rows if values[r.run_id] is None]


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def all_metrics(rows: list[Row]) -> list[str]:
    """Every metric on the rows, sorted, without mlflow's ``system/`` metrics."""
    names = {k for r in rows for k in r.metrics if not k.startswith("system/")}
    return sorted(names)


def default_metrics(rows: list[Row]) -> list[str]:
    """The :data:`KEY_METRICS` present on the rows (in that order); all when none is."""
    present = {k for r in rows for k in r.metrics}
    return [m for m in KEY_METRICS if m in present] or all_metrics(rows)


def all_params(rows: list[Row]) -> list[str]:
    """Every param on the rows, sorted."""
    return sorted({k for r in rows for k in r.params})


def _duration(r: Row) -> str | None:
    if not r.start_time_ms or not r.end_time_ms:
        return None
    seconds = max(0, (r.end_time_ms - r.start_time_ms) // 1000)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def table_records(rows: list[Row], params: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """One dict per row: base columns, ``params.<p>``, ``metrics.<m>`` (``None`` = missing)."""
    records = []
    for r in rows:
        start = (
            datetime.fromtimestamp(r.start_time_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if r.start_time_ms
            else None
        )
        record: dict[str, Any] = {
            "run_id": r.run_id,
            "run_name": r.run_name,
            "status": r.status,
            "start_time": start,
            "duration": _duration(r),
            "stage": r.stage,
        }
        record.update({f"params.{p}": r.params.get(p) for p in params})
        record.update({f"metrics.{m}": r.metrics.get(m) for m in metrics})
        records.append(record)
    return records


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(records: list[dict[str, Any]], columns: list[str]) -> str:
    """Fixed-width text table; run ids shortened to 8 characters."""
    header = ["run_id" if c == "run_id" else c for c in columns]
    body = [
        [_cell(rec[c])[:8] if c == "run_id" else _cell(rec[c]) for c in columns] for rec in records
    ]
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(header)]
    numeric = [c.startswith("metrics.") for c in columns]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for row in body:
        cells = (
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(row, widths, numeric, strict=True)
        )
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_csv(records: list[dict[str, Any]], columns: list[str]) -> str:
    """CSV with a header row; missing values are empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for rec in records:
        writer.writerow(["" if rec[c] is None else rec[c] for c in columns])
    return buffer.getvalue().rstrip("\n")


def render(
    rows: list[Row],
    *,
    sort: str | None = None,
    descending: bool = False,
    limit: int | None = None,
    params: list[str] | None = None,
    metrics: list[str] | None = None,
    fmt: str = "table",
    everything: bool = False,
) -> str:
    """Sort, limit and format ``rows`` (``fmt``: table, csv or json).

    ``metrics`` defaults to the key metrics on the (limited) rows (:func:`default_metrics`);
    ``everything`` shows every param and every metric but mlflow's ``system/`` ones.
    """
    rows = sort_rows(rows, sort, descending)
    if limit is not None:
        rows = rows[: max(0, limit)]
    params = all_params(rows) if everything else list(params or [])
    metrics = all_metrics(rows) if everything else (list(metrics or []) or default_metrics(rows))
    records = table_records(rows, params, metrics)
    columns = [*BASE_COLUMNS, *(f"params.{p}" for p in params), *(f"metrics.{m}" for m in metrics)]
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        return format_csv(records, columns)
    return format_table(records, columns)


# --------------------------------------------------------------------------- differences


def fetch_run(client: Any, ref: str, experiments: list[str]) -> Row:
    """A run by id, or by run name within ``experiments`` (the newest of that name).

    Raises:
        ValueError: no run has that id or name.
    """
    from mlflow.exceptions import MlflowException

    try:
        return _row(client.get_run(ref))
    except MlflowException:
        pass
    rows = [r for r in fetch_rows(client, experiments) if r.run_name == ref]
    if not rows:
        raise ValueError(f"no run with id or name {ref!r}")
    return max(rows, key=lambda r: r.start_time_ms or 0)


def row_differences(a: Row, b: Row) -> list[tuple[str, Any, Any]]:
    """``(params.X | metrics.Y, value in a, value in b)`` for every key whose values differ
    (missing on one side counts), sorted; mlflow's ``system/`` metrics are left out."""
    out = []
    for kind, left, right in (("params", a.params, b.params), ("metrics", a.metrics, b.metrics)):
        for key in sorted(set(left) | set(right)):
            if kind == "metrics" and key.startswith("system/"):
                continue
            if left.get(key) != right.get(key):
                out.append((f"{kind}.{key}", left.get(key), right.get(key)))
    return out


def diff_runs(client: Any, ref_a: str, ref_b: str, experiments: list[str]) -> str:
    """What differs between two runs; for two pipeline (parent) runs, also between their
    children paired by run name (``stage1`` with ``stage1``, ...)."""
    a, b = fetch_run(client, ref_a, experiments), fetch_run(client, ref_b, experiments)
    pairs = [(f"{a.run_name} ({a.run_id[:8]}) vs {b.run_name} ({b.run_id[:8]})", a, b)]
    kids_a = {r.run_name: r for r in fetch_rows(client, [], children_of=a.run_id)}
    kids_b = {r.run_name: r for r in fetch_rows(client, [], children_of=b.run_id)}
    for name in sorted(set(kids_a) | set(kids_b)):
        if name in kids_a and name in kids_b:
            pairs.append((f"child {name}", kids_a[name], kids_b[name]))
        else:
            pairs.append((f"child {name}: only in {'A' if name in kids_a else 'B'}", None, None))
    lines = []
    for title, left, right in pairs:
        lines.append(f"== {title}")
        if left is None or right is None:
            continue
        diffs = row_differences(left, right)
        if not diffs:
            lines.append("   (no differences)")
            continue
        width = max(len(k) for k, _, _ in diffs)
        lines += [f"   {k.ljust(width)}  {_cell(x)}  ->  {_cell(y)}" for k, x, y in diffs]
    return "\n".join(lines)
