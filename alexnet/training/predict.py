"""A trained network's softmax probabilities over a pass of batches (one view, or the ten patches of §4.1)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm import tqdm

from alexnet.model.network import autocast
from alexnet.training.metrics import mean_softmax

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on `device`, images channels-last (the layout the convolutions run fastest in)."""
    images, labels = batch
    non_blocking = torch.device(device).type == "cuda"
    images = images.to(device, non_blocking=non_blocking).contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=non_blocking)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Batches,
    *,
    device: str,
    precision: str,
    total: int | None = None,
    desc: str = "predict",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N, C) and labels (N,). Batches of (B, V, 3, c, c) views (ten patches)
    are averaged over V after the softmax (§4.1: the network's predictions on the ten patches)."""
    model.eval()
    probs, labels_all = [], []
    # disable=None: a bar on a terminal only; a log file gets no carriage-return redraws.
    bar = tqdm(batches, total=total, desc=desc, unit="batch", disable=None if progress else True, leave=False)
    for images, labels in bar:
        views = images.shape[1] if images.dim() == 5 else 1
        flat = images.reshape(-1, *images.shape[-3:])
        flat, labels = to_device((flat, labels), device)
        with autocast(device, precision):
            logits = model(flat)
        p = mean_softmax(logits.reshape(labels.shape[0], views, -1), dim=1)  # (N, C)
        probs.append(p.cpu())
        labels_all.append(labels.cpu())
    return torch.cat(probs), torch.cat(labels_all)
