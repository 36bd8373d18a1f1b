"""§4.1/§6 testing: top-1/top-5 error with the centre crop and the ten patches, ensembles, reports."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet.core.atomic import atomic_write, atomic_write_json, atomic_write_text
from alexnet.core.layout import (
    CENTER,
    CONFUSION_FILE,
    ENSEMBLE_PLOT_FILE,
    PER_CLASS_FILE,
    PREDICTIONS_DIR,
    TEN_CROP,
    VIEWS,
)
from alexnet.core.plots import pyplot, save
from alexnet.training.metrics import average_probs, confusion_matrix, per_class_accuracy, topk_errs


def headline_view(views: Iterable[str]) -> str:
    """The view whose figures an ensemble is reported, plotted and registered by: the ten patches if evaluated."""
    return TEN_CROP if TEN_CROP in views else CENTER


def predictions_file(name: str, view: str) -> str:
    """<member or "ensemble">.<view>.npy: one file of probabilities per model and view."""
    return f"{name}.{view}.npy"


def save_probs(path: str | Path, probs: torch.Tensor) -> None:
    """Per-image class probabilities (N, C) as float32 .npy, so ensembles need no second forward pass."""
    atomic_write(path, lambda f: np.save(f, probs.numpy().astype(np.float32)))


def load_probs(path: str | Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path, allow_pickle=False))


def ensemble_report(
    members: Mapping[str, Mapping[str, torch.Tensor]], labels: torch.Tensor
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Errors of every member and of their average, per view.

    `members` maps a member name to {view: probs} (layout.VIEWS; a view may be absent).
    Returns (metrics, ensemble probabilities per view). The top-level "center"/"ten_crop" entries
    are the ensemble's: the product's headline figures (with one member, that member's).
    """
    views = [v for v in VIEWS if all(v in m for m in members.values())]
    ensemble = {v: average_probs([m[v] for m in members.values()]) for v in views}
    metrics: dict[str, Any] = {v: topk_errs(ensemble[v], labels) for v in views}
    metrics["ensemble"] = {v: dict(metrics[v]) for v in views}
    metrics["ensemble"]["members"] = len(members)
    metrics["members"] = {name: {v: topk_errs(m[v], labels) for v in views} for name, m in members.items()}
    metrics["images"] = int(labels.shape[0])
    return metrics, ensemble


def write_per_class(path: str | Path, probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> None:
    acc = per_class_accuracy(probs, labels)
    count = torch.bincount(labels.long(), minlength=len(class_names))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["label", "class", "images", "top1_acc"])
    for i, name in enumerate(class_names):
        writer.writerow([i, name, int(count[i]), f"{float(acc[i]):.6f}" if count[i] else ""])
    atomic_write_text(path, buf.getvalue())


def write_confusion_png(path: str | Path, probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                        title: str) -> None:
    """Row-normalised confusion matrix image (true class per row)."""
    plt = pyplot()

    cm = confusion_matrix(probs, labels).double()
    rows = cm.sum(dim=1, keepdim=True).clamp(min=1)
    norm = (cm / rows).numpy()
    n = len(class_names)
    size = min(4 + 0.35 * n, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 50:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    save(fig, path, dpi=100, tight=False)


def write_comparison_png(path: str | Path, metrics: Mapping[str, Any]) -> None:
    """Bar chart: every member against the ensemble, top-1/top-5 error, centre and ten-crop."""
    plt = pyplot()

    names = [*metrics["members"], "ensemble"]
    rows = [*metrics["members"].values(), metrics["ensemble"]]
    series = [(view, k) for view in VIEWS if view in metrics for k in ("top1_err", "top5_err")]
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(names), 4))
    width = 0.8 / max(len(series), 1)
    for s, (view, k) in enumerate(series):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [row[view][k] for row in rows], width, label=f"{view} {k.replace('_err', '')}")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("error")
    ax.set_title("members against the ensemble (§6)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path, dpi=100, tight=False)


def read_class_names(classes_csv: str | Path) -> list[str]:
    """Names in label order from the prepare stage's classes file (label, wnid, name)."""
    with open(classes_csv, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["label"]))
    return [r.get("name") or r["wnid"] for r in rows]


def evaluate_ensemble(
    member_probs: Mapping[str, Mapping[str, str | Path]],
    labels: torch.Tensor,
    class_names: Sequence[str],
    *,
    reports_dir: str | Path,
    metrics_path: str | Path,
) -> dict[str, Any]:
    """Members' saved probabilities -> ensemble probabilities, metrics.json and the report images."""
    reports_dir = Path(reports_dir)
    members = {name: {view: load_probs(p) for view, p in views.items()} for name, views in member_probs.items()}
    metrics, ensemble = ensemble_report(members, labels)
    for view, probs in ensemble.items():
        save_probs(reports_dir / PREDICTIONS_DIR / predictions_file("ensemble", view), probs)
    best = headline_view(ensemble)
    write_per_class(reports_dir / PER_CLASS_FILE, ensemble[best], labels, class_names)
    write_confusion_png(reports_dir / CONFUSION_FILE, ensemble[best], labels, class_names,
                        title=f"ensemble of {len(members)}, {best}")
    write_comparison_png(reports_dir / ENSEMBLE_PLOT_FILE, metrics)
    atomic_write_json(metrics_path, dict(metrics))
    return metrics
