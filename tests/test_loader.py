"""The loader on real shards: batches independent of worker count, exact resume, eval order, layouts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from augment_ref import center_crop

from alexnet.config.sections import AugmentParams, DataParams, PreprocessParams, SyntheticParams
from alexnet.data.prepare import prepare
from alexnet.data.preprocess import preprocess
from alexnet.data.shards import ShardSet, load_stats
from alexnet.loading.batches import epoch_permutation, eval_keys, train_keys
from alexnet.loading.loader import EvalLoader, TrainLoader
from alexnet.loading.shm import CropRing
from tests.procs import alive, children

S, CROP = 32, 16
SYNTHETIC = dict(classes=5, train_per_class=10, val_per_class=5, min_side=32, max_side=48, seed=0)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("prepared")
    prepare(d, DataParams(synthetic=SyntheticParams(**SYNTHETIC)), workers=1, progress=False)
    return d


@pytest.fixture(scope="module", params=["raw", "jpeg"])
def shards_dir(request, prepared_dir, tmp_path_factory):
    """Small shards in either format, written by the real prepare + preprocess stages."""
    d = tmp_path_factory.mktemp(f"shards-{request.param}")
    preprocess(prepared_dir, d, PreprocessParams(stored_size=S, format=request.param, shard_size=16, workers=1),
               progress=False)
    return d


OPTIONS = dict(batch_size=8, crop_size=CROP, seed=3, augment=AugmentParams())


def train_batches(shards_dir, *, epoch, **options):
    """One epoch from a fresh TrainLoader, closed after."""
    with TrainLoader(shards_dir, **options) as loader:
        yield from loader.epoch(epoch)


def eval_batches(shards_dir, **options):
    """One pass from a fresh EvalLoader, closed after."""
    with EvalLoader(shards_dir, **options) as loader:
        yield from loader


def collect(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_do_not_depend_on_workers_and_resume_exactly(shards_dir):
    n = len(ShardSet(shards_dir, "train"))
    inline = collect(train_batches(shards_dir, epoch=1, workers=0, **OPTIONS))
    with TrainLoader(shards_dir, workers=2, **OPTIONS) as loader:
        assert len(loader) == n // 8 == len(inline)  # last incomplete batch dropped
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
    train = ShardSet(shards_dir, "train")
    n = len(train)
    order = epoch_permutation(3, 1, n)
    assert sorted(order.tolist()) == list(range(n))
    assert np.array_equal(order, epoch_permutation(3, 1, n))
    assert not np.array_equal(order, epoch_permutation(3, 2, n))
    labels = torch.cat([y for _, y in train_batches(shards_dir, epoch=1, workers=0, **OPTIONS)])
    batches = np.sort(order[: len(labels)].reshape(-1, 8), axis=1)  # ascending within a batch
    assert torch.equal(labels, torch.from_numpy(train.labels[batches.reshape(-1)]))


def test_batches_hold_the_images_of_their_indices(shards_dir):
    # Full-size "crops" with no flip and no lighting: a batch is exactly its images minus the mean.
    train = ShardSet(shards_dir, "train")
    order = epoch_permutation(3, 0, len(train))
    mean = torch.from_numpy(load_stats(shards_dir)[0])
    options = OPTIONS | dict(crop_size=S, augment=AugmentParams(flip=False, pca_lighting=False))
    for b, (x, y) in enumerate(train_batches(shards_dir, epoch=0, workers=2, **options)):
        indices = np.sort(order[b * 8 : (b + 1) * 8])
        want = torch.from_numpy(train.read(indices)).float() - mean
        assert torch.equal(x, want.permute(0, 3, 1, 2))
        assert torch.equal(y, torch.from_numpy(train.labels[indices]))


def test_iterating_leaves_the_global_rng_alone(shards_dir):
    # A resumed run iterates its loader a different number of times before a given step than an
    # unbroken one; if that drew from torch's global RNG, dropout's stream would shift.
    for workers in (0, 2):
        torch.manual_seed(0)
        with TrainLoader(shards_dir, workers=workers, **OPTIONS) as loader:
            for _ in loader.epoch(0):
                pass
            next(iter(loader.epoch(1)))
        after = torch.rand(3)
        torch.manual_seed(0)
        assert torch.equal(after, torch.rand(3)), workers


def test_breaking_off_an_epoch_leaves_the_next_one_intact(shards_dir):
    with TrainLoader(shards_dir, workers=2, **OPTIONS) as loader:
        for i, _ in enumerate(loader.epoch(0)):
            if i == 1:
                break  # prefetched batches of epoch 0 are still in flight
        after = collect(loader.epoch(5))
    assert_same(after, collect(train_batches(shards_dir, epoch=5, workers=0, **OPTIONS)))


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_buffers_are_reused_only_when_nobody_holds_them(shards_dir, workers):
    with TrainLoader(shards_dir, workers=workers, **OPTIONS) as loader:
        want = collect(loader.epoch(0))  # clones
        pool = loader._outputs
        kept = list(loader.epoch(0))  # the batches themselves, all held at once
        assert_same(kept, want)  # none was overwritten by a later batch
        assert len({x.untyped_storage().data_ptr() for x, _ in kept}) == len(kept)
        sliced = [x[:2] for x, _ in loader.epoch(0)]  # a view keeps its batch alive too
        assert_same([(s, s) for s in sliced], [(x[:2], x[:2]) for x, _ in want])
        del kept, sliced
        # Dropped as the loop moves on: two buffers take turns (the reason for the pool).
        before = pool.allocated
        for (x, y), (wx, wy) in zip(loader.epoch(0), want, strict=True):
            assert torch.equal(x, wx) and torch.equal(y, wy)
        assert pool.allocated - before <= 2


def test_eval_keeps_every_image_in_order(shards_dir):
    val = ShardSet(shards_dir, "val")
    assert len(val) == 25
    opts = dict(batch_size=10, crop_size=CROP, workers=2)
    center = collect(eval_batches(shards_dir, ten_crop=False, **opts))
    ten = collect(eval_batches(shards_dir, ten_crop=True, **opts))
    assert [len(y) for _, y in center] == [10, 10, 5]
    assert torch.equal(torch.cat([y for _, y in center]), torch.from_numpy(val.labels))
    assert ten[0][0].shape == (10, 10, 3, CROP, CROP)
    assert torch.equal(ten[0][0][:, 4], center[0][0])  # view 4 is the centre crop
    mean = torch.from_numpy(load_stats(shards_dir)[0])
    want = center_crop(torch.from_numpy(val.read(np.arange(len(val)))), mean, crop_size=CROP)
    assert torch.equal(torch.cat([x for x, _ in center]), want)
    with EvalLoader(shards_dir, batch_size=10, crop_size=CROP, ten_crop=False, workers=0) as loader:
        assert len(loader) == 3
        assert_same(collect(loader), center)
        assert_same(collect(loader), center)  # reusable


def test_bad_options_are_rejected(shards_dir):
    with pytest.raises(ValueError, match="crop_size"):
        TrainLoader(shards_dir, **(OPTIONS | dict(crop_size=S + 1)), workers=0)
    with pytest.raises(ValueError, match="larger than"):
        TrainLoader(shards_dir, **(OPTIONS | dict(batch_size=1000)), workers=0)
    with TrainLoader(shards_dir, workers=0, **OPTIONS) as loader, pytest.raises(ValueError, match="start_batch"):
        loader.epoch(0, start_batch=len(loader) + 1)


def test_a_slot_rewritten_while_read_is_refused():
    ring = CropRing(workers=1, prefetch=2, shape=(4, 2, 2, 3))
    ticket = (0, 1, 7, 4)  # worker 0, slot 1, its batch 7, 4 images
    ring.seal(ticket)
    assert ring.view(ticket).shape == (4, 2, 2, 3)
    ring.check(ticket)  # still batch 7: fine
    ring.stamps[0, 1] = -1  # the worker started writing its batch 10 there
    with pytest.raises(RuntimeError, match="rewrote slot 1 while batch 7"):
        ring.check(ticket)
    ring.stamps[0, 1] = 10  # ... and finished it
    with pytest.raises(RuntimeError, match="rewrote slot 1"):
        ring.check(ticket)


def test_batch_keys_are_pure_and_cover_an_epoch_once():
    # No shards and no processes: the keys alone say which images form each batch.
    n, b = 29, 4
    keys = list(train_keys(3, 1, n, b))
    assert [(e, i) for e, i, _ in keys] == [(1, i) for i in range(n // b)]
    taken = np.concatenate([idx for _, _, idx in keys])
    assert len(set(taken.tolist())) == len(taken) == (n // b) * b  # no repeats, last partial batch dropped
    assert all(np.array_equal(idx, np.sort(epoch_permutation(3, 1, n)[i * b : (i + 1) * b])) for _, i, idx in keys)
    resumed = list(train_keys(3, 1, n, b, start_batch=5))
    assert [i for _, i, _ in resumed] == [5, 6] and all(
        np.array_equal(x, y) for (_, _, x), (_, _, y) in zip(resumed, keys[5:], strict=True))
    assert not np.array_equal(taken, np.concatenate([idx for _, _, idx in train_keys(3, 2, n, b)]))
    with pytest.raises(ValueError, match="start_batch=8"):
        list(train_keys(3, 1, n, b, start_batch=8))
    assert [idx.tolist() for _, _, idx in eval_keys(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


CHILD = """
import sys
from alexnet.config.sections import AugmentParams
from alexnet.loading.loader import TrainLoader
loader = TrainLoader(sys.argv[1], batch_size=8, crop_size=16, seed=3, augment=AugmentParams(), workers=1)
batches = loader.epoch(0)
next(batches)
print("ready", flush=True)
sys.stdin.read()  # until killed
"""


def test_workers_die_with_a_killed_process_at_once(shards_dir):
    """SIGKILL of the process that iterates (a stage, as the OOM killer does it): its workers go within
    3 s. torch's own parent check waits up to 5 s between looks, and the kill here lands just after a
    batch, so without the watcher this fails every time (a kill test saw a worker outlive 15 s)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the workers")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(shards_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=Path(__file__).parents[1])
    try:
        assert child.stdout.readline() == b"ready\n"
        workers = children(child.pid)
        assert workers, "the loader started no worker"
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 3
    while (left := {p for p in workers if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"loader workers outlived their killed process by 3 s: {left}"

