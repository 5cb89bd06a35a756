"""The synthetic twin: real byte formats, deterministic output, captions that state the
attributes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image

from stackgan.data.cub import DataPaths, read_dataset
from stackgan.data.twin import TwinSpec, make_classes, split_of, write_twin
from stackgan.text.twin import COLOUR_NAMES, embed_caption, parse_caption_attributes
from tests.helpers import reference_unpickle


def _tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    spec = TwinSpec(num_classes=4, images_per_class=3, seed=5, min_side=64, max_side=96)
    write_twin(spec, tmp_path / "a", progress=False)
    write_twin(spec, tmp_path / "b", workers=2, progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    write_twin(
        TwinSpec(num_classes=4, images_per_class=3, seed=6, min_side=64, max_side=96),
        tmp_path / "c",
        progress=False,
    )
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_layout_and_formats_match_the_real_data(tiny_twin):
    cub = tiny_twin / "CUB_200_2011"
    for name in ("images.txt", "bounding_boxes.txt", "classes.txt", "image_class_labels.txt"):
        assert (cub / name).is_file()
    # float boxes "x y w h"
    first = (cub / "bounding_boxes.txt").read_text().splitlines()[0].split()
    assert len(first) == 5 and all("." in v for v in first[1:])
    # Python-2 pickles that need latin1, read by the standard library's unpickler (globals
    # limited to numpy's array reconstruction), as the reference code reads them.
    emb = reference_unpickle(tiny_twin / "train" / "char-CNN-RNN-embeddings.pickle", "latin1")
    assert isinstance(emb, list) and emb[0].shape == (10, 1024) and emb[0].dtype == np.float32
    keys = reference_unpickle(tiny_twin / "train" / "filenames.pickle", "latin1")
    assert all("/" in k and not k.endswith(".jpg") for k in keys)
    # text_c10 with 10 captions per image
    cap_files = list((tiny_twin / "text_c10").rglob("*.txt"))
    assert len(cap_files) == 40
    assert all(len(p.read_text().splitlines()) == 10 for p in cap_files)


def test_grayscale_cmyk_and_border_boxes_occur(tmp_path):
    spec = TwinSpec(
        num_classes=4,
        images_per_class=10,
        seed=1,
        min_side=64,
        max_side=96,
        grayscale_frac=0.2,
        cmyk_frac=0.2,
        border_frac=0.5,
    )
    summary = write_twin(spec, tmp_path / "t", progress=False)
    assert summary["modes"].get("L", 0) > 0 and summary["modes"].get("CMYK", 0) > 0
    cub = tmp_path / "t" / "CUB_200_2011"
    paths = {
        int(i): p for i, p in (ln.split() for ln in (cub / "images.txt").read_text().splitlines())
    }
    touching = 0
    for line in (cub / "bounding_boxes.txt").read_text().splitlines():
        iid, x, y, w, h = line.split()
        with Image.open(cub / "images" / paths[int(iid)]) as im:
            width, height = im.size
        x, y, w, h = map(float, (x, y, w, h))
        assert x >= 0 and y >= 0 and x + w <= width + 1e-6 and y + h <= height + 1e-6
        touching += x == 0 or y == 0 or int(x + w) >= width or int(y + h) >= height
    assert touching >= 5


def test_captions_state_the_class_attributes(tiny_twin):
    attrs = json.loads((tiny_twin / "twin_attributes.json").read_text())
    data = read_dataset(DataPaths.from_root(tiny_twin))
    for split in ("train", "test"):
        for sample in data[split].samples:
            truth = attrs[sample.key]
            for caption in sample.captions:
                assert parse_caption_attributes(caption) == {
                    "body": truth["body"],
                    "wing": truth["wing"],
                }, caption
    wordings = {c for s in data["train"].samples for c in s.captions}
    assert len(wordings) > 10  # varied wording


def test_classes_cover_colours_in_training_and_are_distinct():
    classes = make_classes(TwinSpec(num_classes=20))
    assert len({(c.body, c.wing, c.size) for c in classes}) == 20
    train = [c for c in classes if split_of(c) == "train"]
    assert len(train) == 15
    assert {c.body for c in train} == set(COLOUR_NAMES)  # the classifier and G see every colour
    assert {c.wing for c in train} == set(COLOUR_NAMES)


def test_cub_like_split_tests_composition_not_memorisation():
    """200 classes, 150/50; no test colour pair occurs in training (in any size), and every
    test attribute value occurs in several training classes."""
    for seed in (0, 1):
        classes = make_classes(TwinSpec(num_classes=200, seed=seed))
        train = [c for c in classes if split_of(c) == "train"]
        test = [c for c in classes if split_of(c) == "test"]
        assert (len(train), len(test)) == (150, 50)
        assert len({(c.body, c.wing, c.size) for c in classes}) == 200
        train_pairs = {(c.body, c.wing) for c in train}
        assert not any((c.body, c.wing) in train_pairs for c in test)
        for c in test:
            assert sum(t.body == c.body for t in train) >= 5, c
            assert sum(t.wing == c.wing for t in train) >= 5, c
            assert sum(t.size == c.size for t in train) >= 5, c
            # the body colour is seen with several wing colours, and the wing with several bodies
            assert len({t.wing for t in train if t.body == c.body}) >= 3
            assert len({t.body for t in train if t.wing == c.wing}) >= 3


def test_small_twins_keep_the_split_properties():
    for n in (4, 8, 20, 40, 120):
        classes = make_classes(TwinSpec(num_classes=n))
        train = [c for c in classes if split_of(c) == "train"]
        test = [c for c in classes if split_of(c) == "test"]
        assert len(test) == n // 4 and len({(c.body, c.wing, c.size) for c in classes}) == n
        train_pairs = {(c.body, c.wing) for c in train}
        for c in test:
            assert (c.body, c.wing) not in train_pairs
            assert c.body in {t.body for t in train} and c.wing in {t.wing for t in train}


def test_embeddings_follow_the_text():
    a = embed_caption("this small bird has a red body and blue wings.")
    b = embed_caption("a small bird with blue wings and a red belly.")
    swapped = embed_caption("this small bird has a blue body and red wings.")
    assert np.array_equal(a, embed_caption("this small bird has a red body and blue wings."))
    assert np.corrcoef(a, b)[0, 1] > 0.9  # same attributes, other wording
    assert np.corrcoef(a, swapped)[0, 1] < 0.5  # same words, other binding


def test_embeddings_are_pinned_and_calls_cannot_change_later_ones():
    # The twin encoder's output is part of every twin's bytes (TWIN_ENCODER_VERSION "1"):
    # this digest was computed before the per-label vectors were cached.
    caption = "this small bird has a red body and blue wings."
    first = embed_caption(caption)
    assert hashlib.sha256(first.tobytes()).hexdigest() == (
        "abfa68532fc8834e06609ed5ec3f1a53dfca04d49c5af8fb3de1bf6963bc9ef9"
    )
    first += 1.0  # a caller's in-place change must not reach the cached label vectors
    assert np.array_equal(embed_caption(caption) + 1.0, first)
