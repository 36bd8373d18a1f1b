"""The datasets a study trains on, built once each from the base's image tree and kept in its work folder.

- "main": the training images (`train_per_class` of each class after the held-out slice, or all of
  the rest) and every val image: the study's runs train here and are measured once, on val.
- "heldout": the same training images, with the held-out slice (the first `heldout_per_class` of
  each class by name) in val's place: a tuning run is judged on it, never on val.
- "heldout_alone": the held-out slice alone, as training set (and, unused, as val): tuning by the
  speed of training (Figure 1) trains on images no study run ever sees.

Each is a tree of symlinks (the same files whatever order the file system lists them in), then the
project's own prepare and preprocess; a stamp of the params it was built from skips a rebuild.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from alexnet.config.sections import Params
from alexnet.core.atomic import atomic_write_json
from alexnet.core.layout import MANIFEST_FILE, TRAIN, VAL
from alexnet.core.provenance import fingerprint

STAMP_FILE = "study-data.json"  # what a dataset was built from
KINDS = ("main", "heldout", "heldout_alone")


@dataclass(frozen=True)
class StudyData:
    """One of a study's datasets: its image tree (None: the base's own), prepare's and preprocess's outputs."""

    kind: str
    root: Path | None
    prepared: Path
    shards: Path


def split_files(root: Path, heldout: int, train: int | None) -> dict[str, dict[str, list[Path]]]:
    """Per class: the held-out slice (the first `heldout` training files by name) and the training
    subset (the next `train`, or all of the rest)."""
    root = root.resolve()
    for split in (TRAIN, VAL):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"data.root {root}: no {split}/ folder for the study's subsets")
    out: dict[str, dict[str, list[Path]]] = {"heldout": {}, "train": {}}
    for cls in sorted(p for p in (root / TRAIN).iterdir() if p.is_dir()):
        files = sorted(p for p in cls.iterdir() if p.is_file())
        if len(files) <= heldout:
            raise ValueError(f"{cls}: {len(files)} training images, fewer than heldout_per_class + 1 = {heldout + 1}")
        out["heldout"][cls.name] = files[:heldout]
        out["train"][cls.name] = files[heldout:] if train is None else files[heldout:heldout + train]
    return out


def build_tree(root: Path, out: Path, kind: str, heldout: int, train: int | None) -> Path:
    """out/{train,val} for one kind of dataset (see the module docstring): symlinks, made idempotently."""
    files = split_files(root, heldout, train)
    train_files = files["heldout"] if kind == "heldout_alone" else files["train"]
    for cls, paths in train_files.items():
        _link_all(paths, out / TRAIN / cls)
    if kind == "main":
        _link(root.resolve() / VAL, out / VAL)
    else:
        for cls, paths in files["heldout"].items():
            _link_all(paths, out / VAL / cls)
    return out


def build_dataset(params: Params, work: Path, kind: str, heldout: int, train: int | None) -> StudyData:
    """Prepare and preprocess one dataset of the study into work/data/<kind>, unless built from the same params."""
    from alexnet.data.prepare import prepare
    from alexnet.data.preprocess import preprocess

    if kind not in KINDS:
        raise ValueError(f"dataset kind {kind!r}; one of {', '.join(KINDS)}")
    base = work / "data" / kind
    root = None
    if heldout or train is not None:
        if params.data.root is None:
            raise ValueError(f"a study subset needs a data.root (source {params.data.source} has none)")
        root = build_tree(params.data.root, base / "tree", kind, heldout, train)
        params = params.model_copy(update={"data": params.data.model_copy(update={"root": root})})
    data = StudyData(kind, root, base / "prepared", base / "shards")
    stamp = {"data": params.data.model_dump(mode="json"), "preprocess": params.preprocess.model_dump(mode="json"),
             "kind": kind, "heldout_per_class": heldout, "train_per_class": train}
    stamp_path = base / STAMP_FILE
    if stamp_path.is_file() and (data.shards / MANIFEST_FILE).is_file():
        if json.loads(stamp_path.read_text()).get("key") == fingerprint(stamp):
            return data
    prepare(data.prepared, params.data, workers=params.preprocess.workers, progress=False)
    preprocess(data.prepared, data.shards, params.preprocess, progress=False)
    atomic_write_json(stamp_path, {"key": fingerprint(stamp), **stamp})
    return data


def _link_all(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        _link(f, folder / f.name)


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    if dst.is_symlink():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
