"""Restricted unpickler: Python-2 bundle pickles load; anything that imports code is refused."""

from __future__ import annotations

import pickle
import pickletools

import numpy as np
import pytest

from stackgan.data.pickles import LazyArray, UnsafePickleError, dump_py2_pickle, load_pickle
from tests.helpers import reference_unpickle


def test_py2_pickle_needs_latin1_and_matches_plain_latin1_load(tmp_path):
    embs = [
        np.random.default_rng(i).standard_normal((10, 1024)).astype(np.float32) for i in range(3)
    ]
    path = tmp_path / "emb.pickle"
    dump_py2_pickle(embs, path)
    # The standard library's unpickler as the reference (globals limited to numpy's array
    # reconstruction). The real bundle's property: Python 3's default ASCII decoding fails
    # on the binary str payload; latin1, as the reference code reads it, works.
    with pytest.raises(UnicodeDecodeError):
        reference_unpickle(path)
    reference = reference_unpickle(path, encoding="latin1")
    ours = load_pickle(path)
    for a, b, c in zip(embs, reference, ours, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    ops = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
    assert "BINSTRING" in ops and "GLOBAL" in ops  # Python 2 opcodes, no protocol-3 BINBYTES
    assert "BINBYTES" not in ops and "STACK_GLOBAL" not in ops


def test_lazy_arrays_read_rows_from_disk(tmp_path):
    arr = np.arange(6 * 10 * 8, dtype=np.float32).reshape(6, 10, 8)
    path = tmp_path / "big.pickle"
    dump_py2_pickle(arr, path)
    lazy = load_pickle(path, lazy_min_bytes=64)
    assert isinstance(lazy, LazyArray)
    assert lazy.shape == (6, 10, 8) and len(lazy) == 6
    np.testing.assert_array_equal(lazy[4], arr[4])
    np.testing.assert_array_equal(lazy[-1], arr[5])
    np.testing.assert_array_equal(np.asarray(lazy), arr)
    with pytest.raises(IndexError):
        lazy[6]


def test_strings_and_ints_round_trip(tmp_path):
    path = tmp_path / "names.pickle"
    keys = ["002.Laysan_Albatross/Laysan_Albatross_0002_1027", "x" * 300]
    dump_py2_pickle(keys, path)
    assert load_pickle(path) == keys
    dump_py2_pickle([1, 255, 256, 70000, -5], path)
    assert load_pickle(path) == [1, 255, 256, 70000, -5]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    for protocol in (0, 2, 4):
        path = tmp_path / f"evil{protocol}.pickle"
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=protocol))
        with pytest.raises(
            UnsafePickleError, match=r"refusing to load global '(posix|os)\.system'"
        ):
            load_pickle(path)
    assert not marker.exists()


def test_refuses_builtins_eval_and_arbitrary_classes(tmp_path):
    path = tmp_path / "eval.pickle"
    # GLOBAL builtins.eval, then REDUCE with ("1+1",): hand-written protocol-2 stream.
    path.write_bytes(b"\x80\x02c__builtin__\neval\nq\x00U\x031+1q\x01\x85q\x02Rq\x03.")
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_pickle(path)
    path.write_bytes(pickle.dumps(_Evil, protocol=2))  # a class reference alone is refused too
    with pytest.raises(UnsafePickleError, match="_Evil"):
        load_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "trunc.pickle"
    dump_py2_pickle([np.zeros((10, 16), np.float32)], path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(pickle.UnpicklingError, match=r"trunc\.pickle"):
        load_pickle(path)


def test_python3_numpy_pickles_also_load(tmp_path):
    path = tmp_path / "py3.pickle"
    data = [np.arange(5, dtype=np.float32), np.int64(3)]
    path.write_bytes(pickle.dumps(data, protocol=4))
    out = load_pickle(path)
    np.testing.assert_array_equal(out[0], data[0])
    assert out[1] == 3


def test_the_reference_unpickler_refuses_other_globals(tmp_path):
    """The tests' stdlib reference reader is restricted too: a pickle that would call
    anything but numpy's array reconstruction is refused before it runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="is not allowed"):
        reference_unpickle(path, "latin1")
    assert not marker.exists()
