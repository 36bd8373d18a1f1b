"""Shards: round trip in both formats, random access, and a reader that refuses bad data."""

import pickle

import numpy as np
import pandas as pd
import pytest

from alexnet.config.sections import PreprocessParams
from alexnet.core.layout import MANIFEST_FILE as MANIFEST
from alexnet.data.imageops import load_patch
from alexnet.data.preprocess import preprocess
from alexnet.data.shards import ShardsError, ShardSet, data_version, load_stats

S = 32


@pytest.fixture(scope="module", params=["raw", "jpeg"])
def built(request, tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"shards-{request.param}")
    preprocess(tiny_prepared, out, PreprocessParams(stored_size=S, format=request.param, shard_size=4, workers=1),
               progress=False)
    return request.param, out


def expected_images(prepared, split) -> tuple[np.ndarray, np.ndarray]:
    index = pd.read_parquet(prepared / "index.parquet")
    rows = index[index["split"] == split]
    images = np.stack([np.asarray(load_patch(str(prepared / "images" / p), S)) for p in rows["path"]])
    return images, rows["label"].to_numpy()


@pytest.mark.parametrize("split", ["train", "val"])
def test_round_trip(built, tiny_prepared, split):
    fmt, out = built
    images, labels = expected_images(tiny_prepared, split)
    shards = ShardSet(out, split)
    assert (shards.format, shards.stored_size, len(shards)) == (fmt, S, len(images))
    assert shards.labels.dtype == np.int64 and np.array_equal(shards.labels, labels)
    order = np.array([len(images) - 1, 0, 5, 5, 2])  # any order, repeats, across shards
    got = shards.read(order)
    assert got.dtype == np.uint8 and got.shape == (5, S, S, 3)
    if fmt == "raw":
        np.testing.assert_array_equal(got, images[order])
    else:  # re-encoded at quality 90: close, not equal
        assert np.abs(got.astype(int) - images[order]).mean() < 6
    np.testing.assert_array_equal(shards.read(np.array([], dtype=np.int64)), np.zeros((0, S, S, 3), np.uint8))


def test_pickled_set_reopens_lazily(built):
    _, out = built
    shards = ShardSet(out, "train")
    first = shards.read(np.arange(3))
    clone = pickle.loads(pickle.dumps(shards))
    np.testing.assert_array_equal(clone.read(np.arange(3)), first)
    assert len(pickle.dumps(shards)) < 10_000  # no pixels travel with it


def test_out_of_range_and_missing_split(built):
    _, out = built
    shards = ShardSet(out, "val")
    with pytest.raises(IndexError):
        shards.read(np.array([len(shards)]))
    with pytest.raises(ShardsError, match="no split 'test'"):
        ShardSet(out, "test")


def test_stats_and_version(built):
    _, out = built
    mean, eigenvalues, eigenvectors = load_stats(out)
    assert mean.shape == (S, S, 3) and mean.dtype == np.float32
    assert eigenvalues.shape == (3,) and eigenvectors.shape == (3, 3)
    version = data_version(out)
    assert len(version) == 12 and version == data_version(out)


def test_reader_refuses_missing_manifest_and_changed_shards(built, tmp_path):
    import shutil

    _, src = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    first = out / ShardSet(out, "train")._files[0].name
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    first.write_bytes(bytes(data))
    with pytest.raises(ShardsError, match="sha256"):
        ShardSet(out, "train")
    ShardSet(out, "train", verify=False)  # sizes only: opens
    first.write_bytes(bytes(data[:-10]))
    with pytest.raises(ShardsError, match="bytes"):
        ShardSet(out, "train", verify=False)
    (out / MANIFEST).unlink()
    with pytest.raises(ShardsError, match=f"{out}.*no manifest.json"):
        ShardSet(out, "val")
    with pytest.raises(ShardsError):
        data_version(out)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from alexnet.core.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.txt", "ok")
    finally:
        os.umask(old)
    assert (tmp_path / "report.txt").stat().st_mode & 0o777 == 0o644
