"""The paper's Figures 3 and 4 from any trained member (docs/paper.md §6).

Figure 3: the 96 conv1 kernels (11x11x3), one row block per tower, each kernel scaled to [0, 1]
for display, with a number per tower for colour specificity: the share of a kernel's energy
outside the grey axis (R = G = B), |w - mean_c(w)|^2 / |w|^2, averaged over the tower's kernels.
0 is a colour-agnostic (grey) kernel; an untrained one, its three channels independent, has an
expected 2/3 (two of the three dimensions are off the grey axis). The paper saw tower A's
kernels largely colour-agnostic and tower B's colour-specific. The tower split is the model's own: tower A's kernels are
`conv1.tower_a`, the first 48 channels.

Figure 4: five val images and the six training images nearest to each by Euclidean distance of
their fc7 activations (`AlexNet.features_fc7`, evaluation mode), all on the centre crop.

    python -m alexnet.figures --model models/member-0/model.pt --params params.yaml \
        --shards data/shards --out reports/figures
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.core.atomic import atomic_write_json
from alexnet.core.layout import FIGURE3_FILE, FIGURE4_FILE, FIGURES_JSON, TRAIN, VAL
from alexnet.core.plots import pyplot, save

QUERIES, NEIGHBOURS = 5, 6


def conv1_kernels(model: nn.Module) -> dict[str, torch.Tensor]:
    """{tower: its conv1 weights (K, 3, 11, 11)}: "tower_a", "tower_b" for two towers, "one_tower" else."""
    conv1 = model.conv1
    if isinstance(conv1, nn.Conv2d):
        return {"one_tower": conv1.weight.detach().float().cpu()}
    return {t: getattr(conv1, t).weight.detach().float().cpu() for t in ("tower_a", "tower_b")}


def colour_specificity(kernels: torch.Tensor) -> torch.Tensor:
    """(K,) the share of each kernel's energy (K, 3, h, w) outside the grey axis, in [0, 1]."""
    grey = kernels.mean(dim=1, keepdim=True)
    total = kernels.square().sum(dim=(1, 2, 3)).clamp_min(1e-30)
    return (kernels - grey).square().sum(dim=(1, 2, 3)) / total


def specialisation(model: nn.Module, permutations: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The towers' colour specialisation: each tower's mean colour specificity, their difference
    |A - B|, and its permutation p: how often 96 kernels dealt at random into two towers of 48 differ
    as much (the null of no specialisation). None for one tower."""
    towers = conv1_kernels(model)
    spec = {t: colour_specificity(k) for t, k in towers.items()}
    out: dict[str, Any] = {"towers": {t: float(s.mean()) for t, s in spec.items()}}
    if len(spec) != 2:
        return {**out, "difference": None, "p": None}
    a, b = spec["tower_a"], spec["tower_b"]
    both, observed = torch.cat([a, b]).double(), float((a.mean() - b.mean()).abs())
    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(both.numel(), generator=gen) for _ in range(permutations)])
    shuffled = both[order]  # (permutations, 96)
    diffs = (shuffled[:, : a.numel()].mean(1) - shuffled[:, a.numel():].mean(1)).abs()
    p = (1 + int((diffs >= observed - 1e-12).sum())) / (permutations + 1)
    return {**out, "difference": observed, "p": p, "permutations": permutations}


def kernel_grid(towers: dict[str, torch.Tensor], columns: int = 8, gap: int = 1) -> np.ndarray:
    """float (H, W, 3) in [0, 1]: each tower's kernels in rows of `columns`, the towers' blocks one
    under the other with a blank row between; each kernel scaled by its own min and max."""
    blocks = []
    for kernels in towers.values():
        k, _, h, w = kernels.shape
        rows = -(-k // columns)
        block = np.ones((rows * (h + gap), columns * (w + gap), 3))
        for i in range(k):
            x = kernels[i].permute(1, 2, 0).numpy()
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
            r, c = divmod(i, columns)
            block[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = x
        blocks.append(block)
        blocks.append(np.ones((h + gap, block.shape[1], 3)))
    return np.concatenate(blocks[:-1])


def figure3(model: nn.Module, path: Path) -> dict[str, Any]:
    """Write Figure 3 to `path`; the towers' colour specificity (mean and per kernel count)."""
    plt = pyplot()

    towers = conv1_kernels(model)
    spec = {t: float(colour_specificity(k).mean()) for t, k in towers.items()}
    grid = kernel_grid(towers)
    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1] + 0.6))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    label = {"tower_a": "tower A (top)", "tower_b": "tower B (bottom)", "one_tower": "one tower"}
    ax.set_title("conv1 kernels; colour specificity (energy off the grey axis): " +
                 ", ".join(f"{label[t]} {v:.2f}" for t, v in spec.items()), fontsize=8)
    save(fig, path, dpi=150)
    return {"colour_specificity": spec, "kernels": {t: int(k.shape[0]) for t, k in towers.items()}}


@torch.no_grad()
def fc7_features(model: nn.Module, batches) -> torch.Tensor:
    """(N, 4096) fc7 activations of every batch (x, labels), in evaluation mode, on the CPU."""
    model.eval()
    return torch.cat([model.features_fc7(x).float().cpu() for x, _ in batches])


def nearest(queries: torch.Tensor, pool: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """(Q, k) indices into pool of each query's k nearest rows by Euclidean distance, nearest first."""
    return torch.cdist(queries.double(), pool.double()).topk(min(k, pool.shape[0]), largest=False).indices


def query_indices(n_val: int, count: int = QUERIES) -> list[int]:
    """`count` val images spread evenly over the split (the same for every model)."""
    return sorted({int(i) for i in np.linspace(0, n_val - 1, min(count, n_val))})


def split_features(model: nn.Module, shards: Path, *, crop_size: int, divisor: float,
                   batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{split: (N, 4096) fc7 features of every image of the split, centre crops, in split order}."""
    from alexnet.loading.loader import EvalLoader

    feats = {}
    for split in (TRAIN, VAL):
        with EvalLoader(shards, split, batch_size=batch_size, crop_size=crop_size, ten_crop=False, workers=1,
                        divisor=divisor) as data:
            feats[split] = fc7_features(model, data)
    return feats


def knn_accuracy(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
                 k: int, chunk: int = 512) -> float:
    """The share of val images whose k nearest training images by fc7 (Euclidean) vote their class
    (a tie goes to the nearest of the tied classes)."""
    correct = 0
    for start in range(0, val.shape[0], chunk):
        idx = nearest(val[start:start + chunk], train, k)  # (q, k), nearest first
        votes = train_labels[idx]
        for row, label in zip(votes.tolist(), val_labels[start:start + chunk].tolist(), strict=True):
            counts = {c: row.count(c) for c in row}
            top = max(counts.values())
            correct += next(c for c in row if counts[c] == top) == label
    return correct / val.shape[0]


def figure4(model: nn.Module, shards: Path, path: Path, *, crop_size: int, divisor: float,
            batch_size: int = 64, names: dict[str, str] | None = None,
            feats: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Write Figure 4 to `path`: five val images and each one's six nearest training images by fc7,
    labelled with `names` (wnid -> readable name) where given."""
    plt = pyplot()

    from alexnet.data.shards import ShardSet

    feats = feats or split_features(model, shards, crop_size=crop_size, divisor=divisor, batch_size=batch_size)
    names = names or {}
    queries = query_indices(feats[VAL].shape[0])
    found = nearest(feats[VAL][queries], feats[TRAIN])
    val, train = ShardSet(shards, VAL, verify=False), ShardSet(shards, TRAIN, verify=False)
    fig, axes = plt.subplots(len(queries), 1 + found.shape[1], figsize=(1.4 * (1 + found.shape[1]), 1.5 * len(queries)),
                             squeeze=False)
    for row, (q, idx) in enumerate(zip(queries, found.tolist(), strict=True)):
        images = [val.read(np.array([q]))[0], *train.read(np.array(idx))]
        labels = [val.classes[val.labels[q]], *(train.classes[train.labels[i]] for i in idx)]
        labels = [names.get(str(c), str(c)) for c in labels]
        for col, (img, name) in enumerate(zip(images, labels, strict=True)):
            ax = axes[row][col]
            ax.imshow(img)
            ax.set_title(("val: " if col == 0 else "") + str(name)[:14], fontsize=6)
            ax.set_axis_off()
    save(fig, path, dpi=150)
    same = [sum(int(train.labels[i] == val.labels[q]) for i in idx) for q, idx in zip(queries, found.tolist(),
                                                                                       strict=True)]
    return {"queries": queries, "neighbours": found.tolist(), "same_class": same,
            "same_class_share": sum(same) / max(1, sum(len(i) for i in found.tolist()))}


def write_figures(model: nn.Module, shards: Path, out: Path, *, crop_size: int, divisor: float) -> dict[str, Any]:
    """Figures 3 and 4 and figures.json (their numbers) into `out`; the numbers."""
    out.mkdir(parents=True, exist_ok=True)
    result = {"figure3": figure3(model, out / FIGURE3_FILE),
              "figure4": figure4(model, shards, out / FIGURE4_FILE, crop_size=crop_size, divisor=divisor)}
    atomic_write_json(out / FIGURES_JSON, result)
    return result
