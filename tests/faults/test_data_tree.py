"""Issue 11 item 8: data-tree edge cases are decided and stated, never handled silently.

Empty class folders, dangling symlinks and symlink loops, symlinked class folders, and the files
an OS leaves behind (.DS_Store, Thumbs.db, ._* AppleDouble, desktop.ini)."""

import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from alexnet.config.sections import DataParams
from alexnet.core.layout import CLASSES_FILE, DATASET_FILE, IGNORED_FILE, INDEX_FILE, QUALITY_REPORT_FILE
from alexnet.data.prepare import prepare


def png_bytes(size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def tree(root: Path, classes=("a", "c")) -> Path:
    for wnid in classes:
        for split, n in (("train", 2), ("val", 1)):
            for k in range(n):
                path = root / split / wnid / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png_bytes((20 + k, 16)))
    return root


def run(tmp_path: Path, root: Path, source="folder", **data) -> tuple[pd.DataFrame, pd.DataFrame, dict, Path]:
    out = tmp_path / "prepared"
    prepare(out, DataParams(source=source, root=root, **data), workers=1, progress=False)
    return (pd.read_parquet(out / INDEX_FILE), pd.read_csv(out / QUALITY_REPORT_FILE),
            json.loads((out / DATASET_FILE).read_text()), out)


def test_an_empty_class_folder_is_skipped_and_stated_for_a_folder_source(tmp_path):
    root = tree(tmp_path / "data")
    (root / "train" / "b").mkdir()  # empty, sorts between a and c
    (root / "train" / "d").mkdir()
    (root / "train" / "d" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # only an artifact: empty too
    index, report, dataset, out = run(tmp_path, root)
    # Labels are the sorted names of the classes that have files: a=0, c=1, not c=2.
    assert [(c["label"], c["wnid"]) for c in dataset["classes"]] == [(0, "a"), (1, "c")]
    assert dataset["num_classes"] == 2
    assert pd.read_csv(out / CLASSES_FILE)["wnid"].tolist() == ["a", "c"]
    assert dataset["empty_class_folders"] == ["train/b", "train/d"]
    assert sorted(set(index["label"])) == [0, 1]
    assert report.empty


@pytest.mark.parametrize("what", ["empty", "only an artifact"])
def test_an_empty_class_folder_of_imagenet_is_refused_by_name(tmp_path, what):
    # ImageNet's 1000 labels are positions among its sorted wnids: a class missing from the tree
    # would shift every label after it, so the tree is refused rather than relabelled.
    root = tree(tmp_path / "data", classes=("n01", "n03"))
    (root / "train" / "n02").mkdir()
    if what != "empty":
        (root / "train" / "n02" / "Thumbs.db").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"train/n02: empty class folder"):
        run(tmp_path, root, source="imagenet")


def test_dangling_symlinks_and_loops_are_reported(tmp_path):
    root = tree(tmp_path / "data")
    cls = root / "train" / "a"
    (cls / "gone.JPEG").symlink_to(cls / "deleted.JPEG")
    (cls / "self.JPEG").symlink_to("self.JPEG")
    (cls / "ping.JPEG").symlink_to("pong.JPEG")
    (cls / "pong.JPEG").symlink_to("ping.JPEG")
    (cls / "up").symlink_to("..")  # a folder loop: train/a/up/a/up/...
    (root / "val" / "a" / "ok.png").symlink_to(cls / "0.png")  # a good link is an image like any other
    (root / "train" / "z").symlink_to(root)  # a "class folder" that is a loop: reported, not a class
    index, report, dataset, _ = run(tmp_path, root)
    reasons = dict(zip(report["path"], report["reason"], strict=True))
    assert reasons == {"train/a/gone.JPEG": "dangling symlink", "train/a/self.JPEG": "symlink loop",
                       "train/a/ping.JPEG": "symlink loop", "train/a/pong.JPEG": "symlink loop",
                       "train/a/up": "symlink loop", "train/z": "symlink loop"}
    assert "val/a/ok.png" in set(index["path"])
    assert [c["wnid"] for c in dataset["classes"]] == ["a", "c"]
    assert dataset["splits"]["train"] == {"found": 10, "indexed": 4, "reported": 6, "ignored": 0}


def test_a_symlinked_class_folder_is_read(tmp_path):
    root = tree(tmp_path / "data")
    elsewhere = tree(tmp_path / "elsewhere", classes=("b",))
    (root / "train" / "b").symlink_to(elsewhere / "train" / "b")
    index, report, dataset, _ = run(tmp_path, root)
    assert [c["wnid"] for c in dataset["classes"]] == ["a", "b", "c"]
    assert sorted(index[index["wnid"] == "b"]["path"]) == ["train/b/0.png", "train/b/1.png"]
    assert report.empty


ARTIFACTS = ("train/.DS_Store", "train/a/.DS_Store", "train/a/._0.png", "train/c/Thumbs.db",
             "val/desktop.ini", "val/a/._0.png", "train/c/DESKTOP.INI")


def test_os_artifacts_are_ignored_counted_and_listed_so_fail_does_not_abort(tmp_path):
    root = tree(tmp_path / "data")
    for rel in ARTIFACTS:
        (root / rel).write_bytes(b"\x00\x05\x16\x07 AppleDouble or Finder junk")
    index, report, dataset, out = run(tmp_path, root, on_bad_image="fail")
    assert report.empty and len(index) == 6
    assert dataset["splits"] == {"train": {"found": 9, "indexed": 4, "reported": 0, "ignored": 5},
                                 "val": {"found": 4, "indexed": 2, "reported": 0, "ignored": 2}}
    ignored = pd.read_csv(out / IGNORED_FILE)
    assert sorted(ignored["path"]) == sorted(ARTIFACTS)
    assert set(ignored["reason"]) == {"OS artifact"}
    for split in ("train", "val"):
        c = dataset["splits"][split]
        assert c["found"] == c["indexed"] + c["reported"] + c["ignored"]


def test_an_empty_per_class_tar_of_the_release_is_refused_by_name(tmp_path):
    import numpy as np
    from test_ilsvrc import ID_OF, WNIDS, jpeg, tar_bytes, write_devkit

    from alexnet.data import ilsvrc

    rng = np.random.default_rng(0)
    root = tmp_path / "release"
    root.mkdir()
    inner = {w: tar_bytes([(f"{w}_0.JPEG", jpeg(rng))] if w != WNIDS[1] else []) for w in WNIDS}
    (root / ilsvrc.TRAIN_TAR).write_bytes(tar_bytes([(f"{w}.tar", data) for w, data in inner.items()]))
    (root / ilsvrc.VAL_TAR).write_bytes(tar_bytes([("ILSVRC2012_val_00000001.JPEG", jpeg(rng))]))
    write_devkit(root / ilsvrc.DEVKIT, [ID_OF[WNIDS[0]]])
    with pytest.raises(ValueError, match=rf"{WNIDS[1]}.tar holds no images"):
        run(tmp_path, root, source="imagenet")


def test_os_artifacts_and_odd_names_inside_the_release_tars(tmp_path):
    # A tar made on a Mac holds a ._<name> AppleDouble member beside each file.
    import numpy as np
    from test_ilsvrc import ID_OF, WNIDS, jpeg, tar_bytes, write_devkit

    from alexnet.data import ilsvrc

    rng = np.random.default_rng(0)
    junk = b"\x00\x05\x16\x07AppleDouble"
    root = tmp_path / "release"
    root.mkdir()
    inner = {w: tar_bytes([(f"{w}_0.JPEG", jpeg(rng)), (f"._{w}_0.JPEG", junk)]) for w in WNIDS}
    inner[WNIDS[2]] = tar_bytes([(f"._{WNIDS[2]}_0.JPEG", junk), (f"{WNIDS[2]}_0.JPEG", jpeg(rng)),
                                 (os.fsdecode(b"\xff.JPEG"), jpeg(rng))])
    outer = [(f"{w}.tar", data) for w, data in inner.items()] + [(f"._{WNIDS[0]}.tar", junk), (".DS_Store", junk)]
    (root / ilsvrc.TRAIN_TAR).write_bytes(tar_bytes(outer))
    (root / ilsvrc.VAL_TAR).write_bytes(tar_bytes([("ILSVRC2012_val_00000001.JPEG", jpeg(rng)),
                                                   ("._ILSVRC2012_val_00000001.JPEG", junk)]))
    write_devkit(root / ilsvrc.DEVKIT, [ID_OF[WNIDS[0]]])
    index, report, dataset, out = run(tmp_path, root, source="imagenet", on_bad_image="skip")
    assert [c["wnid"] for c in dataset["classes"]] == WNIDS
    assert dataset["splits"] == {"train": {"found": 9, "indexed": 3, "reported": 1, "ignored": 5},
                                 "val": {"found": 2, "indexed": 1, "reported": 0, "ignored": 1}}
    assert list(report["reason"]) == ["name not UTF-8"]
    assert list(report["path"]) == [f"{ilsvrc.TRAIN_TAR}/{WNIDS[2]}.tar/\\xff.JPEG"]
    assert set(pd.read_csv(out / IGNORED_FILE)["reason"]) == {"OS artifact"}
