"""Training and evaluation batches over the prepared shards, made in background processes.

Which images form a batch and how it is cut and finished are pure functions of the batch key
(alexnet/loading/batches.py); this module runs them in worker processes and hands the batches over
through memory that is reused (alexnet/loading/shm.py).

Workers: a torch DataLoader with `batch_size=None` over a sampler that yields batch keys;
each worker reads its batch, draws its augmentation, cuts and mirrors the crops in uint8 and
writes them straight into shared memory; the main process turns them into float32, subtracts
the mean windows and adds the lighting (`finish`), a small share of a training step, so the
step never waits for data. With `finish_on` a GPU, the main process instead copies the uint8
crops there and the GPU finishes them (alexnet/loading/device_finish.py): the same batch, bit for bit.
Workers are persistent across epochs (no start-up per epoch) and run
torch with one thread, leaving the cores to the model. Memory does not grow with the dataset:
each worker holds one batch plus `prefetch` finished ones; shards are read through memmaps
(raw) or decoded per batch (jpeg). The main process holds only the labels and one epoch's
permutation (8 bytes an image).

Batches: images float32 (B, 3, c, c) (train, centre crop) or (B, 10, 3, c, c) (ten-crop, in
`augment.TEN_CROP_VIEWS` order), channels_last memory, 0..255 units minus the mean image
(divided by `divisor`, 1.0 by default as in the paper); labels int64 (B,).
Training drops the last incomplete batch of an epoch (every step sees `batch_size` images,
as in the paper); evaluation keeps every image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from alexnet.config.sections import AugmentParams
from alexnet.core.layout import TRAIN, VAL
from alexnet.core.processes import exit_with_parent
from alexnet.data.shards import ShardSet, load_stats
from alexnet.loading.batches import (
    BatchKey,
    EvalInputs,
    TrainInputs,
    eval_keys,
    seed_sequence,
    train_batch_count,
    train_keys,
)
from alexnet.loading.device_finish import DeviceFinish
from alexnet.loading.shm import CropRing, OutputBuffers

Batch = tuple[torch.Tensor, torch.Tensor]


def _identity(batch: Batch) -> Batch:
    return batch


def _worker_init(parent_pid: int, worker_id: int) -> None:
    exit_with_parent(parent_pid)  # a killed stage leaves no worker behind
    # One intra-op thread per worker: the model in the main process owns the cores.
    torch.set_num_threads(1)


class _ShardBatches(Dataset):
    """Map-style dataset whose items are whole batches: key (epoch, batch, indices) -> raw batch
    (uint8 crops or their ring ticket, the draws the main process needs, labels)."""

    def __init__(self, shards: ShardSet, inputs: TrainInputs | EvalInputs, ring: CropRing | None) -> None:
        # ShardSet opens its memmaps/files lazily in each process, so workers share nothing.
        self.shards, self.inputs, self.ring = shards, inputs, ring

    def __getitem__(self, key: BatchKey) -> tuple[Any, Any, np.ndarray]:
        epoch, batch, indices = key  # indices ascending: sequential reads in memmapped shards
        images = torch.from_numpy(self.shards.read(indices))  # uint8 (B, S, S, 3)
        # numpy, not torch: small tensors would each cross to the main process as a shared-memory file.
        labels = self.shards.labels[indices].astype(np.int64)
        if self.ring is None:
            return *self.inputs.cut(images, epoch, batch, None), labels
        out, ticket = self.ring.take(len(indices))
        _, extras = self.inputs.cut(images, epoch, batch, out)
        self.ring.seal(ticket)
        return ticket, extras, labels


class _Keys(Sampler):
    """Yields the batch keys of the current pass, set before each pass (workers persist)."""

    def __init__(self) -> None:
        self.keys: Sequence[BatchKey] = ()

    def __iter__(self) -> Iterator[BatchKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _Loader:
    def __init__(self, shards_dir: str | Path, split: str, inputs: TrainInputs | EvalInputs, workers: int,
                 prefetch: int, pin_memory: bool, batch_size: int, finish_on: str | None = None) -> None:  # fmt: skip
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.shards_dir = Path(shards_dir)
        shards = ShardSet(self.shards_dir, split)
        self.num_images, self.stored_size = len(shards), shards.stored_size
        _check_crop(inputs.crop_size, self.stored_size)  # before the slots are sized by it
        self._keys = _Keys()
        self._ring = CropRing(workers, prefetch, inputs.crops_shape(batch_size)) if workers > 0 else None
        self._pin_memory = pin_memory and torch.cuda.is_available()  # pinning needs CUDA
        self._outputs = OutputBuffers()
        self._loader = DataLoader(
            _ShardBatches(shards, inputs, self._ring),
            batch_size=None,  # items are whole batches
            sampler=self._keys,
            collate_fn=_identity,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
            worker_init_fn=partial(_worker_init, os.getpid()) if workers > 0 else None,
            # Its own generator: iterating a DataLoader draws a base seed, and drawing it from torch's
            # global RNG would shift dropout's stream, so a resumed run would differ from an unbroken one.
            generator=torch.Generator(),
        )
        self._inputs = inputs
        # finish_on: the device that finishes the batches from their uint8 crops; None: this process.
        self._device_finish = None if finish_on is None else DeviceFinish(inputs, finish_on, batch_size)

    def _pass(self, keys: Sequence[BatchKey]) -> Iterator[Batch]:
        self._keys.keys = keys  # read by iter(sampler) in iter(loader)
        return self._finished(iter(self._loader))  # iter now, not at the first next(): the keys are set

    def _finished(self, raw_batches: Iterator[tuple[Any, Any, np.ndarray]]) -> Iterator[Batch]:
        for crops, extras, labels in raw_batches:
            ticket = None
            if self._ring is not None:
                ticket, crops = crops, self._ring.view(crops)
            if self._device_finish is not None:
                images, labels_t = self._device_finish(crops, extras, labels)  # copies out, finishes there
            else:
                images = self._inputs.finish(crops, extras, self._outputs.take(tuple(crops.shape)))  # copies out
                labels_t = torch.from_numpy(labels)
            if ticket is not None:
                self._ring.check(ticket)
            if self._pin_memory and self._device_finish is None:
                images = images.pin_memory()
            yield images, labels_t

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
    `augment` (the train.augment section) says which of §4.1's augmentations run.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        *,
        batch_size: int,
        crop_size: int,
        seed: int,
        workers: int,
        augment: AugmentParams,
        divisor: float | Sequence[float] = 1.0,
        split: str = TRAIN,
        prefetch: int = 4,
        pin_memory: bool = False,
        finish_on: str | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rank, world = part
        if batch_size % world:
            raise ValueError(f"train.batch_size: {batch_size} is not divisible by the {world} DDP ranks "
                             "(train.replicas x nodes); every rank takes an equal slice of each batch")
        seed_sequence(seed)  # validates the seed here rather than in a worker
        stats = tuple(torch.as_tensor(a, dtype=torch.float32) for a in load_stats(shards_dir))
        inputs = TrainInputs(seed, stats, _divisor(divisor), crop_size, augment, part)
        self.batch_size, self.seed, self.part = batch_size, seed, part
        super().__init__(shards_dir, split, inputs, workers, prefetch, pin_memory, batch_size // world,
                         finish_on)
        if self.num_images < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the {self.num_images} {split} images")

    def __len__(self) -> int:
        return train_batch_count(self.num_images, self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches start_batch .. len(self) - 1 of `epoch` (0-based), in order."""
        keys = train_keys(self.seed, epoch, self.num_images, self.batch_size, start_batch)
        rank, world = self.part
        if world > 1:  # rank r: images r*B/R .. (r+1)*B/R - 1 of each batch (DDP, alexnet/training/distributed.py)
            share = self.batch_size // world
            keys = ((e, b, indices[rank * share : (rank + 1) * share]) for e, b, indices in keys)
        return self._pass(list(keys))


class EvalLoader(_Loader):
    """Test batches in split order: centre crop (B, 3, c, c) or ten-crop (B, 10, 3, c, c); no lighting."""

    def __init__(
        self,
        shards_dir: str | Path,
        split: str = VAL,
        *,
        batch_size: int,
        crop_size: int,
        ten_crop: bool,
        workers: int,
        divisor: float | Sequence[float] = 1.0,
        prefetch: int = 2,
        pin_memory: bool = False,
        finish_on: str | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        mean = torch.as_tensor(load_stats(shards_dir)[0], dtype=torch.float32)
        self.batch_size, self.part = batch_size, part
        super().__init__(shards_dir, split, EvalInputs(mean, crop_size, ten_crop, _divisor(divisor)), workers,
                         prefetch, pin_memory, batch_size, finish_on)  # fmt: skip

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)  # the last batch may be smaller

    def batch_sizes(self) -> list[int]:
        """The images in each batch of a pass, all ranks together."""
        return [len(indices) for _, _, indices in eval_keys(self.num_images, self.batch_size)]

    def __iter__(self) -> Iterator[Batch]:
        keys = list(eval_keys(self.num_images, self.batch_size))
        rank, world = self.part
        if world > 1:  # rank r: its contiguous share of each batch; a share can be empty in a last small batch
            shares = ((e, b, np.array_split(indices, world)[rank]) for e, b, indices in keys)
            keys = [key for key in shares if len(key[2])]
        return self._pass(keys)


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


def resolve_workers(workers: int | str) -> int:
    """train.workers: a count, or "auto": the cores this process may run on, less one for the main process."""
    if workers == "auto":
        return max(1, len(os.sched_getaffinity(0)) - 1)
    return int(workers)


def finish_device(finish: str, device: str) -> str | None:
    """train.finish -> the device that finishes batches (alexnet/loading/device_finish.py), None for this process.
    "auto": the device when it is a GPU (the CPU path leaves the cores to a CPU model's step)."""
    if finish == "device" or (finish == "auto" and torch.device(device).type == "cuda"):
        return device
    return None
