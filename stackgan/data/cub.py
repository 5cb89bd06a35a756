"""Reader and validator for CUB-200-2011 plus the StackGAN "birds" bundle.

Layout (paths are passed in; nothing is hard-coded)::

    <cub_dir>/images.txt              "<image_id> <class_dir>/<file>.jpg"
    <cub_dir>/bounding_boxes.txt      "<image_id> <x> <y> <w> <h>"  (floats)
    <cub_dir>/images/<class_dir>/<file>.jpg
    <bundle_dir>/{train,test}/filenames.pickle                 keys "<class_dir>/<file>"
    <bundle_dir>/{train,test}/class_info.pickle                one class id per key
    <bundle_dir>/{train,test}/char-CNN-RNN-embeddings.pickle   (N, 10, 1024) float
    <bundle_dir>/text_c10/<class_dir>/<file>.txt               10 captions (optional)

Fatal problems (duplicate keys, count or shape mismatches, non-finite embeddings,
malformed lines) raise :class:`DataValidationError` naming the file and the line or
index. Per-image problems that ``on_bad_image: skip`` may tolerate (missing image
file, missing bbox) are returned as :class:`Problem` records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stackgan.data.pickles import LazyArray, load_pickle
from stackgan.errors import StackGANError

SPLITS = ("train", "test")
NUM_CAPTIONS = 10
TEXT_DIM = 1024
PAPER_COUNTS = {"train": 8855, "test": 2933}
EMBEDDINGS_FILE = "char-CNN-RNN-embeddings.pickle"
# Payloads of at least this many bytes stay on disk (LazyArray) while validating.
LAZY_MIN_BYTES = 4096
MAX_REPORTED = 25


class DataValidationError(StackGANError, ValueError):
    """The input data is inconsistent; the message lists each problem with its location."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED]
        more = len(self.problems) - len(shown)
        text = "\n  ".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(f"{len(self.problems)} data problem(s):\n  {text}")


@dataclass(frozen=True)
class DataPaths:
    """Where the raw data lives."""

    cub_dir: Path  # the CUB_200_2011 directory
    bundle_dir: Path  # the birds bundle: train/, test/, text_c10/

    @classmethod
    def from_root(cls, root: str | Path) -> DataPaths:
        """StackGAN's layout: ``<root>/CUB_200_2011`` next to ``<root>/{train,test,text_c10}``."""
        root = Path(root)
        return cls(cub_dir=root / "CUB_200_2011", bundle_dir=root)

    def split_file(self, split: str, name: str) -> Path:
        return self.bundle_dir / split / name

    @property
    def captions_dir(self) -> Path:
        return self.bundle_dir / "text_c10"


@dataclass(frozen=True)
class Problem:
    """A per-image problem that the ``skip`` policy may tolerate."""

    index: int
    key: str
    kind: str  # "missing_image" | "missing_bbox" | "bad_image"
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "key": self.key, "reason": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class Sample:
    """One image of a split, in ``filenames.pickle`` order."""

    index: int
    key: str  # "<class_dir>/<file>" without extension
    image_id: int | None
    image_path: Path
    bbox: tuple[float, float, float, float] | None
    class_id: int
    captions: tuple[str, ...] | None


@dataclass(frozen=True)
class EmbeddingRow:
    """One embedding row: ``source`` itself, or row ``index`` of a lazy ``source``."""

    source: Any
    index: int | None

    def read(self) -> np.ndarray:
        row = self.source if self.index is None else self.source[self.index]
        return np.asarray(row, dtype=np.float32)


class EmbeddingStore:
    """Row access to the embeddings pickle: ndarray, LazyArray or a list of either."""

    def __init__(self, source: object, path: Path) -> None:
        self.path = path
        self._source = source

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> np.ndarray:
        row = self._source[index]  # type: ignore[index]
        return np.asarray(row, dtype=np.float32)

    def row_ref(self, index: int) -> EmbeddingRow:
        """A small picklable reference to row ``index``, read with :meth:`EmbeddingRow.read`.

        Lazy rows stay lazy (no data is read here), so worker processes can read them.
        """
        src = self._source
        if isinstance(src, LazyArray):
            return EmbeddingRow(src, index)
        return EmbeddingRow(src[index], None)  # type: ignore[index]

    def check(
        self, expected_rows: int, text_dim: int = TEXT_DIM, num_captions: int = NUM_CAPTIONS
    ) -> list[str]:
        """Return problems: row count, per-row shape and finiteness."""
        src = self._source
        name = f"{self.path}"
        if not isinstance(src, list | np.ndarray | LazyArray):
            return [f"{name}: expected an array or a list of arrays, got {type(src).__name__}"]
        problems: list[str] = []
        if len(src) != expected_rows:
            problems.append(
                f"{name}: has {len(src)} embedding rows, expected {expected_rows} "
                "(one per entry of filenames.pickle)"
            )
        shape = (num_captions, text_dim)
        if isinstance(src, np.ndarray | LazyArray) and tuple(src.shape[1:]) != shape:
            return [
                *problems,
                f"{name}: array shape {tuple(src.shape)}, expected (N, {num_captions}, {text_dim})",
            ]
        for i in range(len(src)):
            row = src[i]
            if not isinstance(row, np.ndarray | LazyArray):
                problems.append(f"{name}[{i}]: expected an array, got {type(row).__name__}")
                continue
            if tuple(row.shape) != shape:
                problems.append(f"{name}[{i}]: shape {tuple(row.shape)}, expected {shape}")
                continue
            if not np.isfinite(np.asarray(row)).all():
                problems.append(f"{name}[{i}]: contains NaN or infinite values")
        return problems


@dataclass
class SplitData:
    """A validated split: samples in pickle order, their embeddings and tolerated problems."""

    split: str
    samples: list[Sample]
    embeddings: EmbeddingStore
    problems: list[Problem] = field(default_factory=list)
    input_files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def has_captions(self) -> bool:
        return any(s.captions is not None for s in self.samples)


# --------------------------------------------------------------------------- CUB text files


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataValidationError([f"{path}: file not found"])
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def read_images_txt(cub_dir: Path) -> dict[str, tuple[int, str]]:
    """Map key ("<class_dir>/<file>" without .jpg) -> (image_id, relative path)."""
    path = cub_dir / "images.txt"
    out: dict[str, tuple[int, str]] = {}
    seen_ids: dict[int, int] = {}
    problems: list[str] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or "/" not in parts[1]:
            problems.append(
                f"{path}:{lineno}: expected '<image_id> <class_dir>/<file>.jpg', got {line!r}"
            )
            continue
        image_id, rel = int(parts[0]), parts[1]
        key = rel.rsplit(".", 1)[0]
        if image_id in seen_ids:
            problems.append(
                f"{path}:{lineno}: duplicate image id {image_id} "
                f"(first on line {seen_ids[image_id]})"
            )
        elif key in out:
            problems.append(f"{path}:{lineno}: duplicate image path {rel!r}")
        seen_ids.setdefault(image_id, lineno)
        out.setdefault(key, (image_id, rel))
    if problems:
        raise DataValidationError(problems)
    return out


def read_bounding_boxes(cub_dir: Path) -> dict[int, tuple[float, float, float, float]]:
    """Map image_id -> (x, y, w, h) as floats."""
    path = cub_dir / "bounding_boxes.txt"
    out: dict[int, tuple[float, float, float, float]] = {}
    problems: list[str] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            image_id = int(parts[0])
            x, y, w, h = (float(v) for v in parts[1:])
        except ValueError:
            problems.append(
                f"{path}:{lineno}: expected '<image_id> <x> <y> <w> <h>' (numbers), got {line!r}"
            )
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0:
            problems.append(
                f"{path}:{lineno}: expected finite x, y >= 0 and w, h > 0, got {line!r}"
            )
            continue
        if image_id in out:
            problems.append(f"{path}:{lineno}: duplicate bounding box for image id {image_id}")
            continue
        out[image_id] = (x, y, w, h)
    if problems:
        raise DataValidationError(problems)
    return out


def read_captions(path: Path, num_captions: int = NUM_CAPTIONS) -> tuple[str, ...]:
    """Read one caption file; raise if it does not hold exactly ``num_captions`` captions."""
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\ufffd\ufffd", " ")
    captions = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(captions) != num_captions:
        raise DataValidationError(
            [f"{path}: {len(captions)} captions, expected {num_captions} (one per line)"]
        )
    return captions


# --------------------------------------------------------------------------- bundle


def _load_list(path: Path, what: str) -> list:
    if not path.is_file():
        raise DataValidationError([f"{path}: file not found ({what})"])
    obj = load_pickle(path, lazy_min_bytes=LAZY_MIN_BYTES)
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, list | tuple):
        raise DataValidationError([f"{path}: expected a list ({what}), got {type(obj).__name__}"])
    return list(obj)


@dataclass
class _Findings:
    """What reading a split found: fatal problems, tolerated per-image ones, warnings."""

    fatal: list[str] = field(default_factory=list)
    tolerated: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _SplitFiles:
    """The split's three bundle files and what they hold."""

    fn_path: Path
    ci_path: Path
    emb_path: Path
    keys: list
    class_ids: list
    embeddings: EmbeddingStore


def _load_split_files(paths: DataPaths, split: str) -> _SplitFiles:
    """Load the split's filenames, class ids and embeddings pickles (a missing one is fatal)."""
    fn_path = paths.split_file(split, "filenames.pickle")
    ci_path = paths.split_file(split, "class_info.pickle")
    emb_path = paths.split_file(split, EMBEDDINGS_FILE)
    keys = _load_list(fn_path, "one key per image")
    class_ids = _load_list(ci_path, "one class id per image")
    if not emb_path.is_file():
        raise DataValidationError([f"{emb_path}: file not found (text embeddings)"])
    embeddings = EmbeddingStore(load_pickle(emb_path, lazy_min_bytes=LAZY_MIN_BYTES), emb_path)
    return _SplitFiles(fn_path, ci_path, emb_path, keys, class_ids, embeddings)


def _image_problem(
    i: int, key: str, image_id: int | None, image_path: Path, bbox: object, fn_path: Path
) -> Problem | None:
    """The tolerable problem of one image (no images.txt line, no file, no box), if any."""
    if image_id is None:
        return Problem(
            i, key, "missing_image", f"{fn_path}[{i}]: key {key!r} has no line in images.txt"
        )
    if not image_path.is_file():
        return Problem(
            i, key, "missing_image", f"{image_path}: image file not found ({fn_path}[{i}])"
        )
    if bbox is None:
        return Problem(
            i, key, "missing_bbox", f"bounding_boxes.txt: no box for image id {image_id} ({key!r})"
        )
    return None


def _read_sample(
    i: int,
    key: object,
    files: _SplitFiles,
    paths: DataPaths,
    images: dict[str, tuple[int, str]],
    bboxes: dict[int, tuple[float, float, float, float]],
    num_captions: int,
    found: _Findings,
    first_seen: dict[str, int],
) -> Sample | None:
    """Check entry ``i`` of the split; record its problems in ``found``; its Sample or None."""
    fn_path, ci_path, class_ids = files.fn_path, files.ci_path, files.class_ids
    if not isinstance(key, str) or not key:
        found.fatal.append(f"{fn_path}[{i}]: expected a non-empty key string, got {key!r}")
        return None
    if key in first_seen:
        found.fatal.append(
            f"{fn_path}[{i}]: duplicate key {key!r} (first at index {first_seen[key]})"
        )
        return None
    first_seen[key] = i
    class_id = class_ids[i] if i < len(class_ids) else None
    if not isinstance(class_id, int | np.integer) or isinstance(class_id, bool):
        if i < len(class_ids):
            found.fatal.append(f"{ci_path}[{i}]: expected an integer class id, got {class_id!r}")
        return None
    class_dir = key.split("/", 1)[0]
    prefix = class_dir.split(".", 1)[0]
    if prefix.isdigit() and int(prefix) != int(class_id):
        found.warnings.append(
            f"{ci_path}[{i}]: class id {class_id} but key {key!r} is in class directory {class_dir}"
        )
    image_id, rel = images.get(key, (None, f"{key}.jpg"))
    image_path = paths.cub_dir / "images" / rel
    bbox = bboxes.get(image_id) if image_id is not None else None
    problem = _image_problem(i, key, image_id, image_path, bbox, fn_path)
    if problem is not None:
        found.tolerated.append(problem)
    captions = None
    cap_path = paths.captions_dir / f"{key}.txt"
    if cap_path.is_file():
        try:
            captions = read_captions(cap_path, num_captions)
        except DataValidationError as err:
            found.fatal += err.problems
    return Sample(i, key, image_id, image_path, bbox, int(class_id), captions)


def _count_warnings(paths: DataPaths, split: str, samples: list[Sample]) -> list[str]:
    """Warnings about missing caption files and counts that differ from the paper's split."""
    warnings = []
    captions_dir = paths.captions_dir
    n_caps = sum(s.captions is not None for s in samples)
    if captions_dir.is_dir() and n_caps < len(samples):
        warnings.append(
            f"{captions_dir}: {len(samples) - n_caps} of {len(samples)} {split} images "
            "have no caption file"
        )
    if len(samples) != PAPER_COUNTS[split]:
        warnings.append(
            f"{split}: {len(samples)} images; the paper's CUB split has {PAPER_COUNTS[split]} "
            "(fine for the synthetic twin)"
        )
    return warnings


def read_split(
    paths: DataPaths,
    split: str,
    *,
    images: dict[str, tuple[int, str]] | None = None,
    bboxes: dict[int, tuple[float, float, float, float]] | None = None,
    text_dim: int = TEXT_DIM,
    num_captions: int = NUM_CAPTIONS,
) -> SplitData:
    """Read and validate one split of the bundle against the CUB files.

    Raises:
        DataValidationError: on any fatal inconsistency (the message lists them all).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images = read_images_txt(paths.cub_dir) if images is None else images
    bboxes = read_bounding_boxes(paths.cub_dir) if bboxes is None else bboxes
    files = _load_split_files(paths, split)
    keys = files.keys
    found = _Findings()
    if len(files.class_ids) != len(keys):
        found.fatal.append(
            f"{files.ci_path}: has {len(files.class_ids)} class ids, expected {len(keys)} "
            f"(one per entry of {files.fn_path.name})"
        )
    found.fatal += files.embeddings.check(len(keys), text_dim, num_captions)
    first_seen: dict[str, int] = {}
    samples: list[Sample] = []
    for i, key in enumerate(keys):
        sample = _read_sample(i, key, files, paths, images, bboxes, num_captions, found, first_seen)
        if sample is not None:
            samples.append(sample)
    if found.fatal:
        raise DataValidationError(found.fatal)
    warnings = found.warnings + _count_warnings(paths, split, samples)
    input_files = {
        "images.txt": paths.cub_dir / "images.txt",
        "bounding_boxes.txt": paths.cub_dir / "bounding_boxes.txt",
        f"{split}/filenames.pickle": files.fn_path,
        f"{split}/class_info.pickle": files.ci_path,
        f"{split}/{EMBEDDINGS_FILE}": files.emb_path,
    }
    return SplitData(split, samples, files.embeddings, found.tolerated, input_files, warnings)


def read_dataset(paths: DataPaths, splits: Sequence[str] = SPLITS) -> dict[str, SplitData]:
    """Read and validate several splits; also checks that their classes are disjoint."""
    images = read_images_txt(paths.cub_dir)
    bboxes = read_bounding_boxes(paths.cub_dir)
    data = {s: read_split(paths, s, images=images, bboxes=bboxes) for s in splits}
    if len(data) == 2:
        shared = {x.class_id for x in data["train"].samples} & {
            x.class_id for x in data["test"].samples
        }
        if shared:
            data["test"].warnings.append(
                f"train and test share {len(shared)} class ids (expected class-disjoint)"
            )
    return data


def summarize(data: dict[str, SplitData]) -> dict[str, object]:
    """JSON-friendly summary of a validated dataset."""
    out: dict[str, object] = {}
    for split, d in data.items():
        out[split] = {
            "images": len(d.samples),
            "classes": len({s.class_id for s in d.samples}),
            "with_captions": sum(s.captions is not None for s in d.samples),
            "problems": [p.as_dict() for p in d.problems],
            "warnings": d.warnings,
        }
    return out


def validation_report(paths: DataPaths, data: dict[str, SplitData]) -> dict[str, object]:
    """The ``validate-data`` report: where the data lives and :func:`summarize` of it."""
    return {
        "cub_dir": str(paths.cub_dir),
        "bundle_dir": str(paths.bundle_dir),
        "splits": summarize(data),
    }
