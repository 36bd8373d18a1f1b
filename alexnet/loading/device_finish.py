"""The finish of a batch on the device that consumes it (a GPU), fed by uint8 crops.

The loader's workers cut and mirror uint8 crops, as always. Finishing them on the CPU (float
conversion, mean windows, lighting) writes four times their bytes in float32 and, at the paper's
sizes, caps the main process below what one GPU step consumes. Here the main process instead
copies the uint8 crops and their draws into page-locked memory and from there to the device on a
side stream (so the copy overlaps the step still running on the main stream), and the device runs
the same pure finish functions of alexnet/loading/augment.py on its own tensors. Each element goes
through the same float32 ops as on the CPU path (uint8 -> float32, minus the mean's element,
plus the shift, divided by the divisor), so the batch is the same, bit for bit.

With device "cpu" the same code runs on CPU tensors (no page-locking, no stream): that is how
the tests compare the two paths on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from alexnet.loading.augment import TrainDraws, finish_eval, finish_train
from alexnet.loading.batches import EvalInputs, TrainInputs

Batch = tuple[torch.Tensor, torch.Tensor]


class _Slot:
    """Host memory one batch is staged in before its copy: crops, draws (ys, xs, flips), shifts, labels."""

    def __init__(self, crops_shape: tuple[int, ...], pin: bool) -> None:
        n = crops_shape[0]
        self.crops = torch.empty(crops_shape, dtype=torch.uint8, pin_memory=pin)
        self.draws = torch.empty((n, 3), dtype=torch.int64, pin_memory=pin)  # columns ys, xs, flips
        self.shift = torch.empty((n, 3), dtype=torch.float32, pin_memory=pin)
        self.labels = torch.empty((n,), dtype=torch.int64, pin_memory=pin)
        self.copied: torch.cuda.Event | None = None  # set once a copy out of this slot is queued


class DeviceFinish:
    """raw batch (uint8 crops, the draws from `cut`, labels) -> (images, labels) finished on `device`.

    Two staging slots alternate: slot k is refilled only after the copy queued from it two batches
    ago has finished (the host waits for that copy, never for a step). The returned tensors are
    made on the current stream after it waits for the copy, so the caller uses them as any other.
    """

    def __init__(self, inputs: TrainInputs | EvalInputs, device: str | torch.device, batch_size: int) -> None:
        self.inputs, self.device = inputs, torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.slots = [_Slot(inputs.crops_shape(batch_size), self.cuda) for _ in range(2)]
        self.turn = 0
        self.divisor = inputs.divisor
        if isinstance(self.divisor, torch.Tensor):
            self.divisor = self.divisor.to(self.device)
        if isinstance(inputs, TrainInputs):
            self.mean = inputs.mean.float().to(self.device)  # once: (S, S, 3), the windows are cut on the device
        else:
            self.mean_windows = inputs.mean_windows.to(self.device)

    def __call__(self, crops: torch.Tensor, extras: Any, labels: np.ndarray) -> Batch:
        """Stages `crops` (read once here, so the caller may hand their memory back on return)."""
        slot = self.slots[self.turn]
        self.turn = 1 - self.turn
        if slot.copied is not None:
            slot.copied.synchronize()  # the copy two batches ago has left this slot
        n = crops.shape[0]
        staged = slot.crops[:n]
        staged.copy_(crops)
        slot.labels[:n].copy_(torch.from_numpy(labels))
        train = isinstance(self.inputs, TrainInputs)
        if train:
            ys, xs, flips, shift = extras
            for column, values in zip(slot.draws[:n].unbind(1), (ys, xs, flips), strict=True):
                column.copy_(torch.from_numpy(values))  # bool flips -> 0/1, read back as bool below
            if shift is not None:
                slot.shift[:n].copy_(torch.from_numpy(shift))
        with self._side():
            on_device = [t.to(self.device, non_blocking=True)
                         for t in (staged, slot.draws[:n], slot.shift[:n], slot.labels[:n])]  # fmt: skip
            if self.cuda:
                slot.copied = torch.cuda.Event()
                slot.copied.record(self.stream)
        crops_d, draws_d, shift_d, labels_d = on_device
        if not self.cuda:
            labels_d = torch.from_numpy(labels)  # not the slot's memory: a caller may keep the labels
        if self.cuda:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self.stream)
            for t in on_device:
                t.record_stream(main)  # allocated on the side stream, used on the main one
        if train:
            shift_d = shift_d if extras[3] is not None else None
            draws = TrainDraws(draws_d[:, 0], draws_d[:, 1], draws_d[:, 2].bool(), shift_d)
            images = finish_train(crops_d, self.mean, draws, self.divisor, gather=True)
        else:
            images = finish_eval(crops_d, self.mean_windows, self.divisor)
        return images, labels_d

    def _side(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()
