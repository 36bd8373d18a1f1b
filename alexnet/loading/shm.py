"""Memory the loader reuses batch after batch: shared-memory crop slots and float32 batch buffers.

Both exist for one reason: a fresh large tensor is a fresh mapping that every process touching
it page-faults through, so a batch made in new memory costs more than cutting it. Memory mapped
once and kept resident does not. (docs/results.md has the measured figures.)
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import get_worker_info

# (worker, slot, that worker's batch number, images): what a worker sends instead of its crops.
Ticket = tuple[int, int, int, int]


class CropRing:
    """Shared-memory slots that the workers write uint8 crops into, reused batch after batch.

    Why not a fresh shared-memory tensor per batch (torch's way): both processes then page-fault
    through every new segment, which costs more than cutting the crops. Slots are mapped once and
    stay resident.

    Worker w writes its j-th batch into slot j mod K and sends only a ticket (w, slot, j, n).
    The DataLoader dispatches a worker's next task before handing the main process the current
    batch, and keeps at most `prefetch` of a worker's batches dispatched but not handed over;
    the main process copies a batch out (`finish`) before it asks for the next. So K =
    prefetch + 1 slots never overwrite a batch that is being read. A stamp per slot checks it:
    a slot rewritten while it was read raises instead of handing over a corrupt batch.
    """

    def __init__(self, workers: int, prefetch: int, shape: tuple[int, ...]) -> None:
        # Straight into shared memory, untouched: pages are faulted in by the first batches, not
        # zero-filled here and then copied over (share_memory_()), a second pass over every slot.
        full = (workers, prefetch + 1, *shape)
        storage = torch.UntypedStorage._new_shared(math.prod(full))
        self.slots = torch.empty(0, dtype=torch.uint8).set_(storage).view(full)
        self.stamps = torch.full((workers, prefetch + 1), -1, dtype=torch.int64).share_memory_()
        self.written = 0  # batches this process has written (each worker counts its own)

    def take(self, n: int) -> tuple[torch.Tensor, Ticket]:
        """In a worker: the slot for its next batch of n images, and the ticket to send."""
        info = get_worker_info()
        assert info is not None, "slots are written by loader workers only"
        w, j = info.id, self.written
        k = j % self.stamps.shape[1]
        self.written += 1
        self.stamps[w, k] = -1  # being written
        return self.slots[w, k, :n], (w, k, j, n)

    def seal(self, ticket: Ticket) -> None:
        w, k, j, _ = ticket
        self.stamps[w, k] = j

    def view(self, ticket: Ticket) -> torch.Tensor:
        w, k, _, n = ticket
        return self.slots[w, k, :n]

    def check(self, ticket: Ticket) -> None:
        """After reading a slot: it must still hold the batch the ticket names."""
        w, k, j, _ = ticket
        if int(self.stamps[w, k]) != j:
            raise RuntimeError(f"loader worker {w} rewrote slot {k} while batch {j} was read from it; "
                               "the DataLoader prefetched further ahead than the slots allow")  # fmt: skip


class OutputBuffers:
    """Float32 batch buffers in the main process, reused once no tensor but ours uses them.

    Why: a training batch is above glibc's mmap threshold, so a fresh one is mapped anew and
    page-faulted through on every batch. A buffer is reused only when its storage has no other
    user (the batch the caller was handed, any view or slice of it), so a caller that keeps
    batches gets new ones.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep, self.allocated = keep, 0
        self.buffers: list[tuple[torch.Tensor, int]] = []  # (buffer, its storage's use count when idle)

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        for buffer, idle in self.buffers:
            if tuple(buffer.shape) == shape and storage_users(buffer) == idle:
                return buffer
        buffer = torch.empty(shape, dtype=torch.float32)
        self.allocated += 1
        idle = storage_users(buffer)
        if idle is not None:  # without the count, never reuse
            self.buffers = [*self.buffers, (buffer, idle)][-self.keep :]
        return buffer


def storage_users(tensor: torch.Tensor) -> int | None:
    """How many tensors share `tensor`'s storage; None where torch does not say."""
    count = getattr(torch._C, "_storage_Use_Count", None)  # private: absent in some future torch
    return None if count is None else int(count(tensor.untyped_storage()._cdata))
