"""Stage `prepare`: find every image, decode each one, and index what can be used.

Outputs, in the output folder:
    index.parquet        one row per usable file: path (relative to the root), split, wnid,
                         label, bytes, width, height, mode, format, sha256
    classes.csv          label, wnid, name
    quality_report.csv   one row per file that cannot be used: path, split, reason, detail
    ignored.csv          one row per OS artifact skipped by name (.DS_Store, ._*, ...): path, split, reason
    dataset.json         source, root, counts per split, classes, empty class folders skipped,
                         the pixel limit checked (data.max_image_pixels)
    images/              the generated tree (source=synthetic only)
(names from alexnet/core/layout.py). With data.layout=tars (alexnet/data/ilsvrc.py) the index has one
more column, offset: the file's bytes are `bytes` bytes at `offset` of the tar its path starts
with. Every file found is indexed, reported or ignored (checked below, and stated per split in
dataset.json: found = indexed + reported + ignored). Paths whose bytes are not UTF-8 are written
with backslash escapes (\\xff) and reported, never indexed. alexnet/data/sources.py decides what a class is.
Grayscale, CMYK, palette and PNG-named-.JPEG files are usable: preprocess converts them to RGB.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import UnidentifiedImageError
from tqdm import tqdm

from alexnet.config.sections import PILLOW_MAX_IMAGE_PIXELS, DataParams
from alexnet.core.atomic import atomic_path, atomic_write_json, atomic_write_text
from alexnet.core.layout import (
    CLASSES_FILE,
    DATASET_FILE,
    IGNORED_FILE,
    IMAGES_DIR,
    INDEX_FILE,
    QUALITY_REPORT_FILE,
    SPLITS,
    TRAIN,
)
from alexnet.core.processes import fork_pool
from alexnet.data import ilsvrc, synthetic
from alexnet.data.imageops import TooManyPixels, no_pillow_limit, open_image
from alexnet.data.sources import ClassInfo, FoundFile, find_classes, find_files

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["path", "split", "wnid", "label", "bytes", "width", "height", "mode", "format", "sha256"]
REPORT_COLUMNS = ["path", "split", "reason", "detail"]
IGNORED_COLUMNS = ["path", "split", "reason"]


class BadImageError(ValueError):
    """A file that cannot be used, with data.on_bad_image=fail; the message names each file."""


def inspect_image(path: str | Path, max_pixels: int | None = PILLOW_MAX_IMAGE_PIXELS) -> dict[str, Any]:
    """Header facts of one file, after decoding it in full; or {'reason', 'detail'} if unusable."""
    return inspect_bytes(Path(path).read_bytes(), max_pixels)


def inspect_bytes(data: bytes, max_pixels: int | None = PILLOW_MAX_IMAGE_PIXELS) -> dict[str, Any]:
    """inspect_image of a file's content.

    PIL's verify() misses a truncated JPEG, so the pixels are decoded. JPEGs decode at 1/8
    scale (draft): the entropy-coded data is still read to the end, so truncation is caught.
    An image of more than `max_pixels` pixels is refused from its header, before decoding.
    """
    with no_pillow_limit():
        return _inspect_bytes(data, max_pixels)


def _inspect_bytes(data: bytes, max_pixels: int | None) -> dict[str, Any]:
    size = len(data)
    if size == 0:
        return {"reason": "zero bytes", "detail": "empty file", "bytes": 0}
    facts: dict[str, Any] = {"bytes": size, "sha256": hashlib.sha256(data).hexdigest()}
    try:
        img = open_image(io.BytesIO(data), max_pixels)
    except TooManyPixels as err:
        return {**facts, "reason": "too many pixels", "detail": str(err)}
    except UnidentifiedImageError:
        return {**facts, "reason": "not an image", "detail": "PIL cannot identify the format"}
    except (OSError, ValueError, SyntaxError) as err:
        return {**facts, "reason": "unreadable", "detail": str(err)}
    facts.update(width=img.size[0], height=img.size[1], mode=img.mode, format=img.format or "")
    try:
        if img.format == "JPEG":
            img.draft(None, (1, 1))
        img.load()
    except (OSError, EOFError) as err:
        truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
        return {**facts, "reason": "truncated" if truncated else "unreadable", "detail": str(err)}
    except (ValueError, SyntaxError) as err:
        return {**facts, "reason": "unreadable", "detail": str(err)}
    return facts


def _inspect(job: tuple[str, str, int | None, int | None, int | None]) -> dict[str, Any]:
    rel, full, offset, size, max_pixels = job
    try:  # a file gone or unreadable since it was found is a report row, not a worker's traceback
        data = Path(full).read_bytes() if offset is None else ilsvrc.read_member(full, offset, size or 0)
    except OSError as err:
        return {"path": rel, "reason": "unreadable", "detail": err.strerror or str(err)}
    return {"path": rel, **({} if offset is None else {"offset": offset}), **inspect_bytes(data, max_pixels)}


def _source_file(root: Path, f: FoundFile) -> str:
    """The file holding f's bytes: the file itself, or the tar its path starts with."""
    return str(root / (f.path if f.offset is None else f.path.split("/")[0]))


def _inspect_all(root: Path, files: list[FoundFile], max_pixels: int | None, workers: int, progress: bool
                 ) -> list[dict[str, Any]]:
    # Each job carries the pixel limit: the workers need no setting of their own.
    jobs = [(f.path, _source_file(root, f), f.offset, f.size, max_pixels) for f in files if f.problem is None]
    # disable=None: a bar on a terminal only, no carriage-return redraws in a log file
    bar = tqdm(total=len(jobs), desc="prepare: decode check", unit="img", disable=None if progress else True)
    out: list[dict[str, Any]] = []
    with bar:
        if workers > 1 and len(jobs) > 1:
            with fork_pool(workers) as pool:
                for r in pool.imap(_inspect, jobs, chunksize=32):
                    out.append(r)
                    bar.update()
        else:
            for job in jobs:
                out.append(_inspect(job))
                bar.update()
    return out


def find(root: Path, layout: str) -> tuple[list[ClassInfo], list[FoundFile], list[str]]:
    """The classes, every file and the empty class folders skipped of the data at `root` in
    `layout` (imagenet, tars or folder)."""
    if layout == "tars":
        return (*ilsvrc.scan(root), [])
    classes, empty = find_classes(root, layout)
    return classes, find_files(root, layout, classes), empty


@dataclass(frozen=True)
class Indexed:
    """What build_index found: the index, the quality report, the files ignored by name, ..."""

    index: pd.DataFrame
    report: pd.DataFrame
    ignored: pd.DataFrame
    classes: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]  # per split: found, indexed, reported, ignored
    empty_class_folders: list[str]


def build_index(root: Path, layout: str, workers: int = 1, progress: bool = False,
                max_pixels: int | None = PILLOW_MAX_IMAGE_PIXELS) -> Indexed:
    """Everything prepare writes about the data at `root`; writes nothing."""
    classes, found, empty = find(root, layout)
    ignored = [f for f in found if f.ignored]
    files = [f for f in found if not f.ignored]
    in_tars = any(f.offset is not None for f in files)
    label_of = {c.wnid: c.label for c in classes}
    wnid_of = {f.path: f.wnid for f in files}
    split_of = {f.path: f.split for f in files}
    rows, bad = [], []
    for f in files:
        if f.problem is not None:
            bad.append({"path": f.path, "split": f.split, "reason": f.reason, "detail": f.problem})
    for r in _inspect_all(root, files, max_pixels, workers, progress):
        split = split_of[r["path"]]
        if "reason" in r:
            bad.append({"path": r["path"], "split": split, "reason": r["reason"], "detail": r["detail"]})
        else:
            wnid = wnid_of[r["path"]]
            rows.append({**r, "split": split, "wnid": wnid, "label": label_of[wnid]})
    order = {s: i for i, s in enumerate(SPLITS)}
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS + (["offset"] if in_tars else []))
    index = index.sort_values(["split", "label", "path"], key=lambda c: c.map(order) if c.name == "split" else c)
    index = index.reset_index(drop=True).astype({"label": "int64", "bytes": "int64", "width": "int64",
                                                  "height": "int64", **({"offset": "int64"} if in_tars else {})})
    report = pd.DataFrame(bad, columns=REPORT_COLUMNS).sort_values(["split", "path"]).reset_index(drop=True)
    skipped = pd.DataFrame([{"path": f.path, "split": f.split, "reason": f.reason} for f in ignored],
                           columns=IGNORED_COLUMNS).sort_values(["split", "path"]).reset_index(drop=True)
    counts = {}
    for split in SPLITS:
        n = {"found": sum(f.split == split for f in found), "indexed": int((index["split"] == split).sum()),
             "reported": int((report["split"] == split).sum()), "ignored": int((skipped["split"] == split).sum())}
        # Nothing dropped silently: every file found is indexed, reported or ignored by name.
        if n["found"] != n["indexed"] + n["reported"] + n["ignored"]:
            raise RuntimeError(f"{split}: {n['found']} files found but {n['indexed']} indexed + "
                               f"{n['reported']} reported + {n['ignored']} ignored")
        counts[split] = n
    class_rows = [{"label": c.label, "wnid": c.wnid, "name": c.name} for c in classes]
    return Indexed(index, report, skipped, class_rows, counts, empty)


def _bad_image_message(report: pd.DataFrame, limit: int = 20) -> str:
    lines = [f"  {r.path}: {r.reason} ({r.detail})" for r in report.head(limit).itertuples()]
    more = [f"  ... and {len(report) - limit} more"] if len(report) > limit else []
    return "\n".join([f"{len(report)} unusable file(s) and data.on_bad_image=fail:", *lines, *more])


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def resolve_layout(data: DataParams, root: Path) -> str:
    """How the data at `root` is laid out: imagenet (an extracted tree), tars or folder."""
    if data.source != "imagenet":
        return data.source
    if data.layout == "auto":
        return "tars" if ilsvrc.is_release(root) else "imagenet"
    return "tars" if data.layout == "tars" else "imagenet"


def _remove_previous(out_dir: Path) -> None:
    # Run outside DVC (which removes a stage's outputs before running it), a run that fails (a bad
    # image with data.on_bad_image=fail) would leave the previous run's index beside its own
    # quality report, and a reader could take them for this run's. dataset.json goes first: without
    # it the folder is not a prepared dataset (load_prepared), wherever a kill interrupts this.
    for name in (DATASET_FILE, INDEX_FILE, CLASSES_FILE, QUALITY_REPORT_FILE, IGNORED_FILE):
        (out_dir / name).unlink(missing_ok=True)


def prepare(out_dir: str | Path, data: DataParams, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run the stage: index the data of the `data` section into `out_dir`; return dataset.json's content.

    source=synthetic generates the tree into out_dir/images from data.synthetic; the others
    read data.root (relative paths: against the cwd). The previous run's files are removed first,
    so a failed run leaves only what it wrote (with data.on_bad_image=fail, its quality report).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous(out_dir)
    source, root = data.source, data.root
    if source == "synthetic":
        tree = out_dir / IMAGES_DIR
        log.info("generating the synthetic tree in %s: %s", tree, data.synthetic)
        counts = synthetic.generate(tree, **data.synthetic.model_dump(), workers=workers)
        log.info("generated %s images", counts)
        layout, root_text = "imagenet", IMAGES_DIR  # stored relative to out_dir
    else:
        if root is None:
            raise ValueError(f"data.root is required for source={source!r}")
        tree = Path(root)
        if not tree.is_dir():
            raise FileNotFoundError(f"data.root {str(root)!r}: no such folder (from {Path.cwd()})")
        layout = resolve_layout(data, tree)
        # Absolute roots stay absolute; relative ones are stored relative to out_dir.
        root_text = str(tree) if tree.is_absolute() else os.path.relpath(tree.resolve(), out_dir.resolve())
    log.info("indexing %s (layout %s) with %d worker(s)", tree, layout, workers)
    found = build_index(tree, layout, workers, progress, data.max_image_pixels)
    report = found.report
    _write_csv(out_dir / QUALITY_REPORT_FILE, REPORT_COLUMNS, report.itertuples(index=False))
    _write_csv(out_dir / IGNORED_FILE, IGNORED_COLUMNS, found.ignored.itertuples(index=False))
    for r in report.itertuples():
        log.warning("unusable: %s: %s (%s)", r.path, r.reason, r.detail)
    for folder in found.empty_class_folders:
        log.warning("skipped: %s: an empty class folder is not a class", folder)
    # Labels come from the tree, before decoding: a class whose files are all unusable keeps its
    # label (a bad file never relabels other classes), and is named here.
    with_images = set(found.index.loc[found.index["split"] == TRAIN, "wnid"])
    for c in found.classes:
        if c["wnid"] not in with_images:
            log.warning("class %s (label %d) has no usable %s image", c["wnid"], c["label"], TRAIN)
    if data.on_bad_image == "fail" and len(report):
        raise BadImageError(_bad_image_message(report))
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        found.index.to_parquet(tmp, index=False)
    classes = found.classes
    _write_csv(out_dir / CLASSES_FILE, ["label", "wnid", "name"], ([c["label"], c["wnid"], c["name"]] for c in classes))
    dataset = {"source": source, "root": root_text, "splits": found.counts, "num_classes": len(classes),
               "classes": classes, "empty_class_folders": found.empty_class_folders,
               "max_image_pixels": data.max_image_pixels}
    atomic_write_json(out_dir / DATASET_FILE, dataset)
    for split, c in found.counts.items():
        log.info("%s: %d found = %d indexed + %d reported + %d ignored (OS artifacts, listed in %s)", split,
                 c["found"], c["indexed"], c["reported"], c["ignored"], IGNORED_FILE)
    return dataset


def load_prepared(prepared_dir: str | Path) -> tuple[Path, pd.DataFrame, dict[str, Any]]:
    """(image root, index, dataset.json) of a prepared folder; a clear error if incomplete."""
    prepared_dir = Path(prepared_dir)
    missing = [n for n in (DATASET_FILE, INDEX_FILE) if not (prepared_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{prepared_dir}: not a prepared dataset (missing {', '.join(missing)}); "
                                "run the prepare stage first")
    dataset = json.loads((prepared_dir / DATASET_FILE).read_text())
    index = pd.read_parquet(prepared_dir / INDEX_FILE)
    return prepared_dir / dataset["root"], index, dataset
