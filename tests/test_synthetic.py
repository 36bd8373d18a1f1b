"""The synthetic source: deterministic bytes, ImageNet layout, the real data set's quirks."""

import hashlib
from pathlib import Path

from PIL import Image

from alexnet.data.prepare import inspect_image
from alexnet.data.synthetic import SHAPES, TEXTURES, generate, synthetic_classes


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, tiny):
    generate(tmp_path / "a", **tiny, workers=1)
    generate(tmp_path / "b", **tiny, workers=2)
    generate(tmp_path / "c", **{**tiny, "seed": 1})
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and sum(a[k] != c[k] for k in a) >= len(a) - 1  # mapping file may match


def test_layout_sizes_and_synset_mapping(tmp_path, tiny):
    counts = generate(tmp_path, **tiny)
    assert counts == {"train": 12, "val": 6}
    wnids = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert wnids == ["n00000000", "n00000001", "n00000002"]
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == wnids
    assert sorted(p.name for p in (tmp_path / "train" / "n00000001").iterdir())[0] == "n00000001_0.JPEG"
    mapping = (tmp_path / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in mapping] == wnids and all(" " in line for line in mapping)
    for path in tmp_path.rglob("*.JPEG"):
        facts = inspect_image(path)
        if "width" in facts:
            assert tiny["min_side"] <= min(facts["width"], facts["height"]) <= tiny["max_side"]


def test_quirks_are_in_train_only(tmp_path, tiny):
    generate(tmp_path, **tiny)
    kinds = {"train": [], "val": []}
    for split in kinds:
        for path in sorted((tmp_path / split).rglob("*.JPEG")):
            facts = inspect_image(path)
            kinds[split].append(facts.get("reason") or f"{facts['format']} {facts['mode']}")
    assert kinds["train"].count("truncated") == 1  # exactly one unusable file
    assert kinds["train"].count("PNG RGB") == 1
    assert kinds["train"].count("JPEG CMYK") == 2
    assert kinds["train"].count("JPEG L") == 3
    assert set(kinds["val"]) == {"JPEG RGB"}


def test_classes_are_distinct_and_named():
    ten = synthetic_classes(10)
    assert len({c.shape for c in ten}) == 10 and len({c.name for c in ten}) == 10
    many = synthetic_classes(1000)
    assert len({(c.shape, c.texture, round(c.hue, 6)) for c in many}) == 1000
    assert len({(c.shape, c.texture) for c in many}) == len(SHAPES) * len(TEXTURES)
    assert many[123].wnid == "n00000123"


def test_images_vary_in_size_and_content(tmp_path, tiny):
    generate(tmp_path, **{**tiny, "classes": 2, "train_per_class": 10})
    sizes = {Image.open(p).size for p in (tmp_path / "val").rglob("*.JPEG")}
    assert len(sizes) > 1
