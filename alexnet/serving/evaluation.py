"""A trained model's top-1/top-5 error on a labelled folder: FOLDER/<wnid>/<image>, both views of §4.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.serving.predictor import Model


def labelled_images(folder: Path, known: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(image, wnid) for every file in a known class's folder, sorted; and the unknown class folders."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (give a folder of class folders named by wnid)")
    images, unknown = [], []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        if cls.name not in known:
            unknown.append(str(cls))
            continue
        images += [(str(f), cls.name) for f in sorted(cls.iterdir()) if f.is_file()]
    if not images:
        raise ValueError(f"{folder}: no image in a folder named by a class of the model ({len(known)} classes)")
    return images, unknown


def evaluate_folder(model: Model, folder: Path, batch: int = 32) -> dict[str, Any]:
    """Top-1/top-5 error per view over every readable image of a known class; what was left out."""
    images, unknown = labelled_images(folder, model.classes)
    result: dict[str, Any] = {"images": 0, "classes": len({w for _, w in images}), "unknown_classes": unknown}
    unreadable: set[str] = set()
    for view, key in (("center", "center"), ("ten", "ten_crop")):
        top1 = top5 = counted = 0
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            for (path, wnid), answer in zip(chunk, model.top([p for p, _ in chunk], 5, view)):
                if answer.error is not None:
                    unreadable.add(path)
                    continue
                wnids = [c["wnid"] for c in answer.top]
                top1, top5, counted = top1 + (wnids[0] != wnid), top5 + (wnid not in wnids), counted + 1
        result[key] = {"top1_err": top1 / max(counted, 1), "top5_err": top5 / max(counted, 1)}
        result["images"] = counted
    result["unreadable"] = sorted(unreadable)
    return result
