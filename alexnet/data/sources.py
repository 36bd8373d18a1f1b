"""Where the images are: every file of an image tree, with the class it belongs to (or why none).

Three layouts (the synthetic source writes the first):
- imagenet: ILSVRC-2012 at root: train/<wnid>/*.JPEG; val/ either in <wnid>/ folders or flat,
  labelled by LOC_val_solution.csv (Kaggle: ImageId,PredictionString; the string starts with
  the wnid) at root or its parent. Names from LOC_synset_mapping.txt ("<wnid> <names>").
- tars: ILSVRC-2012 as downloaded, read inside its tars (alexnet/data/ilsvrc.py); data.layout picks
  it, or finds the three files at root.
- folder: any root/train/<class>/* and root/val/<class>/* tree; the folder name is the name.
Classes are the folders of train/ (the per-class tars for `tars`), and a label is the class's
position in sorted order (torchvision's ImageFolder convention), the same in every layout.
Nothing is skipped silently: a file that has no class, a dangling symlink, a symlink loop, a
name that is not UTF-8 or something that is not a regular file is returned with the reason, for
the data-quality report; the files an OS leaves in folders (.DS_Store, Thumbs.db, desktop.ini,
._* AppleDouble files) are returned marked ignored, to be counted and listed, not decoded.
Symlinks are followed, to files and to folders (a class folder may live on another disk).

An empty class folder (no files but OS artifacts) is not a class: with the folder layout it is
skipped and named in the result, so labels are the sorted names of the classes that have files;
with ImageNet's layout it is refused, as the 1000 labels are positions among ImageNet's sorted
wnids and a missing class would shift every label after it. A class folder whose name is not
UTF-8 is refused by name: it could not be written as a class name.
"""

from __future__ import annotations

import csv
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alexnet.core.layout import SPLITS, TRAIN, VAL

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
    reason: str = "unknown class"  # the quality report's reason when `problem` is set
    ignored: bool = False  # an OS artifact: counted and listed, never decoded nor reported


# What an OS leaves in image folders, matched by name (case-insensitive): macOS Finder's
# .DS_Store and the ._<name> AppleDouble files it writes on non-Apple filesystems, Windows
# Explorer's Thumbs.db and desktop.ini.
OS_ARTIFACTS = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
OS_ARTIFACT = "OS artifact"


def is_os_artifact(name: str) -> bool:
    return name.lower() in OS_ARTIFACTS or name.startswith("._")


def display_path(rel: str) -> str:
    """`rel` as text that can be written anywhere: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode keeps undecodable bytes as surrogates
        return False
    return True


def _walk(folder: Path, ancestors: frozenset[tuple[int, int]]) -> Iterator[tuple[Path, str | None, str]]:
    """(path, reason or None, detail) of every entry below `folder` that is not a folder, in sorted
    order, following symlinks; a link that leads back into a folder being walked is a loop."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as err:  # a folder that cannot be listed is named, not a traceback
        yield folder, "unreadable", f"cannot list the folder: {err.strerror or err}"
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            st = os.stat(entry.path)  # follows links
        except OSError as err:
            if err.errno == errno.ELOOP:
                yield path, "symlink loop", f"{_target(entry.path)}: {err.strerror}"
            elif entry.is_symlink() and err.errno == errno.ENOENT:
                yield path, "dangling symlink", f"{_target(entry.path)}: no such file"
            else:
                yield path, "unreadable", err.strerror or str(err)
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                yield path, "symlink loop", f"{_target(entry.path)}: leads back up the tree"
            else:
                yield from _walk(path, ancestors | {key})
        elif stat.S_ISREG(st.st_mode):
            yield path, None, ""
        else:
            yield path, "not a regular file", "a device, socket or pipe"


def _target(link: str) -> str:
    try:
        return f"-> {display_path(os.readlink(link))}"
    except OSError:  # not a link (a bind mount can loop too)
        return "a folder"


def _key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _files(top: Path, root: Path) -> Iterator[tuple[Path, str | None, str]]:
    return _walk(top, frozenset({_key(root), _key(top)}))


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


def find_classes(root: Path, source: str) -> tuple[list[ClassInfo], list[str]]:
    """(the classes: the folders of root/train that hold files, sorted, label = position;
    the empty class folders skipped, as paths relative to root). See the module docstring."""
    train = root / TRAIN
    if not train.is_dir():
        raise FileNotFoundError(f"{root}: no train/ folder (expected {source} layout: train/<class>/...)")
    wnids, empty = [], []
    above = {_key(root), _key(train)}
    for p in sorted(train.iterdir()):
        if not p.is_dir() or _key(p) in above:  # not a folder, or a symlink loop: find_files reports it
            continue
        if not is_utf8(p.name):
            raise ValueError(f"{display_path(str(p))}: a class folder whose name is not UTF-8; rename it")
        # Files (not OS artifacts) anywhere below; the walk stops at the first one.
        if any(not is_os_artifact(path.name) for path, _, _ in _walk(p, frozenset(above | {_key(p)}))):
            wnids.append(p.name)
        elif source == "imagenet":
            raise ValueError(f"{p}: empty class folder; ImageNet's labels are positions among its sorted "
                             "wnids, so a missing class would shift every label after it: restore its "
                             "images (or use data.source=folder, which skips empty folders)")
        else:
            empty.append(f"{TRAIN}/{p.name}")
    if not wnids:
        raise FileNotFoundError(f"{train}: no class folders with files")
    names = _synset_names(root) if source == "imagenet" else {}
    return [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)], empty


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
        for path, reason, detail in _files(top, root):
            rel = path.relative_to(root).as_posix()
            parts = path.relative_to(top).parts
            if is_os_artifact(path.name):
                found.append(FoundFile(display_path(rel), split, None, "ignored by name", reason=OS_ARTIFACT,
                                       ignored=True))
                continue
            if reason is None and not is_utf8(rel):
                reason, detail = "name not UTF-8", "the index stores names as UTF-8 text; rename the file"
            if reason is not None:
                found.append(FoundFile(display_path(rel), split, None, detail, reason=reason))
                continue
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
