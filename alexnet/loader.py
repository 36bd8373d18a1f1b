"""Training and evaluation batches over the prepared shards, made in background processes.

A batch is a pure function of its key (seed, epoch, batch index). A permutation of the split
that depends only on (seed, epoch) gives batch b its images at positions b*B .. (b+1)*B - 1,
taken in ascending index order (the order within a batch does not change an SGD step, and
ascending reads are sequential in memmapped shards); a generator seeded from the key draws
its augmentation. So batches do not depend on the number of workers or on their scheduling,
and a run resumed at epoch e, batch b sees exactly the batches it would have seen.

Workers: a torch DataLoader with `batch_size=None` over a sampler that yields batch keys;
each worker reads its batch, augments it and writes the float32 result straight into shared
memory, so the training step never waits for data. Workers are persistent across epochs (no
start-up per epoch) and run torch with one thread, leaving the cores to the model. Memory does
not grow with the dataset: each worker holds one batch plus `prefetch` finished ones; shards
are read through memmaps (raw) or decoded per batch (jpeg). The main process holds only the
labels and one epoch's permutation (8 bytes an image).

Batches: images float32 (B, 3, c, c) (train, centre crop) or (B, 10, 3, c, c) (ten-crop, in
`augment.TEN_CROP_VIEWS` order), channels_last memory, 0..255 units minus the mean image
(divided by `divisor`, 1.0 by default as in the paper); labels int64 (B,).
Training drops the last incomplete batch of an epoch (every step sees `batch_size` images,
as in the paper); evaluation keeps every image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from alexnet.augment import PcaScale, center_crop, ten_crop, train_augment
from alexnet.shards import ShardSet, load_stats

Batch = tuple[torch.Tensor, torch.Tensor]
# One batch's key: (epoch, batch index, the indices of its images in the split).
BatchKey = tuple[int, int, np.ndarray]

_PERMUTATION, _AUGMENTATION = 0, 1  # separate random streams, see _seed_sequence


def _seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    # spawn_key keeps (seed, epoch) and (seed, epoch, batch) streams apart and well mixed.
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence(seed, spawn_key=key)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """int64 (n,): the order of the split's images in `epoch`, a pure function of (seed, epoch)."""
    return np.random.default_rng(_seed_sequence(seed, _PERMUTATION, epoch)).permutation(n)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator for one training batch's augmentation, a pure function of its key."""
    state = _seed_sequence(seed, _AUGMENTATION, epoch, batch).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _identity(batch: Batch) -> Batch:
    return batch


def _worker_init(worker_id: int) -> None:
    # One intra-op thread per worker: the model in the main process owns the cores.
    torch.set_num_threads(1)


class _ShardBatches(Dataset):
    """Map-style dataset whose items are whole batches: key (epoch, batch, indices) -> Batch."""

    def __init__(self, shards: ShardSet, make_inputs: Any) -> None:
        # ShardSet opens its memmaps/files lazily in each process, so workers share nothing.
        self.shards, self.make_inputs = shards, make_inputs

    def __getitem__(self, key: BatchKey) -> Batch:
        epoch, batch, indices = key  # indices ascending: sequential reads in memmapped shards
        images = torch.from_numpy(self.shards.read(indices))  # uint8 (B, S, S, 3)
        labels = torch.from_numpy(self.shards.labels[indices].astype(np.int64))
        return self.make_inputs(images, epoch, batch), labels


def _output_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    # In a worker, write the batch straight into shared memory: the DataLoader would otherwise
    # copy it there to hand it to the main process (as default_collate avoids the same copy).
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)


class _TrainInputs:
    """Picklable callable: uint8 batch -> augmented float32 batch, seeded by the batch key."""

    def __init__(self, seed: int, stats: tuple[torch.Tensor, ...], divisor: Any, **augment: Any) -> None:
        self.seed, self.stats, self.divisor, self.augment = seed, stats, divisor, augment

    def __call__(self, images: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        mean, eigenvalues, eigenvectors = self.stats
        generator = batch_generator(self.seed, epoch, batch)
        c = self.augment["crop_size"]
        out = _output_buffer((images.shape[0], c, c, 3))
        return train_augment(
            images, mean, eigenvalues, eigenvectors, generator=generator, divisor=self.divisor, out=out,
            **self.augment,
        )  # fmt: skip


class _EvalInputs:
    def __init__(self, mean: torch.Tensor, crop_size: int, ten_crop: bool, divisor: Any) -> None:
        self.mean, self.crop_size, self.ten_crop, self.divisor = mean, crop_size, ten_crop, divisor

    def __call__(self, images: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        n, c = images.shape[0], self.crop_size
        if self.ten_crop:
            out = _output_buffer((n, 10, c, c, 3))
            return ten_crop(images, self.mean, crop_size=c, divisor=self.divisor, out=out)
        out = _output_buffer((n, c, c, 3))
        return center_crop(images, self.mean, crop_size=c, divisor=self.divisor, out=out)


class _Keys(Sampler):
    """Yields the batch keys of the current pass, set before each pass (workers persist)."""

    def __init__(self) -> None:
        self.keys: Sequence[BatchKey] = ()

    def __iter__(self) -> Iterator[BatchKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _Loader:
    def __init__(self, shards_dir: str | Path, split: str, make_inputs: Any, workers: int, prefetch: int,
                 pin_memory: bool) -> None:  # fmt: skip
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.shards_dir = Path(shards_dir)
        shards = ShardSet(self.shards_dir, split)
        self.num_images, self.stored_size = len(shards), shards.stored_size
        self._keys = _Keys()
        self._loader = DataLoader(
            _ShardBatches(shards, make_inputs),
            batch_size=None,  # items are whole batches
            sampler=self._keys,
            collate_fn=_identity,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
            worker_init_fn=_worker_init if workers > 0 else None,
            pin_memory=pin_memory,
            # Its own generator: iterating a DataLoader draws a base seed, and drawing it from torch's
            # global RNG would shift dropout's stream, so a resumed run would differ from an unbroken one.
            generator=torch.Generator(),
        )

    def _make_keys(self, epoch: int, start_batch: int) -> Sequence[BatchKey]:
        raise NotImplementedError

    def _pass(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        self._keys.keys = self._make_keys(epoch, start_batch)  # read by iter(sampler) in iter(loader)
        return iter(self._loader)

    def close(self) -> None:
        """Stop the worker processes (also happens when the loader is garbage-collected)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None

    def __enter__(self) -> _Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_crop(crop_size: int, stored_size: int) -> None:
    if not 0 < crop_size <= stored_size:
        raise ValueError(f"crop_size={crop_size} must be in [1, stored_size={stored_size}] of the shards")


class TrainLoader(_Loader):
    """§4.1 training batches, reusable across epochs: `for images, labels in loader.epoch(e): ...`.

    images float32 (B, 3, c, c), labels int64 (B,); len(loader) = images // batch_size
    (the last incomplete batch is dropped). `epoch(e, start_batch=b)` resumes mid-epoch.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        *,
        batch_size: int,
        crop_size: int,
        seed: int,
        workers: int,
        flip: bool = True,
        pca_lighting: bool = True,
        pca_std: float = 0.1,
        pca_scale: PcaScale = "unit_range",
        divisor: float | Sequence[float] = 1.0,
        split: str = "train",
        prefetch: int = 4,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _seed_sequence(seed)  # validates the seed here rather than in a worker
        mean, eigenvalues, eigenvectors = (torch.as_tensor(a, dtype=torch.float32) for a in load_stats(shards_dir))
        inputs = _TrainInputs(
            seed, (mean, eigenvalues, eigenvectors), _divisor(divisor), crop_size=crop_size, flip=flip,
            pca_lighting=pca_lighting, pca_std=pca_std, pca_scale=pca_scale,
        )  # fmt: skip
        self.batch_size, self.seed = batch_size, seed
        super().__init__(shards_dir, split, inputs, workers, prefetch, pin_memory)
        _check_crop(crop_size, self.stored_size)
        if self.num_images < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the {self.num_images} {split} images")

    def __len__(self) -> int:
        return self.num_images // self.batch_size

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches start_batch .. len(self) - 1 of `epoch` (0-based), in order."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch={start_batch} must be in [0, {len(self)}]")
        return self._pass(epoch, start_batch)

    def _make_keys(self, epoch: int, start_batch: int) -> Sequence[BatchKey]:
        order, b = epoch_permutation(self.seed, epoch, self.num_images), self.batch_size
        return [(epoch, i, np.sort(order[i * b : (i + 1) * b])) for i in range(start_batch, len(self))]


class EvalLoader(_Loader):
    """Test batches in split order: centre crop (B, 3, c, c) or ten-crop (B, 10, 3, c, c); no lighting."""

    def __init__(
        self,
        shards_dir: str | Path,
        split: str = "val",
        *,
        batch_size: int,
        crop_size: int,
        ten_crop: bool,
        workers: int,
        divisor: float | Sequence[float] = 1.0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        mean = torch.as_tensor(load_stats(shards_dir)[0], dtype=torch.float32)
        self.batch_size = batch_size
        super().__init__(shards_dir, split, _EvalInputs(mean, crop_size, ten_crop, _divisor(divisor)), workers,
                         prefetch, pin_memory)  # fmt: skip
        _check_crop(crop_size, self.stored_size)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)  # the last batch may be smaller

    def __iter__(self) -> Iterator[Batch]:
        return self._pass(0, 0)

    def _make_keys(self, epoch: int, start_batch: int) -> Sequence[BatchKey]:
        n, b = self.num_images, self.batch_size
        return [(0, i, np.arange(i * b, min((i + 1) * b, n))) for i in range(len(self))]


def _divisor(divisor: float | Sequence[float]) -> float | torch.Tensor:
    if isinstance(divisor, int | float):
        value: float | torch.Tensor = float(divisor)
    else:
        value = torch.as_tensor(divisor, dtype=torch.float32)
        if value.shape != (3,):
            raise ValueError(f"divisor must be a number or one per RGB channel, got shape {tuple(value.shape)}")
    if torch.any(torch.as_tensor(value) <= 0):
        raise ValueError(f"divisor must be > 0, got {divisor}")
    return value


def train_batches(shards_dir: str | Path, *, epoch: int, start_batch: int = 0, **options: Any) -> Iterator[Batch]:
    """One epoch of training batches from a fresh TrainLoader (options as TrainLoader's); closes it after."""
    with TrainLoader(shards_dir, **options) as loader:
        yield from loader.epoch(epoch, start_batch)


def eval_batches(shards_dir: str | Path, split: str = "val", **options: Any) -> Iterator[Batch]:
    """One pass of test batches from a fresh EvalLoader (options as EvalLoader's); closes it after."""
    with EvalLoader(shards_dir, split, **options) as loader:
        yield from loader
