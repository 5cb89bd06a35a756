"""Which run a work directory belongs to (stackgan/training/identity.py): what counts as
another run, the legacy fallback, and moving a superseded run aside without losing files."""

from __future__ import annotations

from pathlib import Path

import yaml

from stackgan.config import RunConfig, from_dict
from stackgan.training.identity import (
    RESUMABLE,
    identity_changes,
    record_identity,
    recorded_identity,
    run_identity,
    supersede,
)
from tests.helpers import run_config


def _cfg(**train: object) -> RunConfig:
    raw = run_config(2, **{"max_steps": 10, **train})
    return from_dict(RunConfig, raw)


def test_settings_and_inputs_that_make_another_run() -> None:
    base = run_identity(_cfg(), "data-a", "stage1-a")
    assert identity_changes(base, run_identity(_cfg(), "data-a", "stage1-a")) == []
    # Run length, cadence, workers: the same run, resumed.
    longer = _cfg(max_steps=50, epochs=9, log_every=7, keep_checkpoints=1, num_workers=2)
    assert identity_changes(base, run_identity(longer, "data-a", "stage1-a")) == []
    # Training settings and inputs: another run, each difference named.
    other = run_identity(_cfg(lr_g=1e-4, seed=3), "data-b", "stage1-b")
    assert identity_changes(base, other) == [
        "train.lr_g: 0.0002 -> 0.0001",
        "train.seed: 0 -> 3",
        "data.manifest_sha256: data-a -> data-b",
        "stage1.network_sha256: stage1-a -> stage1-b",
    ]
    loss = from_dict(RunConfig, {**run_config(2, max_steps=10), "loss": {"r1_gamma": 1.0}})
    assert identity_changes(base, run_identity(loss, "data-a", "stage1-a")) == [
        "loss.r1_gamma: 0.0 -> 1.0"
    ]
    assert all(k.startswith("train.") for k in RESUMABLE)
    assert not RESUMABLE & set(base["config"])


def test_recorded_identity_round_trips_and_falls_back_to_the_run_config(tmp_path: Path) -> None:
    assert recorded_identity(tmp_path) is None
    ident = run_identity(_cfg(betas=[0.5, 0.999]), "d", None)
    record_identity(tmp_path / "w", ident)
    assert recorded_identity(tmp_path / "w") == ident  # lists and tuples compare equal
    # A work directory from before identities: its run_config.yaml speaks for its states,
    # and inputs it never recorded are not compared.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "run_config.yaml").write_text(yaml.safe_dump(run_config(2, max_steps=10)))
    assert recorded_identity(legacy) is None  # no states: nothing to resume
    (legacy / "training-state-00000004.pt").write_bytes(b"x")
    old = recorded_identity(legacy)
    assert old is not None and old["inputs"] == {}
    assert identity_changes(old, run_identity(_cfg(), "d", "s")) == []
    assert identity_changes(old, run_identity(_cfg(seed=5), "d", "s")) == ["train.seed: 0 -> 5"]


def test_supersede_moves_everything_aside_and_never_overwrites(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "samples").mkdir(parents=True)
    for name in ("training-state-00000010.pt", "metrics.jsonl", "run_identity.json"):
        (work / name).write_text(name)
    (work / "samples" / "grid.png").write_text("png")
    first = supersede(work)
    assert sorted(p.name for p in work.iterdir()) == ["superseded"]
    assert (first / "training-state-00000010.pt").read_text() == "training-state-00000010.pt"
    assert (first / "samples" / "grid.png").read_text() == "png"
    (work / "metrics.jsonl").write_text("second")
    second = supersede(work)  # within the same second: its own directory
    assert second != first and (second / "metrics.jsonl").read_text() == "second"
    assert (first / "metrics.jsonl").read_text() == "metrics.jsonl"
    assert second.parent == first.parent == work / "superseded"


def test_an_unreadable_record_counts_as_another_run(tmp_path: Path) -> None:
    """A corrupt run_identity.json or a legacy run_config.yaml that no longer parses cannot
    show that the states are this run's: the job sees a difference (and, in the pipeline,
    moves them aside) instead of failing with a traceback."""
    current = run_identity(_cfg(), "d", None)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "run_identity.json").write_text('{"config": ')
    changes = identity_changes(recorded_identity(corrupt), current)
    assert len(changes) == 1 and changes[0].startswith("(unreadable record): ")
    (corrupt / "run_identity.json").write_text("[]")
    (change,) = identity_changes(recorded_identity(corrupt), current)
    assert "expected an object with a 'config' object" in change
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "run_config.yaml").write_text(yaml.safe_dump({**run_config(2), "bogus": 1}))
    (legacy / "training-state-00000002.pt").write_bytes(b"x")
    changes = identity_changes(recorded_identity(legacy), current)
    assert len(changes) == 1 and "bogus" in changes[0], changes
