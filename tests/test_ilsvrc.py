"""The official ILSVRC-2012 release read inside its tars: the same index, labels and shards as the
same images extracted into train/<wnid>/ and val/<wnid>/."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.io import savemat

from alexnet.config.sections import DataParams, PreprocessParams
from alexnet.core.layout import CLASSES_FILE, INDEX_FILE, MANIFEST_FILE, MEAN_FILE, PCA_FILE, QUALITY_REPORT_FILE
from alexnet.data import ilsvrc
from alexnet.data.prepare import prepare
from alexnet.data.preprocess import preprocess

# Not in sorted order in the devkit, as in the real meta.mat (IDs follow another order than wnids).
SYNSETS = [  # ILSVRC2012_ID, WNID, words, num_children
    (1, "n02119789", "kit fox, Vulpes macrotis", 0),
    (2, "n01440764", "tench, Tinca tinca", 0),
    (3, "n01443537", "goldfish, Carassius auratus", 0),
    (4, "n09999999", "unused leaf", 0),
    (5, "n00001740", "entity", 3),  # a non-leaf synset: never a class
]
WNIDS = sorted(["n02119789", "n01440764", "n01443537"])
WORDS = {w: words for _, w, words, _ in SYNSETS}
ID_OF = {w: i for i, w, _, _ in SYNSETS}


def jpeg(rng, size=(50, 40), mode="RGB", fmt="JPEG") -> bytes:
    pixels = rng.integers(0, 256, (size[1], size[0], 4 if mode == "CMYK" else 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "CMYK" if mode == "CMYK" else "RGB")
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes]], links: list[tuple[str, bytes, str]] = ()) -> bytes:
    """A tar of `members`, then one link member per (name, tarfile type, target) in `links`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buf.getvalue()


def write_devkit(path: Path, truth: list[int]) -> None:
    """The devkit: meta.mat (written by scipy, as MATLAB structs) and the val ground truth."""
    synsets = np.array(SYNSETS, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    lines = "".join(f"{i}\n" for i in truth).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((ilsvrc.META, meta.getvalue()), (ilsvrc.GROUND_TRUTH, lines)):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def images():
    """{wnid: [(file name, bytes)]} for train, and [(val file name, wnid, bytes)] in val-file order."""
    rng = np.random.default_rng(0)
    train = {w: [(f"{w}_{k}.JPEG", jpeg(rng, (40 + 7 * k, 36 + 5 * k))) for k in range(4)] for w in WNIDS}
    first, second = WNIDS[0], WNIDS[1]
    train[first].append((f"{first}_cmyk.JPEG", jpeg(rng, mode="CMYK")))  # as in the real train set
    train[first].append((f"{first}_png.JPEG", jpeg(rng, fmt="PNG")))  # a PNG named .JPEG
    train[second].append((f"{second}_cut.JPEG", jpeg(rng, (60, 60))[:-300]))  # truncated
    val = [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", WNIDS[i % 3], jpeg(rng, (45, 52))) for i in range(7)]
    return train, val


@pytest.fixture(scope="module")
def release(images, tmp_path_factory) -> Path:
    """The three files of the official release, in its layout."""
    train, val = images
    root = tmp_path_factory.mktemp("release")
    (root / ilsvrc.TRAIN_TAR).write_bytes(tar_bytes([(f"{w}.tar", tar_bytes(files)) for w, files in train.items()]))
    (root / ilsvrc.VAL_TAR).write_bytes(tar_bytes([(name, data) for name, _, data in val]))
    write_devkit(root / ilsvrc.DEVKIT, [ID_OF[w] for _, w, _ in val])
    return root


@pytest.fixture(scope="module")
def extracted(images, tmp_path_factory) -> Path:
    """The same images as an extracted tree, names from LOC_synset_mapping.txt."""
    train, val = images
    root = tmp_path_factory.mktemp("extracted")
    for wnid, files in train.items():
        for name, data in files:
            (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
            (root / "train" / wnid / name).write_bytes(data)
    for name, wnid, data in val:
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnid / name).write_bytes(data)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {WORDS[w]}\n" for w in WNIDS))
    return root


@pytest.fixture(scope="module")
def prepared(release, extracted, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, root in (("tars", release), ("tree", extracted)):
        out[name] = tmp_path_factory.mktemp(f"prepared-{name}")
        prepare(out[name], DataParams(source="imagenet", root=root), workers=2, progress=False)
    return out


def test_offsets_locate_each_member_in_the_outer_tar(release, images):
    train, _ = images
    with tarfile.open(release / ilsvrc.TRAIN_TAR) as outer:
        for info in outer:
            with tarfile.open(fileobj=outer.extractfile(info)) as inner:
                for member in inner:
                    expected = dict(train[info.name.removesuffix(".tar")])[member.name]
                    offset = info.offset_data + member.offset_data
                    assert ilsvrc.read_member(release / ilsvrc.TRAIN_TAR, offset, member.size) == expected


def test_labels_names_and_quality_report(prepared, release, images):
    out = prepared["tars"]
    classes = pd.read_csv(out / CLASSES_FILE)
    assert classes["wnid"].tolist() == WNIDS and classes["label"].tolist() == [0, 1, 2]
    assert classes["name"].tolist() == [WORDS[w] for w in WNIDS]
    index = pd.read_parquet(out / INDEX_FILE).set_index("path")
    _, val = images
    for name, wnid, _ in val:
        assert index.loc[f"{ilsvrc.VAL_TAR}/{name}", "label"] == WNIDS.index(wnid)
    first = f"{ilsvrc.TRAIN_TAR}/{WNIDS[0]}.tar/{WNIDS[0]}"
    assert index.loc[f"{first}_cmyk.JPEG", "mode"] == "CMYK"
    assert index.loc[f"{first}_png.JPEG", "format"] == "PNG"
    for path, row in index.iterrows():  # every row's bytes are where the index says
        data = ilsvrc.read_member(release / path.split("/")[0], row["offset"], row["bytes"])
        assert len(data) == row["bytes"]
    report = pd.read_csv(out / QUALITY_REPORT_FILE)
    assert report["path"].tolist() == [f"{ilsvrc.TRAIN_TAR}/{WNIDS[1]}.tar/{WNIDS[1]}_cut.JPEG"]
    assert report["reason"].tolist() == ["truncated"]
    tree_report = pd.read_csv(prepared["tree"] / QUALITY_REPORT_FILE)
    assert tree_report["reason"].tolist() == ["truncated"]


def test_same_index_as_the_extracted_tree(prepared):
    tars, tree = (pd.read_parquet(prepared[k] / INDEX_FILE) for k in ("tars", "tree"))
    columns = ["split", "wnid", "label", "bytes", "width", "height", "mode", "format", "sha256"]
    pd.testing.assert_frame_equal(tars[columns], tree[columns])
    assert (prepared["tars"] / CLASSES_FILE).read_bytes() == (prepared["tree"] / CLASSES_FILE).read_bytes()


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_shards_byte_identical_to_the_extracted_tree(prepared, tmp_path, fmt):
    spec = PreprocessParams(stored_size=32, format=fmt, shard_size=4, workers=2)
    for name in ("tars", "tree"):
        preprocess(prepared[name], tmp_path / name, spec, progress=False)
    manifest = (tmp_path / "tars" / MANIFEST_FILE).read_bytes()
    assert manifest == (tmp_path / "tree" / MANIFEST_FILE).read_bytes()  # every shard's sha256
    files = [MEAN_FILE, PCA_FILE]
    for split in json.loads(manifest)["splits"].values():
        files += [f for s in split["shards"] for f in (s["file"], s["labels"]["file"])]
    assert len(files) > 6
    for f in files:
        assert (tmp_path / "tars" / f).read_bytes() == (tmp_path / "tree" / f).read_bytes(), f


def test_layout_detection_and_a_missing_release_file(release, extracted, tmp_path):
    assert ilsvrc.is_release(release) and not ilsvrc.is_release(extracted)
    with pytest.raises(FileNotFoundError, match=f"no {ilsvrc.TRAIN_TAR}"):
        prepare(tmp_path / "p", DataParams(source="imagenet", root=extracted, layout="tars"), progress=False)
    # layout=tree on a folder of tars: no train/ folder, said plainly
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        prepare(tmp_path / "p", DataParams(source="imagenet", root=release, layout="tree"), progress=False)


def test_val_file_without_a_class_is_reported(release, tmp_path):
    root = tmp_path / "release"
    root.mkdir()
    (root / ilsvrc.TRAIN_TAR).symlink_to(release / ilsvrc.TRAIN_TAR)
    # val 1: a class; 2: a non-leaf synset; 3: a leaf without a per-class tar; 99: past the
    # ground truth's end; "other": not named as a val file
    write_devkit(root / ilsvrc.DEVKIT, [2, 5, 4])
    rng = np.random.default_rng(1)
    names = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG",
             "ILSVRC2012_val_00000099.JPEG", "other.JPEG"]
    (root / ilsvrc.VAL_TAR).write_bytes(tar_bytes([(name, jpeg(rng)) for name in names]))
    dataset = prepare(tmp_path / "p", DataParams(source="imagenet", root=root), progress=False)
    assert dataset["splits"]["val"] == {"found": 5, "indexed": 1, "reported": 4, "ignored": 0}
    index = pd.read_parquet(tmp_path / "p" / INDEX_FILE)
    assert index[index["split"] == "val"]["label"].tolist() == [WNIDS.index("n01440764")]
    report = pd.read_csv(tmp_path / "p" / QUALITY_REPORT_FILE)
    val = report[report["split"] == "val"].set_index("path")["detail"]
    assert set(report[report["split"] == "val"]["reason"]) == {"unknown class"}
    assert "ILSVRC2012_ID 5 is not a leaf synset" in val[f"{ilsvrc.VAL_TAR}/{names[1]}"]
    assert "'n09999999' (ILSVRC2012_ID 4) has no per-class tar" in val[f"{ilsvrc.VAL_TAR}/{names[2]}"]
    assert "no line 99" in val[f"{ilsvrc.VAL_TAR}/{names[3]}"]
    assert "ILSVRC2012_val_<number>" in val[f"{ilsvrc.VAL_TAR}/other.JPEG"]
