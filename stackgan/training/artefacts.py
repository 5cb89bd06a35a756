"""What a finished training job leaves besides the network file: the merged metrics history,
the loss-curve PNG, a copy of the final sample grid and the metrics summary JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stackgan.fileio import atomic_open, write_json

History = list[tuple[int, dict[str, float]]]


def append_metrics(path: Path, step: int, metrics: dict[str, float]) -> None:
    """Append one ``{"step": step, **metrics}`` row to ``metrics.jsonl``."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": step, **metrics}) + "\n")


def read_history(path: Path) -> History:
    """metrics.jsonl rows merged by step (training and evaluation rows of a step are one
    entry; a resumed run's rewrite of a step replaces its values)."""
    rows: dict[int, dict[str, float]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault(int(row["step"]), {}).update(row)
    return sorted(rows.items())


def _panels(history: History) -> list[tuple[str, tuple[str, ...]]]:
    panels = [
        ("losses", ("loss_d", "loss_g", "kl")),
        ("mean D outputs (sigmoid)", ("d_real", "d_wrong", "d_fake")),
    ]
    if any("eval.body_accuracy" in m for _, m in history):
        panels += [
            (
                "test-caption accuracy (dashed: chance)",
                ("eval.body_accuracy", "eval.wing_accuracy", "eval.joint_accuracy"),
            ),
            (
                "twin-FID (log), diversity, consistency",
                ("eval.twin_fid", "eval.diversity", "eval.consistency_attributes"),
            ),
        ]
    if any("eval.inception_fid" in m for _, m in history):
        panels.append(("Inception FID, small sample (log)", ("eval.inception_fid",)))
    return panels


def loss_curve(history: History, path: Path) -> Path | None:
    """PNG of the loss and D-output curves, plus the in-training evaluation when it ran."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(s, m[key]) for s, m in history if key in m]
        return [s for s, _ in pts], [v for _, v in pts]

    panels = _panels(history)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            xs, ys = series(key)
            if xs:
                line = ax.plot(xs, ys, marker="o" if key.startswith("eval.") else None, label=key)
                chance = key.replace("_accuracy", "_chance")
                if chance != key and series(chance)[0]:
                    ax.plot(*series(chance), ls="--", color=line[0].get_color())
        if "(log)" in title:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (the final sample grid)."""
    with atomic_open(dst, "wb") as fh:
        fh.write(src.read_bytes())


def eval_history(history: History) -> list[dict[str, Any]]:
    """The in-training evaluation rows: ``{"step", "eval.*"...}`` per evaluation point."""
    return [
        {"step": s, **{k: v for k, v in m.items() if k.startswith("eval.")}}
        for s, m in history
        if "eval.seconds" in m
    ]


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """The final metrics JSON."""
    write_json(path, summary)
