"""The loader: batches independent of worker count, exact resume, eval order and layouts."""

import json
import sys
import types

import numpy as np
import pytest
import torch

S, CROP, N, CLASSES = 20, 16, 50, 5


# --- temporary stand-in for alexnet.shards (same interface) until the real module lands ---
def _install_stand_in() -> None:
    try:
        import alexnet.shards  # noqa: F401
    except ImportError:
        mod = types.ModuleType("alexnet.shards")

        class ShardSet:
            def __init__(self, shards_dir, split):
                meta = json.loads((shards_dir / "manifest.json").read_text())
                self.format, self.stored_size = "raw", meta["stored_size"]
                self._images = np.load(shards_dir / f"{split}.npy", mmap_mode="r")
                self.labels = np.load(shards_dir / f"{split}_labels.npy")

            def __len__(self):
                return len(self.labels)

            def read(self, indices):
                return np.asarray(self._images[indices])

        def load_stats(shards_dir):
            s = np.load(shards_dir / "stats.npz")
            return s["mean"], s["eigenvalues"], s["eigenvectors"]

        mod.ShardSet, mod.load_stats = ShardSet, load_stats
        sys.modules["alexnet.shards"] = mod


_install_stand_in()

from alexnet.loader import EvalLoader, TrainLoader, epoch_permutation, eval_batches, train_batches  # noqa: E402


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8)}
    images["val"] = rng.integers(0, 256, (23, S, S, 3), dtype=np.uint8)
    images["train"][:, 0, 0, 0] = np.arange(N)  # pixel (0, 0) red = image index, for tracing
    for split, x in images.items():
        np.save(d / f"{split}.npy", x)
        np.save(d / f"{split}_labels.npy", np.arange(len(x)) % CLASSES)
    pixels = images["train"].reshape(-1, 3).astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(pixels.T))
    np.savez(d / "stats.npz", mean=images["train"].mean(0).astype(np.float32), eigenvalues=eigenvalues,
             eigenvectors=eigenvectors)  # fmt: skip
    (d / "manifest.json").write_text(json.dumps({"stored_size": S}))
    return d


OPTIONS = dict(batch_size=8, crop_size=CROP, seed=3)


def collect(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_do_not_depend_on_workers_and_resume_exactly(shards_dir):
    inline = collect(train_batches(shards_dir, epoch=1, workers=0, **OPTIONS))
    with TrainLoader(shards_dir, workers=2, **OPTIONS) as loader:
        assert len(loader) == N // 8 == len(inline)  # last incomplete batch dropped
        two = collect(loader.epoch(1))
        resumed = collect(loader.epoch(1, start_batch=4))
        next_epoch = collect(loader.epoch(2))  # same persistent workers, new permutation
    assert_same(inline, two)
    assert_same(inline[4:], resumed)
    x, y = inline[0]
    assert x.shape == (8, 3, CROP, CROP) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert two[0][0].is_contiguous(memory_format=torch.channels_last)  # kept through worker IPC
    assert not torch.equal(torch.cat([y for _, y in next_epoch]), torch.cat([y for _, y in inline]))


def test_epoch_is_a_permutation_without_repeats(shards_dir):
    order = epoch_permutation(3, 1, N)
    assert sorted(order.tolist()) == list(range(N))
    assert np.array_equal(order, epoch_permutation(3, 1, N))
    assert not np.array_equal(order, epoch_permutation(3, 2, N))
    labels = torch.cat([y for _, y in train_batches(shards_dir, epoch=1, workers=0, **OPTIONS)])
    assert torch.equal(labels, torch.from_numpy(order[: len(labels)] % CLASSES))


def test_breaking_off_an_epoch_leaves_the_next_one_intact(shards_dir):
    with TrainLoader(shards_dir, workers=2, **OPTIONS) as loader:
        for i, _ in enumerate(loader.epoch(0)):
            if i == 1:
                break  # prefetched batches of epoch 0 are still in flight
        after = collect(loader.epoch(5))
    assert_same(after, collect(train_batches(shards_dir, epoch=5, workers=0, **OPTIONS)))


def test_eval_keeps_every_image_in_order(shards_dir):
    opts = dict(batch_size=10, crop_size=CROP, workers=2)
    center = collect(eval_batches(shards_dir, ten_crop=False, **opts))
    ten = collect(eval_batches(shards_dir, ten_crop=True, **opts))
    assert [len(y) for _, y in center] == [10, 10, 3]
    assert torch.equal(torch.cat([y for _, y in center]), torch.arange(23) % CLASSES)
    assert ten[0][0].shape == (10, 10, 3, CROP, CROP)
    assert torch.equal(ten[0][0][:, 4], center[0][0])  # view 4 is the centre crop
    with EvalLoader(shards_dir, batch_size=10, crop_size=CROP, ten_crop=False, workers=0) as loader:
        assert len(loader) == 3
        assert_same(collect(loader), center)
        assert_same(collect(loader), center)  # reusable


def test_bad_options_are_rejected(shards_dir):
    with pytest.raises(ValueError, match="crop_size"):
        TrainLoader(shards_dir, batch_size=8, crop_size=S + 1, seed=0, workers=0)
    with pytest.raises(ValueError, match="larger than"):
        TrainLoader(shards_dir, batch_size=N + 1, crop_size=CROP, seed=0, workers=0)
    with TrainLoader(shards_dir, workers=0, **OPTIONS) as loader, pytest.raises(ValueError, match="start_batch"):
        loader.epoch(0, start_batch=len(loader) + 1)
