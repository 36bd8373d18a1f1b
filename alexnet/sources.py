"""Where the images are: every file of an image tree, with the class it belongs to (or why none).

Three layouts (the synthetic source writes the first):
- imagenet: ILSVRC-2012 at root: train/<wnid>/*.JPEG; val/ either in <wnid>/ folders or flat,
  labelled by LOC_val_solution.csv (Kaggle: ImageId,PredictionString; the string starts with
  the wnid) at root or its parent. Names from LOC_synset_mapping.txt ("<wnid> <names>").
- tars: ILSVRC-2012 as downloaded, read inside its tars (alexnet/ilsvrc.py); data.layout picks
  it, or finds the three files at root.
- folder: any root/train/<class>/* and root/val/<class>/* tree; the folder name is the name.
Classes are the folders of train/ (the per-class tars for `tars`), and a label is the class's
position in sorted order (torchvision's ImageFolder convention), the same in every layout.
Nothing is skipped here: a file that has no class is returned with the reason, for the
data-quality report.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from alexnet.layout import SPLITS, TRAIN, VAL

SYNSET_MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"


@dataclass(frozen=True)
class ClassInfo:
    label: int
    wnid: str
    name: str


@dataclass(frozen=True)
class FoundFile:
    path: str  # relative to the root, with '/'
    split: str
    wnid: str | None  # None: no class; `problem` says why
    problem: str | None = None
    # tars only: the file's bytes are bytes [offset, offset + size) of the archive that is the
    # first component of `path` (members of uncompressed tars are stored contiguously).
    offset: int | None = None
    size: int | None = None


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _synset_names(root: Path) -> dict[str, str]:
    path = root / SYNSET_MAPPING
    if not path.is_file():
        return {}
    names = {}
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name.strip() or wnid
    return names


def _val_solution(root: Path) -> tuple[dict[str, str], Path | None]:
    for folder in (root, root.parent):
        path = folder / VAL_SOLUTION
        if path.is_file():
            with open(path, newline="") as f:
                rows = csv.DictReader(f)
                missing = {"ImageId", "PredictionString"} - set(rows.fieldnames or ())
                if missing:
                    raise ValueError(f"{path}: missing columns {sorted(missing)}")
                return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows
                        if r["PredictionString"].strip()}, path
    return {}, None


def find_classes(root: Path, source: str) -> list[ClassInfo]:
    """The classes: the folders of root/train, sorted; label = position."""
    train = root / TRAIN
    if not train.is_dir():
        raise FileNotFoundError(f"{root}: no train/ folder (expected {source} layout: train/<class>/...)")
    wnids = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not wnids:
        raise FileNotFoundError(f"{train}: no class folders")
    names = _synset_names(root) if source == "imagenet" else {}
    return [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]


def find_files(root: Path, source: str, classes: list[ClassInfo]) -> list[FoundFile]:
    """Every file under root/train and root/val, with its class or the reason it has none."""
    known = {c.wnid for c in classes}
    solution: dict[str, str] = {}
    solution_path: Path | None = None
    if source == "imagenet":
        solution, solution_path = _val_solution(root)
    found: list[FoundFile] = []
    for split in SPLITS:
        top = root / split
        if not top.is_dir():
            if split == TRAIN:
                raise FileNotFoundError(f"{root}: no train/ folder")
            continue
        for path in _files_under(top):
            rel = path.relative_to(root).as_posix()
            parts = path.relative_to(top).parts
            if len(parts) > 1:  # in a class folder
                wnid = parts[0]
                problem = None if wnid in known else f"unknown class: folder {wnid!r} is not a class of train/"
            elif split == VAL and source == "imagenet":  # flat val: labels from the CSV
                wnid = solution.get(path.stem)
                if solution_path is None:
                    problem = f"unknown class: flat val/ file and no {VAL_SOLUTION} at {root} or its parent"
                elif wnid is None:
                    problem = f"unknown class: no entry for {path.stem!r} in {solution_path}"
                elif wnid not in known:
                    problem = f"unknown class: {wnid!r} (from {solution_path.name}) is not a class of train/"
                else:
                    problem = None
            else:
                wnid, problem = None, f"unknown class: not inside a class folder of {split}/"
            found.append(FoundFile(rel, split, wnid if problem is None else None, problem))
    return found
