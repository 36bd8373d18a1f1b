"""Which images form batch b of epoch e, and how a batch is cut and finished: pure functions.

A batch is a pure function of its key (seed, epoch, batch index). A permutation of the split
that depends only on (seed, epoch) gives batch b its images at positions b*B .. (b+1)*B - 1,
taken in ascending index order (the order within a batch does not change an SGD step, and
ascending reads are sequential in memmapped shards); a generator seeded from the key draws
its augmentation. So batches do not depend on the number of workers or on their scheduling,
and a run resumed at epoch e, batch b sees exactly the batches it would have seen.

Nothing here starts a process or touches shared memory (alexnet/loading/loader.py and alexnet/loading/shm.py
do): a caller that wants another share of a batch (one rank's slice of it, say) takes the keys
from `train_keys` and the same `cut`/`finish` functions on its own images.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from alexnet.config.sections import AugmentParams
from alexnet.loading.augment import (
    TrainDraws,
    crop_flip,
    draw_train,
    eval_crops,
    eval_mean_windows,
    finish_eval,
    finish_train,
)

# One batch's key: (epoch, batch index, the indices of its images in the split, ascending).
BatchKey = tuple[int, int, np.ndarray]

_PERMUTATION, _AUGMENTATION, _DROPOUT = 0, 1, 2  # separate random streams, see seed_sequence


def seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    """The numpy seed sequence of (seed, *key); spawn_key keeps the streams apart and well mixed."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence(seed, spawn_key=key)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """int64 (n,): the order of the split's images in `epoch`, a pure function of (seed, epoch)."""
    return np.random.default_rng(seed_sequence(seed, _PERMUTATION, epoch)).permutation(n)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator for one training batch's augmentation, a pure function of its key."""
    state = seed_sequence(seed, _AUGMENTATION, epoch, batch).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def rank_dropout_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """torch's seed for DDP rank `rank`'s dropout in batch (epoch, batch): each rank drops its own units.

    Only a run of several ranks reseeds (alexnet/training/loop.py): one process keeps drawing dropout from
    the stream torch.manual_seed(member seed) started, as it always has.
    """
    return int(seed_sequence(seed, _DROPOUT, epoch, batch, rank).generate_state(1, np.uint64)[0])


def train_batch_count(num_images: int, batch_size: int) -> int:
    """Training batches in an epoch: the last incomplete one is dropped (every step sees B images)."""
    return num_images // batch_size


def train_keys(seed: int, epoch: int, num_images: int, batch_size: int, start_batch: int = 0) -> Iterator[BatchKey]:
    """The keys of training batches start_batch .. of `epoch`, in order."""
    count = train_batch_count(num_images, batch_size)
    if not 0 <= start_batch <= count:
        raise ValueError(f"start_batch={start_batch} must be in [0, {count}]")
    order, b = epoch_permutation(seed, epoch, num_images), batch_size
    for i in range(start_batch, count):
        yield epoch, i, np.sort(order[i * b : (i + 1) * b])


def eval_keys(num_images: int, batch_size: int) -> Iterator[BatchKey]:
    """The keys of one test pass in split order; the last batch may be smaller (every image counts)."""
    for i in range(-(-num_images // batch_size)):
        yield 0, i, np.arange(i * batch_size, min((i + 1) * batch_size, num_images))


class TrainInputs:
    """§4.1 training input of one batch, in two halves. Picklable (loader workers hold one).

    `cut`: the draws seeded by the batch key, then uint8 crops and mirrors (cheap, and a quarter
    of the bytes of the float batch: this half runs where the images are read).
    `finish`: float32, minus the mean windows, plus the lighting shift (one pass over the batch:
    this half runs where the batch is consumed, on the device its crops, mean and draws are on).
    """

    def __init__(self, seed: int, stats: tuple[torch.Tensor, ...], divisor: Any, crop_size: int,
                 augment: AugmentParams, part: tuple[int, int] = (0, 1)) -> None:  # fmt: skip
        self.seed, self.divisor, self.crop_size, self.augment = seed, divisor, crop_size, augment
        # (rank, world size): `cut` gets the rank's contiguous slice of each batch and draws for the
        # whole batch, keeping its slice of the draws, so every image is augmented as in one process.
        self.part = part
        self.mean, self.eigenvalues, self.eigenvectors = stats

    def crops_shape(self, batch_size: int) -> tuple[int, ...]:
        return batch_size, self.crop_size, self.crop_size, 3

    def cut(self, images: torch.Tensor, epoch: int, batch: int,
            out: torch.Tensor | None) -> tuple[torch.Tensor, tuple[np.ndarray | None, ...]]:  # fmt: skip
        """uint8 images (B, S, S, 3) of batch (epoch, batch) -> uint8 crops and the draws as numpy."""
        generator = batch_generator(self.seed, epoch, batch)
        rank, world = self.part
        draws = draw_train(images.shape[0] * world, images.shape[1], self.eigenvalues, self.eigenvectors,
                           crop_size=self.crop_size, generator=generator, augment=self.augment)  # fmt: skip
        if world > 1:
            mine = slice(rank * images.shape[0], (rank + 1) * images.shape[0])
            draws = TrainDraws(*(None if t is None else t[mine] for t in (draws.ys, draws.xs, draws.flips,
                                                                           draws.shift)))
        crops = crop_flip(images, draws.ys, draws.xs, draws.flips, self.crop_size, out=out)
        return crops, tuple(None if t is None else t.numpy() for t in (draws.ys, draws.xs, draws.flips, draws.shift))

    def finish(self, crops: torch.Tensor, draws: tuple[np.ndarray | None, ...],
               out: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """uint8 crops and their draws from `cut` -> the float32 (B, 3, c, c) batch."""
        train_draws = TrainDraws(*(None if a is None else torch.from_numpy(a) for a in draws))
        return finish_train(crops, self.mean, train_draws, self.divisor, out)


class EvalInputs:
    """`cut`: the uint8 centre or ten views; `finish`: float32 minus the mean windows. No randomness."""

    def __init__(self, mean: torch.Tensor, crop_size: int, ten_crop: bool, divisor: Any) -> None:
        self.crop_size, self.ten_crop, self.divisor = crop_size, ten_crop, divisor
        self.mean_windows = eval_mean_windows(mean, crop_size=crop_size, ten=ten_crop)

    def crops_shape(self, batch_size: int) -> tuple[int, ...]:
        c = self.crop_size
        return (batch_size, 10, c, c, 3) if self.ten_crop else (batch_size, c, c, 3)

    def cut(self, images: torch.Tensor, epoch: int, batch: int, out: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return eval_crops(images, crop_size=self.crop_size, ten=self.ten_crop, out=out), None

    def finish(self, crops: torch.Tensor, extras: None, out: torch.Tensor | None) -> torch.Tensor:
        return finish_eval(crops, self.mean_windows, self.divisor, out)
