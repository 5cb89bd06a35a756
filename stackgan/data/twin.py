"""Synthetic CUB twin: the real on-disk layout, byte formats included, with learnable content.

Every image shows a simple bird whose body colour, wing colour and size are stated,
in varied wording, in its 10 captions. Embeddings are a fixed, deterministic function
of the caption text (bag of hashed word vectors plus hashed colour-part bindings) plus
small seeded noise, so a model trained on the twin can learn something conditional and
:mod:`stackgan.evaluation.attributes` can measure it.

Written exactly like the real data: Python-2 protocol-2 pickles that need latin1,
float ``x y w h`` boxes, JPEGs of varying size (some grayscale, some CMYK), boxes that
touch the image border, and ``text_c10`` caption files. The output depends only on the
arguments (same seed -> identical bytes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from stackgan.data.pickles import dump_py2_pickle
from stackgan.fileio import atomic_open, write_json
from stackgan.text.twin import COLOUR_NAMES, SIZES, TwinTextEncoder

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 35),
    "blue": (35, 70, 215),
    "green": (35, 165, 55),
    "yellow": (240, 215, 35),
    "black": (22, 22, 22),
    "white": (240, 240, 240),
    "orange": (245, 125, 15),
    "purple": (125, 35, 165),
    "brown": (120, 70, 30),
    "grey": (128, 128, 128),
}
if tuple(COLOURS) != COLOUR_NAMES:  # the drawing palette names the language's colours
    raise RuntimeError("stackgan.data.twin.COLOURS and stackgan.text.twin.COLOUR_NAMES differ")
SIZE_SCALE = {"small": 0.55, "medium": 0.75, "large": 0.95}  # bird size relative to the canvas
NUM_CAPTIONS = 10

_TEMPLATES = (
    "this {size} bird has a {body} body and {wing} wings.",
    "a {size} bird with {wing} wings and a {body} belly.",
    "this bird has a {body} breast and {wing} wing feathers.",
    "a {body} bird with {wing} wings and a short pointed beak.",
    "the bird is {size}, with {wing} secondaries and a {body} chest.",
    "{wing} wings cover this {size} bird's {body} body.",
    "this is a {size} {body} bird with {wing} coloured wings.",
    "a bird with a {body} crown, a {body} belly and {wing} wingbars.",
    "this {body} bird has {wing} coverts and a small beak.",
    "the {size} bird shows {wing} wings over a {body} body.",
    "a {body} chested bird with {wing} wings.",
    "this bird has {wing} wings, a {body} breast and dark eyes.",
)


@dataclass(frozen=True)
class TwinClass:
    """One synthetic species: fixed body colour, wing colour and size."""

    class_id: int  # 1-based, like CUB
    body: str
    wing: str
    size: str

    @property
    def dirname(self) -> str:
        return (
            f"{self.class_id:03d}.Twin_{self.body.title()}_{self.wing.title()}_{self.size.title()}"
        )

    @property
    def stem(self) -> str:
        return f"Twin_{self.body.title()}_{self.wing.title()}_{self.size.title()}"


@dataclass(frozen=True)
class TwinSpec:
    """Arguments that fully determine a twin."""

    num_classes: int = 200  # like CUB-200 (150 train / 50 test)
    images_per_class: int = 60  # CUB-scale: 12,000 images at 200 classes
    seed: int = 0
    min_side: int = 240
    max_side: int = 500
    grayscale_frac: float = 0.02
    cmyk_frac: float = 0.02
    border_frac: float = 0.1
    jpeg_quality: int = 90
    noise: float = 0.02  # std of the per-caption embedding noise

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        if self.images_per_class < 1:
            raise ValueError(f"images_per_class must be >= 1, got {self.images_per_class}")
        if not 32 <= self.min_side <= self.max_side:
            raise ValueError(
                f"need 32 <= min_side <= max_side, got {self.min_side}, {self.max_side}"
            )
        for key in ("grayscale_frac", "cmyk_frac", "border_frac"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")


MAX_CLASSES = 200  # like CUB-200: at most 150 training and 50 test classes
_TEST_OFFSETS = 4  # of the 9 colour offsets, see make_classes


def _offset_pairs(offsets: list[int], colours: list[str]) -> list[tuple[str, str]]:
    """(body, wing) pairs ``(colours[i], colours[(i + k) % n])`` for each offset ``k``, in order."""
    n = len(colours)
    return [(colours[i], colours[(i + k) % n]) for k in offsets for i in range(n)]


def _with_sizes(
    pairs: list[tuple[str, str]], count: int, rotate: int
) -> list[tuple[str, str, str]]:
    """The first ``count`` of: every pair with one size, then every pair with the next, ..."""
    combos = [
        (b, w, SIZES[(i + r + rotate) % len(SIZES)])
        for r in range(len(SIZES))
        for i, (b, w) in enumerate(pairs)
    ]
    return combos[:count]


def make_classes(spec: TwinSpec) -> list[TwinClass]:
    """Deterministically pick ``num_classes`` distinct (body, wing, size) combinations.

    The 90 ordered (body, wing) colour pairs fall into 9 "offsets" k (wing = the colour k
    places after the body in a seeded colour order); each offset holds every colour once
    as body and once as wing. Four offsets are reserved for the test classes (ids
    divisible by 4, see :func:`split_of`) and five for the training classes. So a test
    class's colour pair never occurs in training, in any size, while each of its colours
    occurs in training as body with 5 wing colours and as wing with 5 body colours (at
    200 classes: in 15 training classes each). Training classes take one offset at a
    time, so even small twins see every colour as body and as wing in training.
    """
    rng = np.random.default_rng([spec.seed, 7])
    colours = [COLOUR_NAMES[i] for i in rng.permutation(len(COLOUR_NAMES))]
    offsets = [int(k) + 1 for k in rng.permutation(len(COLOUR_NAMES) - 1)]
    test_pairs = _offset_pairs(offsets[:_TEST_OFFSETS], colours)
    train_pairs = _offset_pairs(offsets[_TEST_OFFSETS:], colours)
    n_test = spec.num_classes // 4
    train = _with_sizes(train_pairs, spec.num_classes - n_test, rotate=0)
    seen = {b for b, _, _ in train}, {w for _, w, _ in train}
    # Test pairs whose colours training has seen (all of them from 10 training classes on).
    usable = [p for p in test_pairs if p[0] in seen[0] and p[1] in seen[1]] or test_pairs
    test = _with_sizes(usable, n_test, rotate=1)
    train_it, test_it = iter(train), iter(test)
    return [
        TwinClass(k, *next(test_it if k % 4 == 0 else train_it))
        for k in range(1, spec.num_classes + 1)
    ]


def split_of(twin_class: TwinClass) -> str:
    """Class-disjoint split, 3:1 like CUB's 150/50: every 4th class is a test class."""
    return "test" if twin_class.class_id % 4 == 0 else "train"


# --------------------------------------------------------------------------- captions & embeddings


def make_captions(twin_class: TwinClass, rng: np.random.Generator) -> tuple[str, ...]:
    """10 captions in varied wording that all state the class's attributes."""
    picks = rng.choice(len(_TEMPLATES), size=NUM_CAPTIONS, replace=len(_TEMPLATES) < NUM_CAPTIONS)
    c = twin_class
    return tuple(_TEMPLATES[int(i)].format(body=c.body, wing=c.wing, size=c.size) for i in picks)


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _ImageJob:
    image_id: int
    twin_class: TwinClass
    rel_path: str
    seed: int
    spec: TwinSpec
    out_dir: str


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, v * factor))) for v in rgb)  # type: ignore[return-value]


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class _Bird:
    """A bird placed on the canvas: body centre, body size, facing and extents."""

    cx: float
    cy: float
    bw: float  # body length
    bh: float  # body height
    head_r: float
    facing: int  # 1: head to the right, -1: to the left
    ext_left: float
    ext_right: float
    ext_up: float
    ext_down: float


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A vertical two-colour gradient with blurred "foliage" blobs."""
    top, bottom = rng.integers(40, 200, size=3), rng.integers(30, 170, size=3)
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    bg = (1 - t) * top[None, None, :] + t * bottom[None, None, :]
    bg = np.broadcast_to(bg, (height, width, 3)).copy()
    canvas = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, r = (
            rng.integers(0, width),
            rng.integers(0, height),
            rng.integers(10, max(11, width // 5)),
        )
        col = tuple(int(v) for v in rng.integers(20, 140, size=3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=col)
    return canvas.filter(ImageFilter.GaussianBlur(radius=4))


def _border_centre(
    rng: np.random.Generator,
    width: int,
    height: int,
    ext: tuple[float, float, float, float],
    bw: float,
    bh: float,
) -> tuple[float, float]:
    """A body centre that makes the bird touch (or cross) one image border."""
    ext_left, ext_right, ext_up, ext_down = ext
    side = int(rng.integers(0, 4))
    cx = (
        ext_left
        if side == 0
        else width - ext_right
        if side == 1
        else rng.uniform(ext_left, width - ext_right)
    )
    cy = (
        ext_up
        if side == 2
        else height - ext_down
        if side == 3
        else rng.uniform(ext_up, height - ext_down)
    )
    cx += (-1 if side == 0 else 1 if side == 1 else 0) * rng.uniform(0, bw * 0.2)
    cy += (-1 if side == 2 else 1 if side == 3 else 0) * rng.uniform(0, bh * 0.2)
    return cx, cy


def _place_bird(
    rng: np.random.Generator, spec: TwinSpec, size: str, width: int, height: int
) -> _Bird:
    """Bird geometry in a local frame (body length L), then placed on the canvas."""
    scale = SIZE_SCALE[size] * rng.uniform(0.85, 1.1)
    length = scale * min(width, height) * 0.75
    ratio = rng.uniform(0.55, 0.7)
    facing = 1 if rng.random() < 0.5 else -1
    # Extents of the bird around its body centre, as multiples of the body length.
    k_head, k_tail = 0.5 + 0.35 * ratio * 1.6, 0.5 + 0.35
    k_up, k_down = ratio * (0.5 + 0.35 * 0.9), ratio * 0.75
    length = min(length, 0.9 * width / (k_head + k_tail), 0.9 * height / (k_up + k_down))
    bw, bh = length, length * ratio
    ext_left = bw * (k_head if facing < 0 else k_tail)
    ext_right = bw * (k_head if facing > 0 else k_tail)
    ext_up, ext_down = bw * k_up, bw * k_down
    ext = (ext_left, ext_right, ext_up, ext_down)
    if rng.random() < spec.border_frac:  # touch (or cross) an image border
        cx, cy = _border_centre(rng, width, height, ext, bw, bh)
    else:
        cx = rng.uniform(ext_left, max(ext_left + 1, width - ext_right))
        cy = rng.uniform(ext_up, max(ext_up + 1, height - ext_down))
    return _Bird(cx, cy, bw, bh, bh * 0.35, facing, *ext)


def _paint_bird(
    draw: ImageDraw.ImageDraw,
    b: _Bird,
    body: tuple[int, int, int],
    wing: tuple[int, int, int],
) -> None:
    """Tail, body, legs, wing, head, eye and beak (no random draws)."""
    cx, cy, bw, bh, head_r, facing = b.cx, b.cy, b.bw, b.bh, b.head_r, b.facing
    # tail (wing colour), behind the body
    tail_x = cx - facing * bw / 2
    draw.polygon(
        [
            (tail_x, cy - bh * 0.1),
            (tail_x - facing * bw * 0.35, cy - bh * 0.25),
            (tail_x - facing * bw * 0.35, cy + bh * 0.25),
        ],
        fill=wing,
    )
    draw.ellipse((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), fill=body)
    # legs
    for dx in (-0.1, 0.1):
        lx = cx + dx * bw
        draw.line(
            [(lx, cy + bh * 0.4), (lx, cy + bh / 2 + bh * 0.25)],
            fill=(60, 50, 40),
            width=max(1, int(bh * 0.04)),
        )
    # wing on top of the body
    wx = cx - facing * bw * 0.08
    draw.ellipse((wx - bw * 0.33, cy - bh * 0.28, wx + bw * 0.33, cy + bh * 0.22), fill=wing)
    # head, eye, beak
    hx, hy = cx + facing * (bw / 2 + head_r * 0.2), cy - bh / 2 + head_r * 0.1
    draw.ellipse((hx - head_r, hy - head_r, hx + head_r, hy + head_r), fill=_shade(body, 0.92))
    ex = hx + facing * head_r * 0.35
    er = max(1.0, head_r * 0.15)
    draw.ellipse(
        (ex - er, hy - head_r * 0.2 - er, ex + er, hy - head_r * 0.2 + er), fill=(10, 10, 10)
    )
    bx = hx + facing * head_r * 0.9
    draw.polygon(
        [(bx, hy - head_r * 0.2), (bx + facing * head_r * 0.7, hy), (bx, hy + head_r * 0.2)],
        fill=(70, 60, 20),
    )


def _bbox(rng: np.random.Generator, b: _Bird, width: int, height: int) -> Box:
    """The CUB-style box of the bird: whole pixels written as floats, sometimes a .5 width."""
    x0, x1 = max(0.0, b.cx - b.ext_left), min(float(width), b.cx + b.ext_right)
    y0, y1 = max(0.0, b.cy - b.ext_up), min(float(height), b.cy + b.ext_down)
    frac = 0.5 if rng.random() < 0.3 else 0.0
    bbox = (float(int(x0)), float(int(y0)), float(int(x1 - x0)) + frac, float(int(y1 - y0)))
    return (bbox[0], bbox[1], min(bbox[2], width - bbox[0]), min(bbox[3], height - bbox[1]))


def _draw_bird(job: _ImageJob) -> tuple[Image.Image, Box]:
    """Draw one image and its bounding box (the random draws are in a fixed order)."""
    rng = np.random.default_rng([job.spec.seed, job.seed, job.image_id])
    spec, c = job.spec, job.twin_class
    aspect = rng.uniform(0.75, 1.33)
    width = int(rng.integers(spec.min_side, spec.max_side + 1))
    height = int(np.clip(round(width / aspect), spec.min_side, spec.max_side))
    canvas = _background(rng, width, height)
    draw = ImageDraw.Draw(canvas)
    bird = _place_bird(rng, spec, c.size, width, height)
    body = tuple(int(np.clip(v + rng.normal(0, 6), 0, 255)) for v in COLOURS[c.body])
    wing = tuple(int(np.clip(v + rng.normal(0, 6), 0, 255)) for v in COLOURS[c.wing])
    _paint_bird(draw, bird, body, wing)  # type: ignore[arg-type]
    arr = np.asarray(canvas).astype(np.int16)
    arr += rng.normal(0, 5, size=arr.shape).astype(np.int16)
    canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    # CUB boxes are whole pixels written as floats; keep a fractional part sometimes.
    return canvas, _bbox(rng, bird, width, height)


def _render(job: _ImageJob) -> tuple[int, Box, str]:
    """Draw, colour-convert and save one JPEG; return (image_id, bbox, mode)."""
    image, bbox = _draw_bird(job)
    rng = np.random.default_rng([job.spec.seed, job.image_id, 99])
    u = rng.random()
    mode = "RGB"
    if u < job.spec.grayscale_frac:
        image, mode = image.convert("L"), "L"
    elif u < job.spec.grayscale_frac + job.spec.cmyk_frac:
        image, mode = image.convert("CMYK"), "CMYK"
    path = Path(job.out_dir) / job.rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        image.save(fh, format="JPEG", quality=job.spec.jpeg_quality)
    return job.image_id, bbox, mode


# --------------------------------------------------------------------------- writer

_PlanItem = tuple[TwinClass, int, int, str]  # (class, image_id, index within class, key)


def _plan(spec: TwinSpec) -> list[_PlanItem]:
    """(class, image_id, index within class, key) for every image, in CUB id order."""
    items = []
    image_id = 1
    for c in make_classes(spec):
        for n in range(spec.images_per_class):
            key = f"{c.dirname}/{c.stem}_{n + 1:04d}_{image_id}"
            items.append((c, image_id, n, key))
            image_id += 1
    return items


def _render_all(jobs: list[_ImageJob], workers: int, progress: bool) -> dict[int, tuple[Box, str]]:
    """Render every image (in ``workers`` processes); ``{image_id: (bbox, mode)}``."""
    results: dict[int, tuple[Box, str]] = {}
    iterator: Iterable[tuple[int, Box, str]]
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers)
        iterator = pool.map(_render, jobs, chunksize=16)
    else:
        pool = None
        iterator = map(_render, jobs)
    try:
        from tqdm import tqdm

        for image_id, bbox, mode in tqdm(
            iterator, total=len(jobs), desc="twin images", disable=not progress, file=sys.stderr
        ):
            results[image_id] = (bbox, mode)
    finally:
        if pool is not None:
            pool.shutdown()
    return results


def _write_cub_files(
    cub: Path, spec: TwinSpec, items: list[_PlanItem], results: dict[int, tuple[Box, str]]
) -> None:
    """The CUB_200_2011 text files: images, boxes, labels, classes, train/test split."""
    with atomic_open(cub / "images.txt", "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(f"{iid} {key}.jpg\n" for _, iid, _, key in items)
    with atomic_open(cub / "bounding_boxes.txt", "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(
            f"{iid} {' '.join(f'{v:.1f}' for v in results[iid][0])}\n" for _, iid, _, _ in items
        )
    with atomic_open(cub / "image_class_labels.txt", "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(f"{iid} {c.class_id}\n" for c, iid, _, _ in items)
    with atomic_open(cub / "classes.txt", "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(f"{c.class_id} {c.dirname}\n" for c in make_classes(spec))
    with atomic_open(cub / "train_test_split.txt", "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(f"{iid} {int(split_of(c) == 'train')}\n" for c, iid, _, _ in items)


def _write_split_bundle(
    out: Path,
    spec: TwinSpec,
    split: str,
    items: list[_PlanItem],
    attributes: dict[str, dict[str, str]],
) -> None:
    """One split of the birds bundle: caption files and the three pickles.

    Adds each image's attributes to ``attributes`` (in image order).
    """
    rows = [it for it in items if split_of(it[0]) == split]
    encoder = TwinTextEncoder()
    keys, class_ids, embeddings = [], [], []
    for c, iid, _, key in rows:
        rng = np.random.default_rng([spec.seed, iid, 1])
        captions = make_captions(c, rng)
        cap_path = out / "text_c10" / f"{key}.txt"
        cap_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cap_path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(captions) + "\n")
        emb = encoder.encode_float64(list(captions))  # the twin text encoder, in float64
        emb += rng.normal(0.0, spec.noise, size=emb.shape)
        keys.append(key)
        class_ids.append(c.class_id)
        embeddings.append(emb.astype(np.float32))
        attributes[key] = {"body": c.body, "wing": c.wing, "size": c.size, "split": split}
    (out / split).mkdir(parents=True, exist_ok=True)
    dump_py2_pickle(keys, out / split / "filenames.pickle")
    dump_py2_pickle(class_ids, out / split / "class_info.pickle")
    dump_py2_pickle(embeddings, out / split / "char-CNN-RNN-embeddings.pickle")


def write_twin(
    spec: TwinSpec, out_dir: str | Path, *, workers: int = 1, progress: bool = True
) -> dict:
    """Write a complete twin under ``out_dir`` (same layout as the real StackGAN data root).

    Returns a summary dict (also written to ``<out_dir>/twin.json`` as the completion marker).
    """
    out = Path(out_dir)
    marker = out / "twin.json"
    if marker.exists():
        marker.unlink()  # an interrupted rewrite must not look complete
    cub = out / "CUB_200_2011"
    items = _plan(spec)
    jobs = [
        _ImageJob(iid, c, f"{key}.jpg", n, spec, str(cub / "images")) for c, iid, n, key in items
    ]
    start = time.perf_counter()
    results = _render_all(jobs, workers, progress)
    _write_cub_files(cub, spec, items, results)
    attributes: dict[str, dict[str, str]] = {}
    for split in ("train", "test"):
        _write_split_bundle(out, spec, split, items, attributes)
    write_json(out / "twin_attributes.json", attributes)
    modes = [m for _, m in results.values()]
    summary = {
        "spec": asdict(spec),
        "images": len(items),
        "classes": {c.dirname: split_of(c) for c in make_classes(spec)},
        "splits": {s: sum(split_of(c) == s for c, *_ in items) for s in ("train", "test")},
        "modes": {m: modes.count(m) for m in sorted(set(modes))},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(marker, {k: v for k, v in summary.items() if k != "seconds"})
    return summary
