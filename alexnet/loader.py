"""Training and evaluation batches over the prepared shards, made in background processes.

A batch is a pure function of its key (seed, epoch, batch index). A permutation of the split
that depends only on (seed, epoch) gives batch b its images at positions b*B .. (b+1)*B - 1,
taken in ascending index order (the order within a batch does not change an SGD step, and
ascending reads are sequential in memmapped shards); a generator seeded from the key draws
its augmentation. So batches do not depend on the number of workers or on their scheduling,
and a run resumed at epoch e, batch b sees exactly the batches it would have seen.

Workers: a torch DataLoader with `batch_size=None` over a sampler that yields batch keys;
each worker reads its batch, draws its augmentation, cuts and mirrors the crops in uint8 and
writes them straight into shared memory; the main process turns them into float32, subtracts
the mean windows and adds the lighting (`augment.finish_train`: ~4 ms a batch of 64 at c=128),
so the training step never waits for data. Workers are persistent across epochs (no
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

from alexnet.augment import (
    PcaScale,
    TrainDraws,
    crop_flip,
    draw_train,
    eval_crops,
    eval_mean_windows,
    finish_eval,
    finish_train,
)
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


class _CropRing:
    """Shared-memory slots that the workers write uint8 crops into, reused batch after batch.

    Why not a fresh shared-memory tensor per batch (torch's way): both processes then page-fault
    through every new segment, and in a VM that cost more than cutting the crops (~7 ms a batch
    of 64 at c=128 on this project's 2-core VM). Slots are mapped once and stay resident.

    Worker w writes its j-th batch into slot j mod K and sends only a ticket (w, slot, j, n).
    The DataLoader dispatches a worker's next task before handing the main process the current
    batch, and keeps at most `prefetch` of a worker's batches dispatched but not handed over;
    the main process copies a batch out (`finish`) before it asks for the next. So K =
    prefetch + 1 slots never overwrite a batch that is being read. A stamp per slot checks it:
    a slot rewritten while it was read raises instead of handing over a corrupt batch.
    """

    def __init__(self, workers: int, prefetch: int, shape: tuple[int, ...]) -> None:
        # Straight into shared memory, untouched: pages are faulted in by the first batches, not
        # zero-filled here and then copied over (share_memory_()), which costs ~1 s for the
        # paper's ten-crop slots.
        full = (workers, prefetch + 1, *shape)
        storage = torch.UntypedStorage._new_shared(math.prod(full))
        self.slots = torch.empty(0, dtype=torch.uint8).set_(storage).view(full)
        self.stamps = torch.full((workers, prefetch + 1), -1, dtype=torch.int64).share_memory_()
        self.written = 0  # batches this process has written (each worker counts its own)

    def take(self, n: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """In a worker: the slot for its next batch of n images, and the ticket to send."""
        info = get_worker_info()
        assert info is not None, "slots are written by loader workers only"
        w, j = info.id, self.written
        k = j % self.stamps.shape[1]
        self.written += 1
        self.stamps[w, k] = -1  # being written
        return self.slots[w, k, :n], (w, k, j, n)

    def seal(self, ticket: tuple[int, int, int, int]) -> None:
        w, k, j, _ = ticket
        self.stamps[w, k] = j

    def view(self, ticket: tuple[int, int, int, int]) -> torch.Tensor:
        w, k, _, n = ticket
        return self.slots[w, k, :n]

    def check(self, ticket: tuple[int, int, int, int]) -> None:
        """After reading a slot: it must still hold the batch the ticket names."""
        w, k, j, _ = ticket
        if int(self.stamps[w, k]) != j:
            raise RuntimeError(f"loader worker {w} rewrote slot {k} while batch {j} was read from it; "
                               "the DataLoader prefetched further ahead than the slots allow")  # fmt: skip


class _OutputBuffers:
    """Float32 batch buffers in the main process, reused once no tensor but ours uses them.

    Why: a fresh 77 MB batch (128 x 224 x 224 x 3 float32) is above glibc's mmap threshold, so
    every batch was mapped anew and page-faulted through: 52 ms a batch against 16 ms into a
    reused buffer. A buffer is reused only when its storage has no other user (the batch the
    caller was handed, any view or slice of it), so a caller that keeps batches gets new ones.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep, self.allocated = keep, 0
        self.buffers: list[tuple[torch.Tensor, int]] = []  # (buffer, its storage's use count when idle)

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        for buffer, idle in self.buffers:
            if tuple(buffer.shape) == shape and _storage_users(buffer) == idle:
                return buffer
        buffer = torch.empty(shape, dtype=torch.float32)
        self.allocated += 1
        idle = _storage_users(buffer)
        if idle is not None:  # without the count, never reuse
            self.buffers = [*self.buffers, (buffer, idle)][-self.keep :]
        return buffer


def _storage_users(tensor: torch.Tensor) -> int | None:
    count = getattr(torch._C, "_storage_Use_Count", None)  # private: absent in some future torch
    return None if count is None else int(count(tensor.untyped_storage()._cdata))


class _ShardBatches(Dataset):
    """Map-style dataset whose items are whole batches: key (epoch, batch, indices) -> raw batch
    (uint8 crops or their ring ticket, the draws the main process needs, labels)."""

    def __init__(self, shards: ShardSet, inputs: Any, ring: _CropRing | None) -> None:
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


class _TrainInputs:
    """Picklable. Worker side, `cut`: draws seeded by the batch key, uint8 crops and mirrors.
    Main-process side, `finish`: float32, minus the mean windows, plus the lighting shift.

    Why split there: a float32 batch is 4x the bytes of its uint8 crops. The finish costs the
    main process ~4 ms a batch of 64 at c=128; the training step takes ~1 s.
    """

    def __init__(self, seed: int, stats: tuple[torch.Tensor, ...], divisor: Any, **augment: Any) -> None:
        self.seed, self.divisor, self.augment = seed, divisor, augment
        self.mean, self.eigenvalues, self.eigenvectors = stats

    @property
    def crop_size(self) -> int:
        return self.augment["crop_size"]

    def crops_shape(self, batch_size: int) -> tuple[int, ...]:
        return batch_size, self.crop_size, self.crop_size, 3

    def cut(self, images: torch.Tensor, epoch: int, batch: int,
            out: torch.Tensor | None) -> tuple[torch.Tensor, tuple[np.ndarray | None, ...]]:  # fmt: skip
        generator = batch_generator(self.seed, epoch, batch)
        draws = draw_train(images.shape[0], images.shape[1], self.eigenvalues, self.eigenvectors,
                           generator=generator, **self.augment)  # fmt: skip
        crops = crop_flip(images, draws.ys, draws.xs, draws.flips, self.crop_size, out=out)
        return crops, tuple(None if t is None else t.numpy() for t in (draws.ys, draws.xs, draws.flips, draws.shift))

    def finish(self, crops: torch.Tensor, draws: tuple[np.ndarray | None, ...], out: torch.Tensor) -> torch.Tensor:
        draws = TrainDraws(*(None if a is None else torch.from_numpy(a) for a in draws))
        return finish_train(crops, self.mean, draws, self.divisor, out)


class _EvalInputs:
    """Worker side: the uint8 centre or ten views; main-process side: float32 minus the mean windows."""

    def __init__(self, mean: torch.Tensor, crop_size: int, ten_crop: bool, divisor: Any) -> None:
        self.crop_size, self.ten_crop, self.divisor = crop_size, ten_crop, divisor
        self.mean_windows = eval_mean_windows(mean, crop_size=crop_size, ten=ten_crop)

    def crops_shape(self, batch_size: int) -> tuple[int, ...]:
        c = self.crop_size
        return (batch_size, 10, c, c, 3) if self.ten_crop else (batch_size, c, c, 3)

    def cut(self, images: torch.Tensor, epoch: int, batch: int, out: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return eval_crops(images, crop_size=self.crop_size, ten=self.ten_crop, out=out), None

    def finish(self, crops: torch.Tensor, extras: None, out: torch.Tensor) -> torch.Tensor:
        return finish_eval(crops, self.mean_windows, self.divisor, out)


class _Keys(Sampler):
    """Yields the batch keys of the current pass, set before each pass (workers persist)."""

    def __init__(self) -> None:
        self.keys: Sequence[BatchKey] = ()

    def __iter__(self) -> Iterator[BatchKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _Loader:
    def __init__(self, shards_dir: str | Path, split: str, inputs: Any, workers: int, prefetch: int,
                 pin_memory: bool, batch_size: int) -> None:  # fmt: skip
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.shards_dir = Path(shards_dir)
        shards = ShardSet(self.shards_dir, split)
        self.num_images, self.stored_size = len(shards), shards.stored_size
        _check_crop(inputs.crop_size, self.stored_size)  # before the slots are sized by it
        self._keys = _Keys()
        self._ring = _CropRing(workers, prefetch, inputs.crops_shape(batch_size)) if workers > 0 else None
        self._pin_memory = pin_memory and torch.cuda.is_available()  # pinning needs CUDA
        self._outputs = _OutputBuffers()
        self._loader = DataLoader(
            _ShardBatches(shards, inputs, self._ring),
            batch_size=None,  # items are whole batches
            sampler=self._keys,
            collate_fn=_identity,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
            worker_init_fn=_worker_init if workers > 0 else None,
            # Its own generator: iterating a DataLoader draws a base seed, and drawing it from torch's
            # global RNG would shift dropout's stream, so a resumed run would differ from an unbroken one.
            generator=torch.Generator(),
        )
        self._inputs = inputs

    def _make_keys(self, epoch: int, start_batch: int) -> Sequence[BatchKey]:
        raise NotImplementedError

    def _pass(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        self._keys.keys = self._make_keys(epoch, start_batch)  # read by iter(sampler) in iter(loader)
        return self._finished(iter(self._loader))  # iter now, not at the first next(): the keys are set

    def _finished(self, raw_batches: Iterator[tuple[Any, Any, np.ndarray]]) -> Iterator[Batch]:
        for crops, extras, labels in raw_batches:
            ticket = None
            if self._ring is not None:
                ticket, crops = crops, self._ring.view(crops)
            images = self._inputs.finish(crops, extras, self._outputs.take(tuple(crops.shape)))  # copies out
            if ticket is not None:
                self._ring.check(ticket)
            if self._pin_memory:
                images = images.pin_memory()
            yield images, torch.from_numpy(labels)

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
        super().__init__(shards_dir, split, inputs, workers, prefetch, pin_memory, batch_size)
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
                         prefetch, pin_memory, batch_size)  # fmt: skip

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
