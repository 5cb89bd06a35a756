"""The run report (pipeline/run_report.py): verdicts, the metrics beside chance and the
real-image ceiling, an offline page, and links into a real MLflow store."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import run_report as rr


def _metrics(body: float, wing: float, chance: float = 0.1) -> dict[str, float]:
    return {
        "cond_body_accuracy": body,
        "cond_body_chance": chance,
        "cond_wing_accuracy": wing,
        "cond_wing_chance": chance,
        "cond_joint_accuracy": body * wing,
        "cond_joint_chance": chance * chance,
    }


@pytest.mark.parametrize(
    ("body", "wing", "level"),
    [(0.8, 0.35, "good"), (0.8, 0.29, "weak"), (0.16, 0.1, "weak"), (0.14, 0.12, "bad")],
)
def test_attribute_verdict_levels(body: float, wing: float, level: str) -> None:
    got, sentence = rr.attribute_verdict(_metrics(body, wing))
    assert got == level, sentence
    assert f"body {body / 0.1:.1f}x chance" in sentence and f"wing {wing / 0.1:.1f}x" in sentence


def test_attribute_verdict_without_metrics_or_chance() -> None:
    assert rr.attribute_verdict({"fid": 30.0}) is None
    level, sentence = rr.attribute_verdict(_metrics(0.5, 0.5, chance=0.0))
    assert level == "info" and "no verdict" in sentence


def test_stage2_verdicts_compare_with_stage1_and_report_consistency() -> None:
    s1 = rr.StageResult(1, evaluation={"metrics": _metrics(0.80, 0.40)})
    s2 = rr.StageResult(
        2,
        train={"eval_history": [{"step": 10, "eval.consistency_attributes": 0.95}]},
        evaluation={"metrics": _metrics(0.79, 0.42)},
    )
    lines = rr.stage_verdicts(s2, s1)
    texts = [t for _, t in lines]
    assert lines[0][0] == "good"
    # Body fell by 0.01: "weak", with both signed differences stated.
    assert (
        "weak",
        "against Stage-I on the same captions and noise: body -0.010, wing +0.020.",
    ) in (lines), texts
    assert ("good", "keeps its Stage-I input's attributes: agreement 0.950.") in lines, texts
    better = rr.StageResult(2, evaluation={"metrics": _metrics(0.81, 0.40)})
    assert rr.stage_verdicts(better, s1)[1][0] == "good"


def test_stacking_verdict_says_whether_a_loss_is_more_than_chance() -> None:
    s1 = rr.StageResult(1, evaluation={"metrics": _metrics(0.740, 0.3835)})
    s2 = rr.StageResult(2, evaluation={"metrics": _metrics(0.736, 0.3897)})
    paired = {"body_lost": 55.0, "body_won": 41.0, "body_sign_p": 0.184}
    paired.update({"wing_lost": 46.0, "wing_won": 71.0, "wing_sign_p": 0.026})
    level, text = rr.stage_verdicts(s2, s1, paired)[1]
    assert level == "weak", text
    assert "body -0.004 (55 images right -> wrong, 41 wrong -> right; sign test p = 0.18)" in text
    assert "wing +0.006 (46 images right -> wrong, 71 wrong -> right; sign test p = 0.03)" in text
    assert text.endswith("The loss is within chance (p >= 0.05)."), text
    paired["body_sign_p"] = 0.04
    assert rr.stage_verdicts(s2, s1, paired)[1][1].endswith(
        "The loss in body is more than chance (p < 0.05)."
    )
    # No loss: good, and no sentence about chance.
    level, text = rr.stacking_verdict({"body": 0.0, "wing": 0.01}, paired)
    assert level == "good" and "chance" not in text and "kept every" not in text, text
    # Nothing moved (model.stage2_exact_consistency): said so.
    unmoved = {f"{a}_{k}": 0.0 for a in ("body", "wing") for k in ("lost", "won")}
    unmoved.update(body_sign_p=1.0, wing_sign_p=1.0)
    level, text = rr.stacking_verdict({"body": 0.0, "wing": 0.0}, unmoved)
    assert level == "good" and "kept every colour decision" in text, text


def test_inception_verdict_names_the_paper_numbers_at_256_px() -> None:
    text = rr.inception_verdict(2, {"is_mean": 3.1, "is_std": 0.05, "fid": 60.0})
    assert "IS 3.10 ± 0.05" in text and "FID 60.00" in text and rr.PAPER_IS in text
    assert "no paper number" in rr.inception_verdict(1, {"fid": 80.0})
    assert rr.inception_verdict(2, _metrics(0.5, 0.5)) is None


def test_metric_rows_put_chance_and_ceiling_beside_each_accuracy() -> None:
    table = rr.metric_rows(_metrics(0.8, 0.4), {"body_accuracy": 0.99, "wing_accuracy": 0.98})
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows[1:]]
    assert cells[0] == ["body colour accuracy", "0.800", "0.100", "0.990", "8.0x"]
    assert cells[1] == ["wing colour accuracy", "0.400", "0.100", "0.980", "4.0x"]
    assert cells[2][0] == "joint colour accuracy" and cells[2][3] == ""  # no ceiling given
    assert rr.metric_rows({}, {}) == ""


def _png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def _run_dir(tmp: Path, run_ids: dict[str, str] | None = None) -> dict[str, Path]:
    """A pipeline run's files as the rules write them (two stages, evaluated)."""
    files: dict[str, Path] = {}
    run = tmp / "results" / "demo"
    for stage in (1, 2):
        train, ev = run / f"stage{stage}", run / "eval" / f"stage{stage}"
        train.mkdir(parents=True)
        ev.mkdir(parents=True)
        _png(train / "loss_curves.png", 10 * stage)
        _png(train / "samples.png", 20 * stage)
        _png(ev / "grid.png", 30 * stage)
        history = [{"step": 50, "eval.body_accuracy": 0.5, "eval.twin_fid": 20.0}]
        if stage == 2:
            history[0]["eval.consistency_attributes"] = 0.97
        train_id = (run_ids or {}).get(f"stage{stage}")
        (train / "metrics.json").write_text(
            json.dumps(
                {
                    "stage": stage,
                    "steps": 100,
                    "epochs": 2,
                    "global_batch": 32,
                    "world_size": 1,
                    "seconds": 90.0,
                    "eval_history": history,
                    **({"mlflow_run_id": train_id} if train_id else {}),
                }
            )
        )
        (ev / "metrics.json").write_text(
            json.dumps(
                {
                    "network": {"stage": stage, "step": 100, "weights": "G_ema"},
                    "samples": 400,
                    "metrics": _metrics(0.78 + 0.01 * stage, 0.35),
                    "skipped": {"fid": "no Inception weights given"},
                }
            )
        )
        if (run_ids or {}).get(f"eval{stage}"):
            (ev / "mlflow_run_id.txt").write_text(run_ids[f"eval{stage}"] + "\n")
        files[f"train{stage}"], files[f"eval{stage}"] = train / "metrics.json", ev / "metrics.json"
    (run / "summary.json").write_text(
        json.dumps(
            {"run": "demo", "preset": "demo", "metrics": {"stage1.cond_body_accuracy": 0.79}}
        )
    )
    (run / "pipeline_config.yaml").write_text(
        yaml.safe_dump({"preset": "demo", "data": {"source": "twin"}, "train": {"seed": 3}})
    )
    (run / "classifier.json").write_text(
        json.dumps({"scores": {"real_test_split": {"body_accuracy": 0.99, "wing_accuracy": 0.985}}})
    )
    (run / "mlflow").mkdir()
    if run_ids and run_ids.get("parent"):
        (run / "mlflow" / "parent_run_id.txt").write_text(run_ids["parent"] + "\n")
    files.update(run=run, summary=run / "summary.json", cfg=run / "pipeline_config.yaml")
    files.update(classifier=run / "classifier.json", parent=run / "mlflow" / "parent_run_id.txt")
    return files


def _argv(f: dict[str, Path], out: Path, uri: str | None) -> list[str]:
    argv = ["--summary", str(f["summary"]), "--pipeline-config", str(f["cfg"])]
    argv += ["--train", str(f["train1"]), str(f["train2"])]
    argv += ["--eval", str(f["eval1"]), str(f["eval2"])]
    argv += ["--classifier-report", str(f["classifier"]), "--out", str(out)]
    argv += ["--parent-run-id-file", str(f["parent"])]
    return argv + (["--tracking-uri", uri] if uri else [])


def test_report_is_one_offline_page_with_every_picture(tmp_path: Path) -> None:
    f = _run_dir(tmp_path)
    out = f["run"] / "report.html"
    assert rr.main(_argv(f, out, None)) == 0
    page = out.read_text(encoding="utf-8")
    # Every picture is embedded byte for byte, in stage order; nothing is fetched.
    srcs = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    want = [
        f["run"] / sub / name
        for s in (1, 2)
        for sub, name in (
            (f"stage{s}", "loss_curves.png"),
            (f"stage{s}", "samples.png"),
            (f"eval/stage{s}", "grid.png"),
        )
    ]
    assert [base64.b64decode(s) for s in srcs] == [p.read_bytes() for p in want]
    assert "<script" not in page and "<link" not in page and "http" not in page
    assert page.index("Stage-I (64 px)") < page.index("Stage-II (256 px)")
    assert "follows its captions: body 7.9x chance, wing 3.5x chance." in page
    assert "<td>train.seed</td><td>3</td>" in page  # the config in short
    assert "<td>0.990</td>" in page and "<td>0.985</td>" in page  # real-image ceiling
    assert "keeps its Stage-I input&#x27;s attributes: agreement 0.970." in page
    assert "no MLflow tracking URI was given." in page
    assert not list(out.parent.glob("*.tmp*")), "no temporary file is left behind"


def test_report_links_to_the_runs_in_a_real_mlflow_store(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("stackgan-demo", artifact_location=str(tmp_path / "art"))
    ids = {k: client.create_run(exp).info.run_id for k in ("parent", "stage1", "stage2", "eval1")}
    f = _run_dir(tmp_path, ids)
    out = tmp_path / "report.html"
    assert rr.main(_argv(f, out, uri)) == 0
    page = out.read_text()
    for key in ("parent", "stage1", "stage2", "eval1"):
        assert f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{ids[key]}" in page, key
    assert "mlflow ui --backend-store-uri" in page
    assert "stage2 evaluation" not in page  # that run has no id file: no link

    # A run the store does not know: no links, a reason, and the page is still written.
    ids["stage1"] = "0" * 32
    f2 = _run_dir(tmp_path / "other", ids)
    assert rr.main(_argv(f2, out, uri)) == 0
    page = out.read_text()
    assert "/#/experiments/" not in page and "could not be read" in page
