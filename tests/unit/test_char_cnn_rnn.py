"""The Reed et al. hybrid char-CNN-GRU encoder (stackgan/text/char_cnn_rnn.py) and its .t7
converter (stackgan/text/t7_convert.py): the Lua preprocessing character by character, and a
random Torch7 file (written by tests/t7_writer.py) converted and checked against an
independent numpy implementation of the Torch modules' math."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stackgan.text.char_cnn_rnn import (
    ALPHABET,
    CUB_ARCH,
    DOC_LENGTH,
    FORMAT,
    CharCnnRnnEncoder,
    encode_text,
)
from stackgan.text.t7_convert import convert_t7
from tests import t7_writer as t7

pytest.importorskip("torchfile")

# The alphabet exactly as the Lua source spells it (txt2img_demo.lua, donkey_folder_txt.lua).
LUA_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} "

CAPTIONS = [
    "this bird has a red crown, a white belly and black wings.",
    "A Small BIRD with Yellow wings; its beak is short & pointed!",
    "café-au-lait coloured bird\twith ünknown ÇHARS ~ {braces} [x] (y) <z> 100%",
    ("a very long caption about a bird with many words " * 6).strip(),
    "-",
    "",
]


# --- an independent reference: the Lua rules and the Torch modules in numpy ---------------


def lua_onehot(text: str) -> np.ndarray:
    """txt2img_demo.lua: dict[alphabet:sub(i,i)] = i; txt[t][dict[str:sub(t,t)]] = 1."""
    lua_dict = {}
    for i in range(1, len(LUA_ALPHABET) + 1):
        lua_dict[LUA_ALPHABET.encode()[i - 1 : i]] = i
    data = text.encode("utf-8")
    out = np.zeros((201, len(LUA_ALPHABET)))
    for t in range(1, 202):
        ix = lua_dict.get(data[t - 1 : t])  # Lua's str:sub(t, t): one byte, or "" past the end
        if ix is not None:
            out[t - 1, ix - 1] = 1
    return out


def np_temporal_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """nn.TemporalConvolution (dW 1): out[t] = b + w @ concat(x[t], ..., x[t + kW - 1])."""
    kw = w.shape[1] // x.shape[1]
    frames = [x[t : t + kw].reshape(-1) for t in range(x.shape[0] - kw + 1)]
    return np.stack(frames) @ w.T.astype(np.float64) + b


def np_threshold(x: np.ndarray, th: float = 1e-6, val: float = 0.0) -> np.ndarray:
    """nn.Threshold: x if x > th else val."""
    return np.where(x > th, x, val)


def np_temporal_max_pool(x: np.ndarray, kw: int, dw: int) -> np.ndarray:
    """nn.TemporalMaxPooling(kW, dW): out[t] = max over x[t*dW : t*dW + kW]."""
    n = (x.shape[0] - kw) // dw + 1
    return np.stack([x[t * dw : t * dw + kw].max(axis=0) for t in range(n)])


def np_linear(x: np.ndarray, wb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return x @ wb[0].T.astype(np.float64) + wb[1]


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_fixed_gru(xs: np.ndarray, g: dict[str, Any], avg: bool) -> np.ndarray:
    """FixedGRU.lua, step by step."""
    hids = [np.tanh(np_linear(xs[0], g["i2h"]))]
    for x in xs[1:]:
        h = hids[-1]
        update = np_sigmoid(np_linear(x, g["i2h_update"]) + np_linear(h, g["h2h_update"]))
        reset = np_sigmoid(np_linear(x, g["i2h_reset"]) + np_linear(h, g["h2h_reset"]))
        cand = np.tanh(np_linear(x, g["i2h"]) + np_linear(reset * h, g["h2h"]))
        hids.append(update * cand + (1 - update) * h)
    return sum(hids) / len(hids) if avg else hids[-1]


def np_hybrid(text: str, w: dict[str, Any], avg: bool = True) -> np.ndarray:
    x = lua_onehot(text)
    x = np_temporal_max_pool(np_threshold(np_temporal_conv(x, *w["conv1"])), 3, 3)
    x = np_temporal_max_pool(np_threshold(np_temporal_conv(x, *w["conv2"])), 3, 3)
    x = np_threshold(np_temporal_conv(x, *w["conv3"]))  # SplitTable(2): 18 frames
    return np_linear(np_fixed_gru(x, w["gru"], avg), w["proj"])


# --- preprocessing ----------------------------------------------------------------------


def test_alphabet_and_length_are_the_lua_ones() -> None:
    assert ALPHABET == LUA_ALPHABET and len(ALPHABET) == 70 and DOC_LENGTH == 201
    assert [i for i, c in enumerate(ALPHABET) if c == "-"] == [36, 59]
    assert encode_text("x").shape == (201, 70) and encode_text("x").dtype == torch.float32


def test_every_byte_is_encoded_as_the_lua_does() -> None:
    for code in range(256):
        ch = bytes([code]).decode("latin-1")
        got = encode_text(ch).numpy() if code < 128 else None
        if got is None:
            continue
        want = lua_onehot(ch)
        assert np.array_equal(got, want), repr(ch)
        if ch in ALPHABET:
            # The column is the character's LAST position in the alphabet ("-" -> 60th).
            assert got[0].argmax() == ALPHABET.rindex(ch) and got.sum() == 1, repr(ch)
        else:
            assert got.sum() == 0, repr(ch)  # upper case, tab, newline, ...: all zero
    assert encode_text("-").numpy()[:, 36].sum() == 0  # the first "-" column is never set
    for upper in "ABCXYZ":
        assert encode_text(upper).sum() == 0  # no lower-casing


def test_non_ascii_characters_take_one_zero_column_per_utf8_byte() -> None:
    got = encode_text("éa").numpy()  # "é" is two UTF-8 bytes, as Lua's str:sub sees it
    assert got[0].sum() == 0 and got[1].sum() == 0
    assert got[2].argmax() == 0 and got[2].sum() == 1 and got[3:].sum() == 0


def test_truncation_and_padding() -> None:
    long = "".join(LUA_ALPHABET[i % 36] for i in range(250))
    got = encode_text(long).numpy()
    assert np.array_equal(got, lua_onehot(long)) and got.sum() == 201
    assert np.array_equal(got, encode_text(long[:201]).numpy())
    short = encode_text("ab c").numpy()
    assert short[:4].sum() == 4 and short[2].argmax() == 69  # the space is a character
    assert short[4:].sum() == 0  # padding is all-zero columns, not spaces
    assert encode_text("").sum() == 0
    for text in CAPTIONS:
        assert np.array_equal(encode_text(text).numpy(), lua_onehot(text))


# --- conversion and the network ---------------------------------------------------------


def _convert(tmp_path: Path, obj: Any, name: str = "model.t7") -> tuple[dict, Path]:
    src = tmp_path / name
    t7.save_t7(obj, src)
    return convert_t7(src, tmp_path / "model.pt"), tmp_path / "model.pt"


@pytest.mark.parametrize("wrap, avg", [(True, True), (False, False)])
def test_converted_small_model_matches_numpy_reference(tmp_path: Path, wrap: bool, avg: bool):
    enc_doc, weights = t7.hybrid_model(
        np.random.default_rng(1), conv_dims=(16, 24, 12), emb_dim=20, avg=avg, scale=4.0
    )
    info, out = _convert(tmp_path, t7.checkpoint(enc_doc) if wrap else enc_doc)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == FORMAT == "stackgan-text-encoder/1"
    assert (
        payload["source_name"] == "model.t7" and payload["source_sha256"] == info["source_sha256"]
    )
    arch = payload["arch"]
    assert arch == CUB_ARCH | {"conv_dims": [16, 24, 12], "emb_dim": 20, "average": avg}
    encoder = CharCnnRnnEncoder.load(out)
    assert (encoder.name, encoder.dim, encoder.sha256) == ("char-cnn-rnn", 20, info["sha256"])
    got = encoder.encode(CAPTIONS)
    assert got.dtype == np.float32 and got.shape == (len(CAPTIONS), 20)
    want = np.stack([np_hybrid(c, weights, avg) for c in CAPTIONS])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want[0] - want[1]).max() > 1e-3  # the captions give different embeddings
    assert encoder.encode([]).shape == (0, 20)


def test_converted_full_size_model_has_the_cub_arch(tmp_path: Path) -> None:
    enc_doc, weights = t7.hybrid_model(np.random.default_rng(2))
    info, out = _convert(tmp_path, t7.checkpoint(enc_doc))
    assert info["arch"] == CUB_ARCH
    encoder = CharCnnRnnEncoder.load(out)
    got = encoder.encode(CAPTIONS[:3])
    assert got.shape == (3, 1024)
    want = np.stack([np_hybrid(c, weights) for c in CAPTIONS[:3]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- refusals ---------------------------------------------------------------------------


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    enc_doc, _ = t7.hybrid_model(np.random.default_rng(3), conv_dims=(8, 8, 8), emb_dim=8)
    data = t7.save_t7(t7.checkpoint(enc_doc), tmp_path / "full.t7")
    for cut in (3, 100, len(data) // 2, len(data) - 9, len(data) - 1):
        bad = tmp_path / f"cut{cut}.t7"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.t7: truncated or corrupt"):
            convert_t7(bad, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    (tmp_path / "long.t7").write_bytes(data + b"\0")
    with pytest.raises(ValueError, match="trailing bytes"):
        convert_t7(tmp_path / "long.t7", tmp_path / "out.pt")


def test_a_truncated_final_storage_is_refused(tmp_path: Path) -> None:
    # The very last object is a storage: torchfile alone would return a short array.
    data = t7.save_t7(t7.Tensor.of(np.arange(6, dtype=np.float32)), tmp_path / "t.t7")
    (tmp_path / "t.t7").write_bytes(data[:-4])
    with pytest.raises(ValueError, match=r"truncated or corrupt.*cut short"):
        convert_t7(tmp_path / "t.t7", tmp_path / "out.pt")


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    lone = t7.linear(np.random.default_rng(4), 8, 4)
    with pytest.raises(ValueError, match=r"lone\.t7: the file holds nn\.Linear, not the hybrid"):
        _convert(tmp_path, lone, "lone.t7")
    enc_doc, _ = t7.hybrid_model(np.random.default_rng(5), conv_dims=(8, 8, 8), emb_dim=8)
    enc_doc.fields["modules"][1].fields["modules"].append(t7._module("nn.Tanh"))
    with pytest.raises(ValueError, match=r"module 1 \(nn\.Sequential\): holds .*another arch"):
        _convert(tmp_path, enc_doc)
    enc_doc, _ = t7.hybrid_model(np.random.default_rng(5), conv_dims=(8, 8, 8), emb_dim=8)
    enc_doc.fields["modules"].append(t7._module("nn.LSTM"))
    with pytest.raises(ValueError, match=r"module 6 \(nn\.LSTM\): not part of the hybrid"):
        _convert(tmp_path, enc_doc)
    enc_doc, _ = t7.hybrid_model(np.random.default_rng(5), conv_dims=(8, 8, 8), emb_dim=8, steps=17)
    with pytest.raises(ValueError, match=r"module 3 \(nngraph.gModule\): its Linears form groups"):
        _convert(tmp_path, enc_doc)


def test_wrong_shapes_and_unexpected_types_are_refused(tmp_path: Path) -> None:
    def model() -> t7.Obj:
        return t7.hybrid_model(np.random.default_rng(6), conv_dims=(8, 8, 8), emb_dim=8)[0]

    enc_doc = model()
    conv2 = enc_doc.fields["modules"][1].fields["modules"][3]
    conv2.fields["weight"] = t7.Tensor.of(np.zeros((8, 33), np.float32))
    pattern = r"module 1\.3 \(nn\.TemporalConvolution\): weight has shape \(8, 33\), expected"
    with pytest.raises(ValueError, match=pattern):
        _convert(tmp_path, enc_doc)
    enc_doc = model()
    enc_doc.fields["modules"][1].fields["modules"][0].fields["weight"] = "oops"
    pattern = r"module 1\.0 \(nn\.TemporalConvolution\): weight is a string, expected a float"
    with pytest.raises(ValueError, match=pattern):
        _convert(tmp_path, enc_doc)
    enc_doc = model()
    enc_doc.fields["modules"][5].fields["bias"] = t7.Tensor.of(np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match=r"module 5 \(nn\.Linear\): bias is a uint8 tensor"):
        _convert(tmp_path, enc_doc)
    with pytest.raises(ValueError, match=r"the file holds a number, not the hybrid"):
        _convert(tmp_path, 3.5)
    with pytest.raises(ValueError, match=r"protos\.enc_doc is a table, expected an nngraph"):
        _convert(tmp_path, {"protos": {"enc_doc": {"modules": []}}})


def test_bad_weight_files_are_refused(tmp_path: Path) -> None:
    enc_doc, _ = t7.hybrid_model(np.random.default_rng(7), conv_dims=(8, 8, 8), emb_dim=8)
    _, out = _convert(tmp_path, enc_doc)
    payload = torch.load(out, weights_only=True)
    cases = [
        ({**payload, "format": "other/1"}, r"format is 'other/1'"),
        ({**payload, "arch": {**payload["arch"], "kernels": [4, 4]}}, "3 kernels"),
        ({k: v for k, v in payload.items() if k != "arch"}, "arch: expected a dict"),
    ]
    state = dict(payload["state_dict"])
    del state["gru.h2h.bias"]
    cases.append(({**payload, "state_dict": state}, r"missing tensor 'gru\.h2h\.bias'"))
    state = dict(payload["state_dict"]) | {"conv1.bias": torch.zeros(9)}
    cases.append(({**payload, "state_dict": state}, r"'conv1\.bias'\] has shape \(9,\)"))
    state = dict(payload["state_dict"]) | {"extra": torch.zeros(1)}
    cases.append(({**payload, "state_dict": state}, r"unexpected state_dict key 'extra'"))
    for i, (bad, pattern) in enumerate(cases):
        path = tmp_path / f"bad{i}.pt"
        torch.save(bad, path)
        with pytest.raises(ValueError, match=pattern):
            CharCnnRnnEncoder.load(path)
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match=r"junk\.pt: not a loadable weights file"):
        CharCnnRnnEncoder.load(tmp_path / "junk.pt")


def test_convert_and_embed_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``stackgan text-encoder convert`` then ``stackgan embed --encoder char-cnn-rnn:PATH``;
    bad files end in one line naming the problem and exit 2."""
    from stackgan.cli import embed as embed_cli
    from stackgan.cli import text_encoder as te_cli

    enc_doc, weights = t7.hybrid_model(np.random.default_rng(3), conv_dims=(16, 24, 12), emb_dim=20)
    src = tmp_path / "cub.t7"
    t7.save_t7(t7.checkpoint(enc_doc), src)
    out = tmp_path / "enc" / "cub.pt"
    assert te_cli.main(["convert", "--t7", str(src), "--out", str(out)]) == 0
    assert "converted cub.t7" in capsys.readouterr().out
    emb = tmp_path / "emb.npy"
    argv = ["--encoder", f"char-cnn-rnn:{out}", "--text", CAPTIONS[0], "--out", str(emb)]
    assert embed_cli.main(argv) == 0
    np.testing.assert_allclose(np.load(emb)[0], np_hybrid(CAPTIONS[0], weights), atol=1e-5)
    record = json.loads(emb.with_suffix(".json").read_text())["encoder"]
    assert record["name"] == "char-cnn-rnn" and record["dim"] == 20

    src.write_bytes(src.read_bytes()[:200])
    assert te_cli.main(["convert", "--t7", str(src), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "cub.t7: truncated or corrupt Torch7 file" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_shards_embedded_by_the_converted_encoder_record_its_file(
    tiny_twin: Path, tmp_path: Path
) -> None:
    """build-shards --text-encoder char-cnn-rnn:FILE: the index rows are the encoder's, and the
    manifest's inputs name the weights file with its sha256 instead of the pickle."""
    import h5py

    from stackgan.data.cub import DataPaths
    from stackgan.data.shards import ShardOptions, build_shards
    from stackgan.fileio import sha256_file

    enc_doc, weights = t7.hybrid_model(np.random.default_rng(5), conv_dims=(16, 24, 12), emb_dim=20)
    _, converted = _convert(tmp_path, enc_doc)
    spec = f"char-cnn-rnn:{converted}"
    opts = ShardOptions(workers=1, min_shards=4, text_encoder=spec)
    out = tmp_path / "shards"
    build_shards(DataPaths.from_root(tiny_twin), out, opts, ["test"], progress=False)
    with h5py.File(out / "test-index.h5", "r") as h5:
        first = h5["embeddings"][0]
        caption = h5["captions"][0][0]
    caption = caption.decode() if isinstance(caption, bytes) else caption
    assert first.shape == (10, 20)
    np.testing.assert_allclose(first[0], np_hybrid(caption, weights), atol=1e-5)
    inputs = json.loads((out / "test-64" / "manifest.json").read_text())["inputs"]
    assert inputs["text encoder char-cnn-rnn v1"] == sha256_file(converted)
    assert not [k for k in inputs if "char-CNN-RNN-embeddings" in k]
