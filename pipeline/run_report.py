"""A pipeline run's report: one self-contained HTML file that says whether the run is good.

    python -m pipeline.run_report --summary results/demo/summary.json \\
        --pipeline-config results/demo/pipeline_config.yaml \\
        --train results/demo/stage1/metrics.json ... \\
        --eval results/demo/eval/stage1/metrics.json ... \\
        [--classifier-report DATA/attribute_classifier.json] \\
        [--tracking-uri URI --parent-run-id-file results/demo/mlflow/parent_run_id.txt] \\
        --out results/demo/report.html

Per stage it shows the loss and in-training metric curves, the final sample grid, the
evaluation grid, the evaluation metrics beside chance and the real-image ceiling, and a
plain verdict line; above them the pipeline config in short, and links to the MLflow runs.
Images are embedded, so the file works offline on its own.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stackgan.config import flatten
from stackgan.fileio import atomic_open
from stackgan.tracking.links import run_url, ui_base

STAGE_NAMES = {1: "Stage-I (64 px)", 2: "Stage-II (256 px)"}
#: a stage "follows its captions" when body and wing are each at least this multiple of chance
FOLLOWS = 3.0
#: below this multiple of chance on both, the conditioning does not show
SHOWS = 1.5
#: the paper's CUB numbers (docs/evaluation.md; the FID anchor is uncertain)
PAPER_IS = "3.70 ± 0.04"
PAPER_FID = "51.89"
#: the pipeline config keys shown at the top (the rest is in the collapsed full config)
KEY_SETTINGS = (
    "data.source",
    "data.twin.classes",
    "data.twin.images_per_class",
    "model.arch",
    "model.gf_dim",
    "model.df_dim",
    "model.z_dim",
    "loss.kl_weight",
    "train.seed",
    "train.batch_size",
    "train.lr_g",
    "train.lr_d",
    "train.amp",
    "stage1.max_steps",
    "stage2.max_steps",
    "stage1.epochs",
    "stage2.epochs",
)


@dataclass
class StageResult:
    """Everything the report shows about one stage."""

    stage: int
    train: dict[str, Any] = field(default_factory=dict)
    train_dir: Path | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    eval_dir: Path | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.evaluation.get("metrics", {}))


def attribute_verdict(metrics: dict[str, float]) -> tuple[str, str] | None:
    """``(level, sentence)`` from the conditional-accuracy metrics; None without them.

    Levels: ``good`` (body and wing each >= 3x chance), ``weak`` (either >= 1.5x chance),
    ``bad`` (neither).
    """
    ratios = {}
    for attr in ("body", "wing"):
        acc, chance = metrics.get(f"cond_{attr}_accuracy"), metrics.get(f"cond_{attr}_chance")
        if acc is None:
            return None
        if not chance:
            return "info", "too few evaluation samples for a chance level; no verdict."
        ratios[attr] = acc / chance
    said = ", ".join(f"{a} {r:.1f}x chance" for a, r in ratios.items())
    if min(ratios.values()) >= FOLLOWS:
        return "good", f"follows its captions: {said}."
    if max(ratios.values()) >= SHOWS:
        return "weak", f"follows its captions only partly: {said} (>= {FOLLOWS:g}x is the aim)."
    return "bad", f"does not follow its captions: {said}."


def inception_verdict(stage: int, metrics: dict[str, float]) -> str | None:
    """A sentence putting IS / FID beside the paper's CUB numbers (Stage-II, 256 px)."""
    if "is_mean" not in metrics and "fid" not in metrics:
        return None
    parts = []
    if "is_mean" in metrics:
        parts.append(f"IS {metrics['is_mean']:.2f} ± {metrics.get('is_std', 0.0):.2f}")
    if "fid" in metrics:
        parts.append(f"FID {metrics['fid']:.2f}")
    ref = (
        f" (the paper's StackGAN on CUB at 256 px: IS {PAPER_IS}, FID about {PAPER_FID})"
        if stage == 2
        else " (no paper number at 64 px)"
    )
    return ", ".join(parts) + ref + "."


def stacking_verdict(deltas: dict[str, float], paired: dict[str, float]) -> tuple[str, str]:
    """``(level, sentence)`` on Stage-II against Stage-I: the accuracy differences and, with
    the paired counts (``{a}_lost``, ``{a}_won``, ``{a}_sign_p``), whether they exceed chance."""
    parts = []
    for a, d in deltas.items():
        part = f"{a} {d:+.3f}"
        if f"{a}_sign_p" in paired:
            part += (
                f" ({paired[f'{a}_lost']:.0f} images right -> wrong, {paired[f'{a}_won']:.0f} "
                f"wrong -> right; sign test p = {paired[f'{a}_sign_p']:.2f})"
            )
        parts.append(part)
    said = f"against Stage-I on the same captions and noise: {', '.join(parts)}."
    counted = [a for a in deltas if f"{a}_lost" in paired and f"{a}_won" in paired]
    if counted and not any(paired[f"{a}_lost"] or paired[f"{a}_won"] for a in counted):
        said += (
            " Stage-II kept every colour decision of its Stage-I image (with "
            "model.stage2_exact_consistency it does so by construction)."
        )
    losses = [a for a, d in deltas.items() if d < 0]
    if not losses:
        return "good", said
    if all(f"{a}_sign_p" in paired for a in losses):
        significant = [a for a in losses if paired[f"{a}_sign_p"] < 0.05]
        said += (
            f" The loss in {', '.join(significant)} is more than chance (p < 0.05)."
            if significant
            else " The loss is within chance (p >= 0.05)."
        )
    return "weak", said


def stage_verdicts(
    result: StageResult, previous: StageResult | None, paired: dict[str, float] | None = None
) -> list[tuple[str, str]]:
    """The verdict lines of one stage: captions, Inception metrics, stacking (with the paired
    counts against the previous stage when given)."""
    lines: list[tuple[str, str]] = []
    metrics = result.metrics
    att = attribute_verdict(metrics)
    if att is not None:
        lines.append(att)
    inc = inception_verdict(result.stage, metrics)
    if inc is not None:
        lines.append(("info", inc))
    if previous is not None and att is not None:
        before = previous.metrics
        deltas = {
            a: metrics[f"cond_{a}_accuracy"] - before[f"cond_{a}_accuracy"]
            for a in ("body", "wing")
            if f"cond_{a}_accuracy" in before
        }
        if deltas:
            lines.append(stacking_verdict(deltas, paired or {}))
    history = result.train.get("eval_history") or []
    consistency = history[-1].get("eval.consistency_attributes") if history else None
    if consistency is not None:
        level = "good" if consistency >= 0.9 else "weak"
        lines.append((level, f"keeps its Stage-I input's attributes: agreement {consistency:.3f}."))
    if not lines:
        lines.append(("info", "no quality metric was computed for this stage."))
    return lines


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return f"<p class='missing'>({html.escape(alt)}: not written)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def metric_rows(metrics: dict[str, float], ceiling: dict[str, float]) -> str:
    """Rows of metric / value / chance / real-image ceiling / x chance."""
    rows = []
    for attr in ("body", "wing", "joint"):
        acc = metrics.get(f"cond_{attr}_accuracy")
        if acc is None:
            continue
        chance = metrics.get(f"cond_{attr}_chance", 0.0)
        real = ceiling.get(f"{attr}_accuracy")
        rows.append(
            f"<tr><td>{attr} colour accuracy</td><td>{acc:.3f}</td><td>{chance:.3f}</td>"
            f"<td>{'' if real is None else f'{real:.3f}'}</td>"
            f"<td>{f'{acc / chance:.1f}x' if chance else '-'}</td></tr>"
        )
    for key, label in (("is_mean", "Inception Score"), ("fid", "FID"), ("kid_mean", "KID")):
        if key in metrics:
            rows.append(
                f"<tr><td>{label}</td><td>{metrics[key]:.4g}</td><td></td><td></td><td></td></tr>"
            )
    if not rows:
        return ""
    return (
        "<table><tr><th>metric</th><th>value</th><th>chance</th>"
        "<th>real images</th><th>vs chance</th></tr>" + "".join(rows) + "</table>"
    )


def history_table(history: list[dict[str, Any]]) -> str:
    """The in-training evaluation points, one row per step."""
    if not history:
        return ""
    keys = [
        k
        for k in (
            "eval.body_accuracy",
            "eval.wing_accuracy",
            "eval.joint_accuracy",
            "eval.twin_fid",
            "eval.diversity",
            "eval.consistency_attributes",
            "eval.inception_fid",
        )
        if any(k in row for row in history)
    ]
    head = "".join(f"<th>{html.escape(k.removeprefix('eval.'))}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{row['step']}</td>"
        + "".join(f"<td>{_fmt(row[k]) if k in row else ''}</td>" for k in keys)
        + "</tr>"
        for row in history
    )
    return (
        "<details><summary>in-training evaluation points (test captions)</summary>"
        f"<table><tr><th>step</th>{head}</tr>{body}</table></details>"
    )


def mlflow_links(tracking_uri: str | None, run_ids: dict[str, str]) -> tuple[dict[str, str], str]:
    """UI links of the runs (name -> URL) and a note on how to open them.

    A run that the store does not know gets no link; a store that cannot be read gives no
    links and says why (the report is still written).
    """
    if not tracking_uri or not run_ids:
        return {}, "no MLflow tracking URI was given."
    base = ui_base(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        note = f"the MLflow server at {tracking_uri}."
    else:
        note = (
            f"start <code>mlflow ui --backend-store-uri {html.escape(tracking_uri)}</code> "
            "(it serves on 127.0.0.1:5000); the links then open."
        )
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        links = {}
        for name, run_id in run_ids.items():
            exp = client.get_run(run_id).info.experiment_id
            links[name] = run_url(base, exp, run_id)
    except Exception as err:  # the report must not fail on a store it cannot read
        return {}, f"the MLflow store could not be read ({type(err).__name__}: {err})."
    return links, note


def config_section(cfg: dict[str, Any]) -> str:
    """The pipeline config in short, with the full flattened config collapsed below."""
    flat = flatten(cfg)
    short = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(flat[k])}</td></tr>"
        for k in KEY_SETTINGS
        if flat.get(k) is not None
    )
    full = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(flat.items())
    )
    return (
        f"<h2>Config</h2><table>{short}</table>"
        f"<details><summary>full pipeline config ({len(flat)} settings)</summary>"
        f"<table>{full}</table></details>"
    )


def stage_section(
    result: StageResult,
    previous: StageResult | None,
    ceiling: dict[str, float],
    links: dict[str, str],
    paired: dict[str, float] | None = None,
) -> str:
    """One stage: verdict, metrics, curves, grids, MLflow links."""
    s = result.stage
    verdicts = "".join(
        f"<li class='{level}'>{html.escape(text)}</li>"
        for level, text in stage_verdicts(result, previous, paired)
    )
    train = result.train
    facts = (
        f"{train.get('steps', '?')} steps, {train.get('epochs', '?')} epochs, "
        f"global batch {train.get('global_batch', '?')}, {train.get('world_size', '?')} rank(s), "
        f"{float(train.get('seconds', 0.0)) / 60:.1f} min"
        if train
        else "not trained in this run"
    )
    evaluation = result.evaluation
    net = evaluation.get("network", {})
    eval_facts = (
        f"final evaluation of {net.get('weights', 'G')} at step {net.get('step', '?')} on "
        f"{evaluation.get('samples', '?')} samples of the test captions"
        if evaluation
        else "not evaluated"
    )
    run_links = " ".join(
        f"<a href='{html.escape(url)}'>{html.escape(name)}</a>"
        for name, url in links.items()
        if name.startswith(f"stage{s}")
    )
    skipped = "".join(
        f"<li>{html.escape(k)}: {html.escape(v)}</li>"
        for k, v in sorted(evaluation.get("skipped", {}).items())
    )
    d = result.train_dir
    return (
        f"<h2>{STAGE_NAMES.get(s, f'Stage {s}')}</h2>"
        f"<ul class='verdict'>{verdicts}</ul>"
        f"<p>{html.escape(facts)}; {html.escape(eval_facts)}."
        + (f" MLflow: {run_links}" if run_links else "")
        + "</p>"
        + metric_rows(result.metrics, ceiling)
        + (
            f"<details><summary>skipped metrics</summary><ul>{skipped}</ul></details>"
            if skipped
            else ""
        )
        + "<h3>Training curves (losses, D outputs, in-training evaluation)</h3>"
        + _img(d / "loss_curves.png" if d else None, "loss curves")
        + history_table(train.get("eval_history") or [])
        + "<h3>Samples at the end of training (fixed test captions, one row each)</h3>"
        + _img(d / "samples.png" if d else None, "training samples")
        + "<h3>Evaluation grid (test captions)</h3>"
        + _img(result.eval_dir / "grid.png" if result.eval_dir else None, "evaluation grid")
    )


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}
ul.verdict{list-style:none;padding:0}ul.verdict li{padding:4px 8px;margin:3px 0;border-radius:4px}
li.good{background:#e3f5e1}li.weak{background:#fff4d6}li.bad{background:#fde2e1}
li.info{background:#eef2f8}.missing{color:#888}code{background:#f3f3f3;padding:1px 3px}
"""


def render(
    run: str,
    summary: dict[str, Any],
    pipeline_cfg: dict[str, Any],
    stages: list[StageResult],
    ceiling: dict[str, float],
    links: dict[str, str],
    links_note: str,
) -> str:
    """The whole report page."""
    sections = []
    previous = None
    summary_metrics = summary.get("metrics", {})
    for result in sorted(stages, key=lambda r: r.stage):
        prefix = f"stage{result.stage}.vs_stage{result.stage - 1}."
        paired = {k[len(prefix) :]: v for k, v in summary_metrics.items() if k.startswith(prefix)}
        sections.append(stage_section(result, previous, ceiling, links, paired))
        previous = result
    parent = links.get("pipeline run")
    ceiling_note = (
        "real-image column: the attribute classifier on the test classes' real images."
        if ceiling
        else ""
    )
    metrics = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>"
        for k, v in sorted(summary.get("metrics", {}).items())
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>StackGAN run {html.escape(run)}</title><style>{STYLE}</style></head><body>"
        f"<h1>StackGAN run <code>{html.escape(run)}</code> "
        f"(preset <code>{html.escape(str(summary.get('preset', '?')))}</code>)</h1>"
        + (f"<p>MLflow: <a href='{html.escape(parent)}'>pipeline run</a>. " if parent else "<p>")
        + f"MLflow links: {links_note} {ceiling_note}</p>"
        + config_section(pipeline_cfg)
        + "".join(sections)
        + f"<h2>All metrics</h2><details><summary>{len(summary.get('metrics', {}))} metrics "
        "(also on the MLflow pipeline run)</summary>"
        f"<table><tr><th>metric</th><th>value</th></tr>{metrics}</table></details>"
        "</body></html>\n"
    )


def load_stages(train_files: list[Path], eval_files: list[Path]) -> list[StageResult]:
    """One :class:`StageResult` per stage from the stages' metrics JSON files."""
    by_stage: dict[int, StageResult] = {}
    for path in train_files:
        data = json.loads(path.read_text())
        result = by_stage.setdefault(int(data["stage"]), StageResult(int(data["stage"])))
        result.train, result.train_dir = data, path.parent
    for path in eval_files:
        data = json.loads(path.read_text())
        stage = int(data["network"]["stage"])
        result = by_stage.setdefault(stage, StageResult(stage))
        result.evaluation, result.eval_dir = data, path.parent
    return list(by_stage.values())


def run_ids(stages: list[StageResult], parent_file: Path | None) -> dict[str, str]:
    """MLflow run ids by display name: the pipeline run, each training and evaluation run."""
    ids = {}
    if parent_file is not None and parent_file.is_file():
        ids["pipeline run"] = parent_file.read_text().strip()
    for r in sorted(stages, key=lambda r: r.stage):
        if r.train.get("mlflow_run_id"):
            ids[f"stage{r.stage} training"] = r.train["mlflow_run_id"]
        id_file = r.eval_dir / "mlflow_run_id.txt" if r.eval_dir else None
        if id_file is not None and id_file.is_file():
            ids[f"stage{r.stage} evaluation"] = id_file.read_text().strip()
    return ids


def real_ceiling(classifier_report: Path | None) -> dict[str, float]:
    """The classifier's accuracies on the test classes' real images (empty without one)."""
    if classifier_report is None:
        return {}
    scores = json.loads(classifier_report.read_text()).get("scores", {})
    return dict(scores.get("real_test_split") or scores.get("real") or {})


def build_report(args: argparse.Namespace) -> str:
    """Read the inputs named by the command line and render the page."""
    summary = json.loads(args.summary.read_text())
    cfg = yaml.safe_load(args.pipeline_config.read_text()) or {}
    stages = load_stages(args.train, args.eval)
    links, note = mlflow_links(args.tracking_uri, run_ids(stages, args.parent_run_id_file))
    return render(
        summary.get("run", args.summary.parent.name),
        summary,
        cfg,
        stages,
        real_ceiling(args.classifier_report),
        links,
        note,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.run_report", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--summary", type=Path, required=True, help="the run's summary.json")
    p.add_argument("--pipeline-config", type=Path, required=True, help="pipeline_config.yaml")
    p.add_argument("--train", type=Path, nargs="*", default=[], help="stage metrics.json files")
    p.add_argument("--eval", type=Path, nargs="*", default=[], help="evaluation metrics.json files")
    p.add_argument("--classifier-report", type=Path, help="attribute_classifier.json (twin)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, for the run links")
    p.add_argument("--parent-run-id-file", type=Path, help="the pipeline run's id file")
    p.add_argument("--out", type=Path, required=True, help="the report (HTML)")
    args = p.parse_args(argv)
    page = build_report(args)
    with atomic_open(args.out, "w", encoding="utf-8") as fh:
        fh.write(page)
    print(f"run report -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
