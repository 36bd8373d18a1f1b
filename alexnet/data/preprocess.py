"""Stage `preprocess`: the prepared index -> shards of §2 patches, and the training-set stats.

Each worker process builds whole shards (decode -> RGB -> shorter side S -> central SxS,
alexnet/data/imageops.py), streaming images to disk, so no pixels cross processes and memory does
not grow with the dataset. Per shard, in this order, each file written atomically:
    <name>.npy|.jpegs, <name>.labels.npy, <name>.stats.npz (train), <name>.done.json (ledger)
The ledger records what the shard was built from (a hash of its source files, labels and the
settings) and the sha256 of each file. A rerun keeps a shard whose ledger matches the plan and
whose files still hash to the ledger; anything else is rebuilt. mean.npy and pca.json follow,
and manifest.json comes last: until it exists the folder reads as incomplete.

preprocess.engine says where shards are built: a local process pool, or a Dask cluster
(alexnet/data/dask_engine.py). Either way the driver merges the statistics in plan order and writes
the manifest, so the outputs are the same bytes. Pool workers die with the stage (alexnet/core/processes.py).
Images the index locates inside a tar (an `offset` column, data.layout=tars) are read from it
with one seek and one read; nothing is extracted.
Every image is decoded under the pixel limit prepare checked it against (data.max_image_pixels,
recorded in dataset.json and carried by each task, so Dask workers apply it too): a file in the
index decodes here whatever Pillow's own setting in the process is. Each file's bytes are checked
against the sha256 prepare recorded before they are decoded: a file changed since prepare is
refused by name (ChangedSincePrepare), never turned into different pixels silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from alexnet.config.sections import PILLOW_MAX_IMAGE_PIXELS, PreprocessParams
from alexnet.core.atomic import atomic_write_bytes, atomic_write_json
from alexnet.core.layout import INDEX_FILE, MANIFEST_FILE, SPLITS, TRAIN
from alexnet.core.processes import die_with_parent
from alexnet.data.ilsvrc import read_member
from alexnet.data.imageops import TooManyPixels, load_patch
from alexnet.data.prepare import load_prepared
from alexnet.data.shards import (
    FORMAT_VERSION,
    ShardsError,
    check_file,
    images_file,
    labels_file,
    remove_stale,
    shard_name,
    write_images,
    write_labels,
)
from alexnet.data.stats import PixelSums, write_stats

log = logging.getLogger(__name__)


class ChangedSincePrepare(ValueError):
    """An indexed file whose bytes are no longer those prepare checked: rerun prepare."""


# Bump when the pixels a given source file and setting produce change: rebuilds every shard.
PIXELS_VERSION = 1


@dataclass(frozen=True)
class ShardTask:
    split: str
    number: int
    paths: tuple[str, ...]  # absolute: the image files, or the tars that hold them (see ranges)
    labels: tuple[int, ...]
    spec: str  # hash of what the shard is built from
    fmt: str
    size: int
    jpeg_quality: int
    out_dir: Path
    resize: str = "torchvision"
    # (offset, size) of each image inside the tar at paths[i]; empty: the paths are the images.
    ranges: tuple[tuple[int, int], ...] = ()
    # data.max_image_pixels as prepare checked it (not part of `spec`: it changes no pixel).
    max_pixels: int | None = PILLOW_MAX_IMAGE_PIXELS
    shas: tuple[str, ...] = ()  # the index's sha256 of each image; empty: not checked

    @property
    def name(self) -> str:
        return shard_name(self.split, self.number)

    @property
    def with_stats(self) -> bool:
        return self.split == TRAIN


def plan_shards(root: Path, index: Any, out_dir: Path, spec: PreprocessParams,
                max_pixels: int | None = PILLOW_MAX_IMAGE_PIXELS) -> list[ShardTask]:
    """The shards of each split, in index order, spec.shard_size images each (the last smaller)."""
    fmt, size, jpeg_quality, shard_size, resize = (spec.format, spec.stored_size, spec.jpeg_quality,
                                                   spec.shard_size, spec.resize)
    # The default resize adds nothing to the spec: shards built before the option existed stay valid.
    mode = [] if resize == "torchvision" else [resize]
    tasks = []
    for split in SPLITS:
        rows = index[index["split"] == split]
        paths, shas, labels = rows["path"].tolist(), rows["sha256"].tolist(), rows["label"].tolist()
        # In a tar: the spec keeps the member's path; the task reads its byte range of the tar.
        in_tars = "offset" in rows.columns
        files = [p.split("/")[0] for p in paths] if in_tars else paths
        ranges = list(zip(rows["offset"].tolist(), rows["bytes"].tolist())) if in_tars else []
        for number, a in enumerate(range(0, len(rows), shard_size)):
            b = a + shard_size
            spec = json.dumps([PIXELS_VERSION, fmt, size, jpeg_quality if fmt == "jpeg" else None, *mode,
                               list(zip(paths[a:b], shas[a:b], labels[a:b], strict=True))])
            tasks.append(ShardTask(split, number, tuple(str(root / p) for p in files[a:b]),
                                   tuple(int(v) for v in labels[a:b]),
                                   hashlib.sha256(spec.encode()).hexdigest(), fmt, size, jpeg_quality, out_dir,
                                   resize, tuple((int(o), int(n)) for o, n in ranges[a:b]), max_pixels,
                                   tuple(shas[a:b])))
    return tasks


_progress: Any = None  # a shared counter of images done, set in each worker


def _init_worker(counter: Any, parent: int) -> None:
    global _progress
    die_with_parent(parent)
    _progress = counter


def _tick(n: int = 1) -> None:
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += n


def _kept(task: ShardTask) -> dict[str, Any] | None:
    """The ledger of a finished shard that matches the task and its files; else None."""
    ledger = task.out_dir / f"{task.name}.done.json"
    if not ledger.is_file():
        return None
    try:
        record = json.loads(ledger.read_text())
        if record["spec"] != task.spec:
            return None
        for entry in record["files"].values():
            check_file(task.out_dir / entry["file"], entry, verify=True)
    except (OSError, ValueError, KeyError, TypeError, ShardsError) as err:  # any doubt: rebuild, and say so
        log.info("%s: rebuilding (%s)", task.name, err)
        return None
    return record


def _patches(task: ShardTask, sums: PixelSums | None) -> Iterator[np.ndarray]:
    for k, path in enumerate(task.paths):
        data = read_member(path, *task.ranges[k]) if task.ranges else Path(path).read_bytes()
        where = f"{path} at offset {task.ranges[k][0]}" if task.ranges else path
        if task.shas and hashlib.sha256(data).hexdigest() != task.shas[k]:
            raise ChangedSincePrepare(f"{where}: not the bytes prepare checked (its sha256 differs from "
                                      f"{INDEX_FILE}'s): the file changed since prepare; rerun prepare")
        try:
            image = np.asarray(load_patch(io.BytesIO(data), task.size, task.resize, task.max_pixels))  # uint8 (S, S, 3)
        except TooManyPixels as err:  # same bytes: prepared before the limit was recorded in dataset.json
            raise TooManyPixels(f"{where}: {err}; rerun prepare") from None
        if sums is not None:
            sums.add_image(image)
        _tick()
        yield image


def build_shard(task: ShardTask) -> dict[str, Any]:
    """Build (or keep, if already complete and verified) one shard; return its ledger."""
    record = _kept(task)
    if record is not None:
        _tick(len(task.paths))
        return {**record, "kept": True}
    out = task.out_dir
    sums = PixelSums.zeros(task.size) if task.with_stats else None
    # Not fsynced one by one (each fsync waits for the disk): the ledger, which is, records their
    # sha256, and a rerun re-hashes them before keeping the shard.
    files = {"images": write_images(out / images_file(task.name, task.fmt), task.fmt, _patches(task, sums),
                                    len(task.paths), task.size, task.jpeg_quality, durable=False),
             "labels": write_labels(out / labels_file(task.name), np.array(task.labels, dtype=np.int64),
                                    durable=False)}
    if sums is not None:
        data = sums.to_bytes()
        atomic_write_bytes(out / f"{task.name}.stats.npz", data, durable=False)
        files["stats"] = {"file": f"{task.name}.stats.npz", "sha256": hashlib.sha256(data).hexdigest(),
                          "bytes": len(data)}
    record = {"split": task.split, "number": task.number, "count": len(task.paths), "spec": task.spec,
              "files": files}
    atomic_write_json(out / f"{task.name}.done.json", record)  # last: the shard is complete
    return {**record, "kept": False}


def _run(tasks: list[ShardTask], workers: int, progress: bool) -> list[dict[str, Any]]:
    total = sum(len(t.paths) for t in tasks)
    # disable=None: a bar on a terminal only, no carriage-return redraws in a log file
    bar = tqdm(total=total, desc="preprocess", unit="img", disable=None if progress else True)
    # Biggest first, so a small last shard does not leave one worker idle at the end.
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i].paths))
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    with bar:
        if workers == 1 or len(tasks) <= 1:
            for i in order:
                results[i] = build_shard(tasks[i])
                bar.update(len(tasks[i].paths))
        else:
            ctx = get_context("fork")
            counter = ctx.Value("q", 0)
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker,
                                     initargs=(counter, os.getpid())) as pool:
                pending = {pool.submit(build_shard, tasks[i]): i for i in order}
                while pending:
                    # Wakes as soon as a shard is done (no polling delay at the end), or every
                    # 0.2 s to move the progress bar along with the workers' shared counter.
                    done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        results[pending.pop(future)] = future.result()  # re-raises a worker's error here
                    bar.update(counter.value - bar.n)
            bar.update(total - bar.n)
    return [r for r in results if r is not None]


def preprocess(prepared_dir: str | Path, out_dir: str | Path, spec: PreprocessParams,
               progress: bool = True) -> dict[str, Any]:
    """Run the stage (the preprocess section `spec`): shards, mean.npy, pca.json and (last)
    manifest.json in `out_dir`."""
    fmt, stored_size, jpeg_quality, resize = spec.format, spec.stored_size, spec.jpeg_quality, spec.resize
    root, index, dataset = load_prepared(prepared_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A dataset prepared before the limit was recorded was checked against Pillow's default.
    tasks = plan_shards(root, index, out_dir, spec, dataset.get("max_image_pixels", PILLOW_MAX_IMAGE_PIXELS))
    removed = remove_stale(out_dir, keep={t.name for t in tasks})
    if removed:
        log.info("removed %d stale file(s) from an earlier run: %s", len(removed), ", ".join(removed[:5]))
    log.info("%d images -> %d shards of <= %d (%s, %dx%d, %s resize) with %d worker(s), %s engine", len(index),
             len(tasks), spec.shard_size, fmt, stored_size, stored_size, resize, spec.workers, spec.engine)
    if spec.engine == "dask":
        from alexnet.data.dask_engine import run_on_dask  # an optional extra: imported only when asked for

        records = run_on_dask(build_shard, tasks, spec.dask_address, spec.workers, progress)
    else:
        records = _run(tasks, spec.workers, progress)
    kept = sum(r["kept"] for r in records)
    log.info("shards: %d built, %d kept from an earlier run (complete and verified)", len(records) - kept, kept)

    sums = PixelSums.zeros(stored_size)
    for r in records:
        if "stats" in r["files"]:
            sums = sums + PixelSums.from_file(out_dir / r["files"]["stats"]["file"])
    stats = {}
    for key, name in write_stats(out_dir, sums).items():
        path = out_dir / name
        stats[key] = {"file": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "bytes": path.stat().st_size}
    splits = {}
    for split in SPLITS:
        mine = [r for r in records if r["split"] == split]
        splits[split] = {"count": sum(r["count"] for r in mine), "shards": [
            {**r["files"]["images"], "count": r["count"], "labels": r["files"]["labels"]} for r in mine]}
    manifest = {"format_version": FORMAT_VERSION, "format": fmt, "stored_size": stored_size, "resize": resize,
                "jpeg_quality": jpeg_quality if fmt == "jpeg" else None, "source": dataset["source"],
                "num_classes": dataset["num_classes"], "classes": dataset["classes"], "splits": splits,
                "stats": stats}
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)  # last: the folder is complete
    log.info("wrote %s: %s", out_dir / MANIFEST_FILE, {s: v["count"] for s, v in splits.items()})
    return manifest
