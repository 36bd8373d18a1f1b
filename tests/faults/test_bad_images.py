"""Issue 11 item 1: images that used to stop prepare now become quality-report rows, or (fail) one
error naming the file; nothing else is lost, and preprocess decodes what prepare indexed."""

import io
import json
import os
import struct
import threading
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from alexnet.config.params import parse_params
from alexnet.config.sections import DataParams, PreprocessParams
from alexnet.core.layout import DATASET_FILE, INDEX_FILE, MANIFEST_FILE, QUALITY_REPORT_FILE
from alexnet.data.imageops import no_pillow_limit
from alexnet.data.prepare import BadImageError, prepare
from alexnet.data.preprocess import preprocess
from stages.prepare import main as prepare_main

PILLOW_DEFAULT_LIMIT = Image.MAX_IMAGE_PIXELS


def png_bytes(size=(24, 16), color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels, all black: a few KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0, then the packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tree(root: Path) -> Path:
    """A folder-layout tree: 2 classes, 3 good train images each, 1 good val image each."""
    for wnid in ("a", "b"):
        for k in range(3):
            path = root / "train" / wnid / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes((24 + k, 16), (k * 40, 100, 200)))
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnid / "v.png").write_bytes(png_bytes((20, 30)))
    return root


def folder(root: Path, **data) -> DataParams:
    return DataParams(source="folder", root=root, **data)


def read(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return (pd.read_parquet(out / INDEX_FILE), pd.read_csv(out / QUALITY_REPORT_FILE),
            json.loads((out / DATASET_FILE).read_text()))


def test_the_default_limit_is_pillows():
    assert DataParams().max_image_pixels == PILLOW_DEFAULT_LIMIT


@pytest.mark.parametrize("workers", [1, 2])
def test_a_decompression_bomb_is_a_report_row(tmp_path, workers):
    root = tree(tmp_path / "data")
    (root / "train" / "b" / "bomb.png").write_bytes(bomb_png())
    out = tmp_path / "prepared"
    prepare(out, folder(root), workers=workers, progress=False)
    index, report, dataset = read(out)
    assert list(report["path"]) == ["train/b/bomb.png"]
    assert report["reason"][0] == "too many pixels"
    assert "20000x20000" in report["detail"][0] and "data.max_image_pixels" in report["detail"][0]
    assert len(index) == 8  # nothing else lost
    assert dataset["splits"]["train"] == {"found": 7, "indexed": 6, "reported": 1, "ignored": 0}
    assert dataset["max_image_pixels"] == PILLOW_DEFAULT_LIMIT


def test_a_decompression_bomb_with_fail_is_one_line_naming_the_file(tmp_path, capsys):
    root = tree(tmp_path / "data")
    (root / "train" / "a" / "bomb.png").write_bytes(bomb_png())
    params = tmp_path / "params.yaml"
    params.write_text(f"data: {{source: folder, root: {root}, on_bad_image: fail}}\npreprocess: {{workers: 2}}\n")
    assert prepare_main(["--params", str(params), "--out", str(tmp_path / "prepared")]) == 2
    err = capsys.readouterr().err
    assert "train/a/bomb.png: too many pixels" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("workers", [1, 2])
def test_the_limit_is_a_param_applied_in_the_workers(tmp_path, workers):
    # 40x40 = 1600 pixels: above a limit of 1000 but below Pillow's own error threshold (twice
    # the limit, where it only warns): the param is the limit, not twice it.
    root = tree(tmp_path / "data")
    (root / "train" / "a" / "big.png").write_bytes(png_bytes((40, 40)))
    out = tmp_path / "prepared"
    prepare(out, folder(root, max_image_pixels=1000), workers=workers, progress=False)
    index, report, dataset = read(out)
    assert list(report["path"]) == ["train/a/big.png"]
    assert report["reason"][0] == "too many pixels"
    assert len(index) == 8
    assert dataset["max_image_pixels"] == 1000
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT  # the process's own setting is left alone


def test_threads_overlapping_in_no_pillow_limit_leave_pillows_limit_as_it_was():
    """Thread A turns the limit off, B enters, A leaves (B still decoding: the limit stays off), B
    leaves: Pillow's limit is back. Saved and restored per block, B saved None and left it for good."""
    entered, a_left, observed = threading.Event(), threading.Event(), []

    def a():
        with no_pillow_limit():
            entered.set()
            b_inside.wait(timeout=10)
        a_left.set()

    def b():
        entered.wait(timeout=10)
        with no_pillow_limit():
            b_inside.set()
            a_left.wait(timeout=10)
            observed.append(Image.MAX_IMAGE_PIXELS)  # A has left; B still decodes

    b_inside = threading.Event()
    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert observed == [None]
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT


@pytest.mark.parametrize("workers", [1, 2])
def test_preprocess_decodes_with_the_limit_prepare_checked(tmp_path, monkeypatch, workers):
    # A limit raised above the process's Pillow default: prepare indexes the image, so preprocess
    # must decode it under the same limit, in its workers too (forked from this process).
    root = tree(tmp_path / "data")
    (root / "train" / "a" / "big.png").write_bytes(png_bytes((60, 60)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above 2000 pixels
    prepare(tmp_path / "prepared", folder(root, max_image_pixels=10_000), workers=1, progress=False)
    assert "train/a/big.png" in set(pd.read_parquet(tmp_path / "prepared" / INDEX_FILE)["path"])
    spec = PreprocessParams(stored_size=32, shard_size=2, workers=workers)
    preprocess(tmp_path / "prepared", tmp_path / "shards", spec, progress=False)
    assert json.loads((tmp_path / "shards" / MANIFEST_FILE).read_text())["splits"]["train"]["count"] == 7


def test_the_limit_is_checked_by_the_params_loader():
    for bad in (0, -5, True, 2.5):
        with pytest.raises(Exception, match="data.max_image_pixels"):
            parse_params({"data": {"max_image_pixels": bad}})
    assert parse_params({"data": {"max_image_pixels": None}}).data.max_image_pixels is None


NOT_UTF8 = b"\xff\xfe.png"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_name_that_is_not_utf8_is_a_report_row(tmp_path, workers):
    root = tree(tmp_path / "data")
    bad = os.path.join(os.fsencode(root / "train" / "b"), NOT_UTF8)
    with open(bad, "wb") as f:
        f.write(png_bytes())
    out = tmp_path / "prepared"
    prepare(out, folder(root), workers=workers, progress=False)
    index, report, dataset = read(out)
    assert list(report["path"]) == ["train/b/\\xff\\xfe.png"]
    assert report["reason"][0] == "name not UTF-8"
    assert len(index) == 8
    assert dataset["splits"]["train"] == {"found": 7, "indexed": 6, "reported": 1, "ignored": 0}


def test_a_name_that_is_not_utf8_with_fail_names_the_file(tmp_path):
    root = tree(tmp_path / "data")
    with open(os.path.join(os.fsencode(root / "val" / "a"), NOT_UTF8), "wb") as f:
        f.write(png_bytes())
    with pytest.raises(BadImageError, match=r"val/a/\\xff\\xfe.png: name not UTF-8"):
        prepare(tmp_path / "prepared", folder(root, on_bad_image="fail"), workers=1, progress=False)


def test_a_class_folder_whose_name_is_not_utf8_is_refused_by_name(tmp_path):
    root = tree(tmp_path / "data")
    folder_name = os.path.join(os.fsencode(root / "train"), b"c\xff")
    os.mkdir(folder_name)
    with open(os.path.join(folder_name, b"1.png"), "wb") as f:
        f.write(png_bytes())
    with pytest.raises(ValueError, match=r"train/c\\xff: a class folder whose name is not UTF-8"):
        prepare(tmp_path / "prepared", folder(root), workers=1, progress=False)


@pytest.mark.parametrize(("workers", "size"), [(1, (100, 100)), (2, (100, 100)), (2, (25, 16))])
def test_preprocess_refuses_by_name_a_file_changed_since_prepare(tmp_path, workers, size):
    # Grown past the limit prepare checked, or just other pixels: either way not what was indexed.
    root = tree(tmp_path / "data")
    prepare(tmp_path / "prepared", folder(root, max_image_pixels=5000), workers=1, progress=False)
    (root / "train" / "a" / "1.png").write_bytes(png_bytes(size, (1, 2, 3)))  # replaced after prepare
    spec = PreprocessParams(stored_size=32, shard_size=2, workers=workers)
    with pytest.raises(ValueError, match=r"train/a/1.png: not the bytes prepare checked .* rerun prepare"):
        preprocess(tmp_path / "prepared", tmp_path / "shards", spec, progress=False)


def test_a_file_that_cannot_be_read_when_decoded_is_a_report_row(tmp_path):
    # Found, then unreadable in the decode check: deleted meanwhile, not readable by the user
    # (root, running the tests, reads anything: a missing file stands for it), or a tar member
    # whose bytes lie past the end of a truncated archive. Each used to be a worker's traceback.
    from alexnet.data.prepare import _inspect

    tar = tmp_path / "short.tar"
    tar.write_bytes(b"\0" * 100)
    for full, offset in ((tmp_path / "gone.JPEG", None), (tar, 512)):
        row = _inspect(("train/x/a.JPEG", str(full), offset, 10, None))
        assert (row["path"], row["reason"]) == ("train/x/a.JPEG", "unreadable"), row
