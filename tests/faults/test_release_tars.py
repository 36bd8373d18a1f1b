"""The official release's tars hold what a repack or a careless tool puts there: two tars of one
class, links, devices. Every member is indexed, reported or ignored by name, never lost silently.

Tars built with tarfile in the layout of tests/test_ilsvrc.py, prepared by the real prepare."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_ilsvrc import ID_OF, WNIDS, jpeg, tar_bytes, write_devkit

from alexnet.config.sections import DataParams
from alexnet.core.layout import DATASET_FILE, INDEX_FILE, QUALITY_REPORT_FILE
from alexnet.data import ilsvrc
from alexnet.data.prepare import BadImageError, prepare

TRAIN = ilsvrc.TRAIN_TAR


def release(root: Path, outer: list[tuple[str, bytes]], val: bytes | None = None) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir()
    (root / TRAIN).write_bytes(tar_bytes(outer))
    (root / ilsvrc.VAL_TAR).write_bytes(val or tar_bytes([("ILSVRC2012_val_00000001.JPEG", jpeg(rng))]))
    write_devkit(root / ilsvrc.DEVKIT, [ID_OF[WNIDS[0]]])
    return root


def prepared(out: Path, root: Path, on_bad_image: str = "skip") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    prepare(out, DataParams(source="imagenet", root=root, on_bad_image=on_bad_image), workers=1, progress=False)
    return (pd.read_parquet(out / INDEX_FILE), pd.read_csv(out / QUALITY_REPORT_FILE),
            json.loads((out / DATASET_FILE).read_text()))


def class_images(rng, wnid: str, tag: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{wnid}_{tag}{k}.JPEG", jpeg(rng, (40 + k, 36))) for k in range(n)]


@pytest.mark.parametrize("sub_first", [False, True], ids=["top-first", "sub-first"])
def test_two_tars_of_one_class_lose_no_image_and_name_each(tmp_path, sub_first):
    rng = np.random.default_rng(0)
    wnid = WNIDS[0]
    top, sub = class_images(rng, wnid, "top", 4), class_images(rng, wnid, "sub", 4)
    others = [(f"{w}.tar", tar_bytes(class_images(rng, w, "", 2))) for w in WNIDS[1:]]
    pair = [(f"{wnid}.tar", tar_bytes(top)), (f"sub/{wnid}.tar", tar_bytes(sub))]
    root = release(tmp_path / "release", (pair[::-1] if sub_first else pair) + others)

    index, report, dataset = prepared(tmp_path / "prepared", root)
    # 4 + 4 + 2 + 2 images in train: before, 9 were found and the survivor's paths named the other tar.
    assert dataset["splits"]["train"] == {"found": 12, "indexed": 8, "reported": 4, "ignored": 0}
    ours = index[(index["wnid"] == wnid) & (index["split"] == "train")]
    assert sorted(ours["path"]) == [f"{TRAIN}/{wnid}.tar/{name}" for name, _ in top]
    for row in ours.itertuples():  # each path's bytes are the image of that name
        assert ilsvrc.read_member(root / TRAIN, row.offset, row.bytes) == dict(top)[row.path.rsplit("/", 1)[1]]
    assert sorted(report["path"]) == [f"{TRAIN}/sub/{wnid}.tar/{name}" for name, _ in sub]
    assert set(report["reason"]) == {ilsvrc.CLASS_TAR_TWICE}
    assert all(f"{TRAIN}/{wnid}.tar is indexed, sub/{wnid}.tar is not" in d for d in report["detail"])

    with pytest.raises(BadImageError, match=rf"{TRAIN}/sub/{wnid}.tar/{sub[0][0]}: class tar twice"):
        prepared(tmp_path / "failed", root, on_bad_image="fail")


def test_a_class_tar_in_a_subfolder_is_read_under_its_own_path(tmp_path):
    rng = np.random.default_rng(0)
    files = {w: class_images(rng, w, "", 2) for w in WNIDS}
    outer = [(f"{w}.tar" if w != WNIDS[2] else f"sub/{w}.tar", tar_bytes(files[w])) for w in WNIDS]
    index, report, _ = prepared(tmp_path / "prepared", release(tmp_path / "release", outer))
    assert report.empty
    ours = index[index["wnid"] == WNIDS[2]]
    assert sorted(ours["path"]) == [f"{TRAIN}/sub/{WNIDS[2]}.tar/{name}" for name, _ in files[WNIDS[2]]]


def test_links_inside_the_tars_are_reported_not_dropped(tmp_path):
    rng = np.random.default_rng(0)
    files = {w: class_images(rng, w, "", 2) for w in WNIDS}
    first = files[WNIDS[0]][0][0]
    inner = {w: tar_bytes(files[w]) for w in WNIDS}
    inner[WNIDS[0]] = tar_bytes(files[WNIDS[0]], [("soft.JPEG", tarfile.SYMTYPE, first),
                                                       ("hard.JPEG", tarfile.LNKTYPE, first)])
    outer_links = [(f"{WNIDS[0]}-copy.tar", tarfile.SYMTYPE, f"{WNIDS[0]}.tar")]
    outer = tar_bytes([(f"{w}.tar", data) for w, data in inner.items()], outer_links)
    val_name = "ILSVRC2012_val_00000001.JPEG"
    val = tar_bytes([(val_name, jpeg(rng))], [("ILSVRC2012_val_00000002.JPEG", tarfile.LNKTYPE, val_name)])
    root = tmp_path / "release"
    release(root, [], val)
    (root / TRAIN).write_bytes(outer)

    index, report, dataset = prepared(tmp_path / "prepared", root)
    assert dataset["splits"] == {"train": {"found": 9, "indexed": 6, "reported": 3, "ignored": 0},
                                 "val": {"found": 2, "indexed": 1, "reported": 1, "ignored": 0}}
    rows = {r.path: r for r in report.itertuples()}
    expected = {f"{TRAIN}/{WNIDS[0]}.tar/soft.JPEG": f"a symlink inside the tar (-> {first})",
                f"{TRAIN}/{WNIDS[0]}.tar/hard.JPEG": f"a hard link inside the tar (-> {first})",
                f"{TRAIN}/{WNIDS[0]}-copy.tar": f"a symlink inside the tar (-> {WNIDS[0]}.tar)",
                f"{ilsvrc.VAL_TAR}/ILSVRC2012_val_00000002.JPEG": f"a hard link inside the tar (-> {val_name})"}
    assert set(rows) == set(expected)
    for path, detail in expected.items():
        assert rows[path].reason == ilsvrc.LINK_IN_TAR and rows[path].detail == f"{detail}, not an image file"
    assert len(index) == 7 and not index["path"].str.contains("soft|hard|copy").any()
