"""The paired Stage-II/Stage-I comparison (stackgan/evaluation/attributes/paired.py): the sign
test against scipy, the counts on constructed predictions, and the comparison of two real
activation caches on a real test index, with its errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binomtest

from stackgan.data.index import SplitIndex
from stackgan.evaluation.activations import write_cache
from stackgan.evaluation.attributes.paired import (
    compare_evaluations,
    paired_changes,
    read_predictions,
    sign_test_p,
)
from stackgan.evaluation.attributes.score import attribute_labels


@pytest.mark.parametrize(
    ("won", "lost"), [(41, 55), (55, 31), (35, 55), (0, 7), (3, 3), (1, 0), (200, 240)]
)
def test_sign_test_matches_scipy(won: int, lost: int) -> None:
    assert sign_test_p(won, lost) == pytest.approx(binomtest(won, won + lost).pvalue, rel=1e-12)
    assert sign_test_p(won, lost) == sign_test_p(lost, won)


def test_sign_test_edge_cases() -> None:
    assert sign_test_p(0, 0) == 1.0
    with pytest.raises(ValueError, match="won=-1"):
        sign_test_p(-1, 2)


def test_paired_changes_count_each_direction_and_skip_unnamed_colours() -> None:
    wanted = np.array([[0, 1], [2, 3], [4, 5], [6, -1], [1, 1]])
    before = np.array([[0, 1], [2, 0], [0, 5], [6, 9], [1, 0]])
    after = np.array([[0, 0], [0, 3], [4, 5], [0, 9], [1, 1]])
    got = paired_changes(before, after, wanted)
    # body: rows 1 and 3 right -> wrong, row 2 wrong -> right; wing: row 0 lost, rows 1, 4 won,
    # row 3 names no wing colour and is left out.
    assert got["body_lost"] == 2 and got["body_won"] == 1
    assert got["wing_lost"] == 1 and got["wing_won"] == 2
    assert got["body_sign_p"] == sign_test_p(1, 2) == 1.0
    # The counts give the accuracy difference exactly.
    ok = wanted[:, 0] >= 0
    diff = (after[ok, 0] == wanted[ok, 0]).mean() - (before[ok, 0] == wanted[ok, 0]).mean()
    assert (got["body_won"] - got["body_lost"]) / ok.sum() == pytest.approx(diff)
    with pytest.raises(ValueError, match=r"equal \[N, 2\] shapes"):
        paired_changes(before[:3], after, wanted)


def _cache(path: Path, attributes: np.ndarray, rows: np.ndarray, seed: int = 100) -> Path:
    requests = SimpleNamespace(image_index=rows, caption_index=np.arange(len(rows)) % 2)
    meta = {"network_sha256": "x", "protocol": {"seed": seed, "captions_per_image": 2}}
    write_cache(
        path, {"attributes": attributes, "features": np.zeros((len(rows), 3))}, meta, requests
    )
    return path


def test_compare_evaluations_on_real_caches_and_index(tiny_shards: Path, tmp_path: Path) -> None:
    index = tiny_shards / "test-index.h5"
    with SplitIndex(index) as idx:
        n = idx.num_images
    rows = np.repeat(np.arange(n), 2)
    with SplitIndex(index) as idx:
        wanted = attribute_labels(idx.caption_pairs(rows, np.arange(len(rows)) % 2))
    rng = np.random.default_rng(0)
    before = np.where(rng.random(wanted.shape) < 0.6, wanted, (wanted + 1) % 10)
    after = np.where(rng.random(wanted.shape) < 0.6, wanted, (wanted + 2) % 10)
    a = _cache(tmp_path / "s1.h5", before, rows)
    b = _cache(tmp_path / "s2.h5", after, rows)
    got = compare_evaluations(a, b, index)
    assert got == paired_changes(before, after, wanted)
    assert got["body_lost"] + got["body_won"] > 0
    assert read_predictions(a).protocol == {"seed": 100, "captions_per_image": 2}

    # Another noise seed, other captions, another index, no classifier, no file: said plainly.
    with pytest.raises(ValueError, match="different evaluation protocols or captions"):
        compare_evaluations(a, _cache(tmp_path / "seed.h5", after, rows, seed=1), index)
    with pytest.raises(ValueError, match="different evaluation protocols or captions"):
        compare_evaluations(a, _cache(tmp_path / "rows.h5", after, rows[::-1].copy()), index)
    too_far = _cache(tmp_path / "far.h5", before, rows + n)
    with pytest.raises(ValueError, match=r"another test index\?"):
        compare_evaluations(too_far, too_far, index)
    bare = tmp_path / "bare.h5"
    requests = SimpleNamespace(image_index=rows, caption_index=rows * 0)
    write_cache(bare, {"features": np.zeros((len(rows), 3))}, {"protocol": {}}, requests)
    assert read_predictions(bare) is None and compare_evaluations(a, bare, index) is None
    with pytest.raises(FileNotFoundError, match=r"nothing\.h5: no activation cache"):
        compare_evaluations(a, tmp_path / "nothing.h5", index)


def test_summarize_reports_incomparable_evaluations_in_one_line(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run by hand on evaluations made with different protocols, ``pipeline.summarize`` says
    which files disagree (no traceback) and writes no summary."""
    import json

    from pipeline.summarize import main

    index = tiny_shards / "test-index.h5"
    with SplitIndex(index) as idx:
        rows = np.repeat(np.arange(idx.num_images), 2)
    attributes = np.zeros((len(rows), 2), dtype=np.int64)
    evals = []
    for stage, seed in ((1, 100), (2, 7)):
        folder = tmp_path / f"stage{stage}"
        folder.mkdir()
        _cache(folder / "activations.h5", attributes, rows, seed=seed)
        metrics = {"network": {"stage": stage}, "metrics": {}, "samples": 1, "skipped": {}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        evals.append(str(folder / "metrics.json"))
    out = tmp_path / "summary.json"
    argv = ["--run", "r", "--preset", "demo", "--eval", *evals, "--index", str(index)]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("summarize: ") and "different evaluation protocols" in err
    assert "stage1/activations.h5 and " in err and "stage2/activations.h5" in err
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists()
