"""The loader's own tar reader: same samples as WebDataset's, clear errors on bad shards."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from stackgan.data.format import shard_urls
from stackgan.data.loader import _load_npy
from stackgan.data.tarstream import ShardFormatError, iter_members, tar_samples


@pytest.mark.parametrize("res", [64, 256])
def test_same_samples_as_webdataset(tiny_shards: Path, res: int) -> None:
    urls = [{"url": u} for u in shard_urls(tiny_shards / f"train-{res}")]
    ours = list(tar_samples(iter(urls)))
    theirs = list(wds.tarfile_to_samples()(iter(urls)))
    assert len(ours) == len(theirs) == 30
    for a, b in zip(ours, theirs, strict=True):
        assert a["__key__"] == b["__key__"] and a["__url__"] == b["__url__"]
        members = {k: v for k, v in b.items() if not k.startswith("__")}
        assert {k: v for k, v in a.items() if not k.startswith("__")} == members
        assert set(members) == {"png" if res == 64 else "jpg", "emb.npy", "cls", "json"}


def _tar(members: dict[str, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_members_and_grouping(tmp_path: Path) -> None:
    raw = _tar({"a/s1.png": b"x" * 700, "a/s1.CLS": b"3", "a/s2.png": b"", "noext": b"?"})
    assert list(iter_members(io.BytesIO(raw))) == [
        ("a/s1.png", b"x" * 700),
        ("a/s1.CLS", b"3"),
        ("a/s2.png", b""),
        ("noext", b"?"),
    ]
    path = tmp_path / "s.tar"
    path.write_bytes(raw)
    samples = list(tar_samples([{"url": str(path)}]))
    assert samples == [
        {"__key__": "a/s1", "__url__": str(path), "png": b"x" * 700, "cls": b"3"},
        {"__key__": "a/s2", "__url__": str(path), "png": b""},
    ]


def test_bad_checksum_names_shard_and_offset() -> None:
    raw = bytearray(_tar({"s1.png": b"x" * 10, "s1.cls": b"1"}))
    raw[512 + 512 + 5] ^= 0xFF  # second header's name
    with pytest.raises(
        ShardFormatError, match=r"shard-7\.tar: bad tar header checksum at byte 1024"
    ):
        list(iter_members(io.BytesIO(bytes(raw)), "shard-7.tar"))


def test_truncated_member_is_an_error() -> None:
    raw = _tar({"s1.png": b"x" * 2000})
    with pytest.raises(ShardFormatError, match=r"s\.tar: member 's1.png' at byte 0 is truncated"):
        list(iter_members(io.BytesIO(raw[:1500]), "s.tar"))


def test_links_and_long_names_are_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("s1.lnk")
        info.type = tarfile.SYMTYPE
        info.linkname = "elsewhere"
        tar.addfile(info)
    with pytest.raises(ShardFormatError, match="tar type b'2'"):
        list(iter_members(io.BytesIO(buf.getvalue()), "s.tar"))
    pax = _tar({"d" * 120 + ".png": b"x"}, fmt=tarfile.PAX_FORMAT)
    with pytest.raises(ShardFormatError, match="tar type b'x'"):
        list(iter_members(io.BytesIO(pax), "s.tar"))


@pytest.mark.parametrize(
    "array",
    [np.arange(20480, dtype=np.float32).reshape(10, 2048), np.arange(5), np.zeros((0, 3))],
)
def test_npy_fast_path_matches_numpy(array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    for _ in range(2):  # parsed, then from the header cache
        out = _load_npy(buf.getvalue())
        assert out.dtype == array.dtype and out.shape == array.shape
        np.testing.assert_array_equal(out, array)
    with pytest.raises(ValueError, match=r"expected .* data bytes"):
        _load_npy(buf.getvalue()[:-1] if array.size else buf.getvalue() + b"\0")


def test_npy_objects_are_refused() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        _load_npy(buf.getvalue())


def test_shard_writer_writes_the_bytes_tarfile_writes(tmp_path: Path) -> None:
    from stackgan.data.shards import _ShardSet
    from stackgan.data.tarstream import ustar_header

    members = {
        "s000001": {"png": b"\x89PNG" * 300, "emb.npy": b"\x93NUMPY" + b"\0" * 4000, "cls": b"7"},
        "s000002": {"png": b"", "emb.npy": b"x" * 512, "cls": b"12"},
    }
    writer = _ShardSet(tmp_path, "train", 64, per_shard=10)
    for key, m in members.items():
        writer.write(key, m)
    (shard,) = writer.finish()
    ours = (tmp_path / str(shard["name"])).read_bytes()
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, m in members.items():
            for ext, data in m.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    assert ours == expected.getvalue()
    assert shard["bytes"] == len(ours) and shard["count"] == 2
    assert shard["sha256"] == hashlib.sha256(ours).hexdigest()
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        ustar_header("n" * 101, 1)
