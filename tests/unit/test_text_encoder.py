"""Text encoders (stackgan/text) and ``stackgan embed``: the twin encoder is the twin
generator's own function, its stored embeddings are reproduced bit for bit, and bad input
gets clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stackgan.cli import embed as embed_cli
from stackgan.data import twin
from stackgan.data.pickles import load_pickle, materialize
from stackgan.text.encoder import check_captions, load_encoder, read_caption_file
from stackgan.text.twin import TwinTextEncoder, embed_caption

SENTENCES = [
    "a small bird with red wings and a blue belly.",
    "This LARGE bird has a yellow body and black wings!",
    "an orange bird with brown wings",
]


def test_twin_encoder_is_the_twin_function_in_float32() -> None:
    enc = load_encoder("twin")
    emb = enc.encode(SENTENCES)
    assert emb.dtype == np.float32 and emb.shape == (3, 1024)
    want = np.stack([embed_caption(s) for s in SENTENCES]).astype(np.float32)
    assert np.array_equal(emb, want)
    assert (enc.name, enc.version, enc.dim) == ("twin", "1", 1024)
    assert enc.sha256 == TwinTextEncoder().sha256 and len(enc.sha256) == 64
    assert enc.encode([]).shape == (0, 1024)
    # Deterministic and sensitive to what the caption says.
    assert np.array_equal(enc.encode(SENTENCES[:1]), emb[:1])
    swapped = enc.encode(["a small bird with blue wings and a red belly."])
    assert not np.allclose(swapped, emb[:1])


def test_stored_twin_embeddings_are_the_encoder_plus_seeded_noise(tiny_twin: Path) -> None:
    """The twin's birds-bundle rows = the encoder's float64 output + the generator's
    per-image noise (same seed), bit for bit; without the noise, what `embed` gives."""
    spec = twin.TwinSpec(num_classes=8, images_per_class=5, seed=0, min_side=96, max_side=200)
    enc = TwinTextEncoder()
    checked = 0
    for split in ("train", "test"):
        keys = materialize(load_pickle(tiny_twin / split / "filenames.pickle"))
        stored = materialize(load_pickle(tiny_twin / split / "char-CNN-RNN-embeddings.pickle"))
        plan = {key: (c, iid) for c, iid, _, key in twin._plan(spec)}
        for key, rows in zip(keys, stored, strict=True):
            c, iid = plan[key]
            rng = np.random.default_rng([spec.seed, iid, 1])
            captions = list(twin.make_captions(c, rng))
            on_disk = (tiny_twin / "text_c10" / f"{key}.txt").read_text().splitlines()
            assert on_disk == captions
            noisy = enc.encode_float64(captions) + rng.normal(0.0, spec.noise, (10, 1024))
            assert np.array_equal(np.asarray(rows), noisy.astype(np.float32)), key
            clean = enc.encode(captions)
            assert 0 < np.abs(np.asarray(rows) - clean).max() < 0.2  # only the noise differs
            checked += 1
    assert checked == 40


def test_unknown_encoders_and_unconverted_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown text encoder; available: twin, char-cnn-rnn"):
        load_encoder("bert")
    with pytest.raises(ValueError, match="give the converted weights file"):
        load_encoder("char-cnn-rnn")
    with pytest.raises(ValueError, match="never loaded directly; convert it first"):
        load_encoder("char-cnn-rnn:lm_sje_cub.t7")
    with pytest.raises(ValueError, match="cannot read"):
        load_encoder(f"char-cnn-rnn:{tmp_path / 'missing.pt'}")


def test_captions_are_checked(tmp_path: Path) -> None:
    assert check_captions(["  a red bird. "], "x") == ["a red bird."]
    with pytest.raises(ValueError, match="no caption given"):
        check_captions([], "x")
    with pytest.raises(ValueError, match="caption 2 is empty"):
        check_captions(["a red bird", "   "], "x")
    with pytest.raises(ValueError, match="caption 1 has 1001 characters"):
        check_captions(["a" * 1001], "x")
    f = tmp_path / "caps.txt"
    f.write_bytes(b"a red bird\n\nblue wings\n\xff\xfe bad\n")
    with pytest.raises(ValueError, match=r"caps.txt: line 4 is not UTF-8"):
        read_caption_file(str(f))
    f.write_text("a red bird\n\n  blue wings  \n", encoding="utf-8")
    assert read_caption_file(str(f)) == ["a red bird", "  blue wings  "]


def test_embed_command_writes_rows_and_the_encoder_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captions = tmp_path / "more.txt"
    captions.write_text(SENTENCES[2] + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    argv = ["--encoder", "twin", "--text", SENTENCES[0], "--text", SENTENCES[1]]
    assert embed_cli.main([*argv, "--text-file", str(captions), "--out", str(out)]) == 0
    rows = np.load(out)
    assert np.array_equal(rows, TwinTextEncoder().encode(SENTENCES))
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["captions"] == SENTENCES and record["shape"] == [3, 1024]
    assert record["encoder"] == {
        "name": "twin",
        "version": "1",
        "sha256": TwinTextEncoder().sha256,
        "dim": 1024,
    }
    assert "embedded 3 caption(s) with twin" in capsys.readouterr().out

    # Bad input: one line on stderr naming what is wrong, exit 2, nothing written.
    bad = tmp_path / "bad.npy"
    assert embed_cli.main(["--encoder", "twin", "--text", " ", "--out", str(bad)]) == 2
    assert "caption 1 is empty" in capsys.readouterr().err and not bad.exists()
    assert embed_cli.main(["--encoder", "twin", "--text", "x", "--out", str(tmp_path / "e")]) == 2
    assert "expected a .npy file name" in capsys.readouterr().err


def test_twin_bundle_embeddings_are_unchanged_by_the_encoder_interface(tiny_twin: Path) -> None:
    """The twin generator embeds through TwinTextEncoder; its pickles keep the bytes they
    had before the encoder moved out of the generator (sha256 recorded from that code)."""
    import hashlib

    recorded = {
        "train": "9f337fda1ea144408cb5792f0a0e8854ae3f77e3007e768cfa78f0b6a57f8a10",
        "test": "76a0cfd1fcd8484814ea7adc60e4156c8cbd29da35ed013376bdfa2afabbb4ae",
    }
    for split, digest in recorded.items():
        data = (tiny_twin / split / "char-CNN-RNN-embeddings.pickle").read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, split


def test_shards_can_take_their_embeddings_from_a_text_encoder(
    tiny_twin: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """build_shards(text_encoder="twin"): the index and the shards hold the encoder's rows of
    each image's captions (not the bundle's noisy ones); the manifest records it. Without
    the option the manifests do not mention it (the default keeps its bytes)."""
    import h5py

    from stackgan.data.cub import DataPaths
    from stackgan.data.shards import ShardOptions, build_shards

    opts = ShardOptions(workers=1, min_shards=4, text_encoder="twin")
    build_shards(DataPaths.from_root(tiny_twin), tmp_path, opts, ["test"], progress=False)
    with h5py.File(tmp_path / "test-index.h5", "r") as h5:
        emb = h5["embeddings"][:]
        rows = h5["captions"][:]
    captions = [[c.decode() if isinstance(c, bytes) else c for c in row] for row in rows]
    enc = TwinTextEncoder()
    want = np.stack([enc.encode(row) for row in captions])
    assert np.array_equal(emb, want)
    manifest = json.loads((tmp_path / "test-64" / "manifest.json").read_text())
    assert manifest["preprocessing"]["text_encoder"] == "twin"
    assert not [k for k in manifest["inputs"] if "char-CNN-RNN-embeddings" in k]  # not read
    default = json.loads((tiny_shards / "test-64" / "manifest.json").read_text())
    assert "text_encoder" not in default["preprocessing"]
    with h5py.File(tiny_shards / "test-index.h5", "r") as h5:
        assert not np.array_equal(h5["embeddings"][:], want)  # the bundle's rows carry noise
