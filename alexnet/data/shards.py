"""Fixed-size shards of stored 256x256 (S x S) images: the on-disk format, and its reader.

A shards folder holds, per split, shards `<split>-00000...` of `shard_size` images each (the
last one smaller), in order of the prepared index:
    raw:  <name>.npy          uint8 (n, S, S, 3), NHWC, memory-mapped when read
    jpeg: <name>.jpegs        each image as JPEG bytes (container below), decoded when read
          <name>.labels.npy   int64 (n,)
and, written last, manifest.json: format, stored_size, classes, and per split the count and
each shard's files with their sha256 and size. A folder without a manifest is incomplete; a
reader only reads shards the manifest lists, and refuses any whose size or sha256 differs.
`<name>.done.json` / `<name>.stats.npz` are the writer's per-shard ledger (see preprocess.py).

jpeg container: b"AXJPEGS1", uint64 n, uint64 offsets[n + 1] (little-endian, relative to the
end of the header), then the n JPEG files back to back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alexnet.core.atomic import atomic_path
from alexnet.core.cli import InputError
from alexnet.core.layout import MANIFEST_FILE, SPLITS
from alexnet.data.stats import read_stats

FORMAT_VERSION = 1
JPEG_MAGIC = b"AXJPEGS1"
_HASH_CHUNK = 1 << 22


class ShardsError(InputError):
    """A shards folder that is missing, incomplete or does not match its manifest."""


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}"


def images_file(name: str, fmt: str) -> str:
    return f"{name}.npy" if fmt == "raw" else f"{name}.jpegs"


def labels_file(name: str) -> str:
    return f"{name}.labels.npy"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_images(path: str | Path, fmt: str, images: Iterable[np.ndarray], count: int, size: int,
                 jpeg_quality: int = 90, durable: bool = True) -> dict[str, Any]:
    """Write `count` uint8 (S, S, 3) images to one shard file, atomically; return its record.

    raw streams each image to disk as it comes (nothing held in memory); jpeg holds only the
    shard's compressed bytes. The sha256 is computed on the way, not by reading back.
    """
    h = hashlib.sha256()
    written = 0
    with atomic_path(path, durable) as tmp, open(tmp, "wb") as f:
        if fmt == "raw":
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "|u1", "fortran_order": False, "shape": (count, size, size, 3)})
            f.write(header.getvalue())
            h.update(header.getvalue())
            for image in images:
                _check_image(image, size)
                f.write(image.data)
                h.update(image.data)
                written += 1
        elif fmt == "jpeg":
            blobs = []
            for image in images:
                _check_image(image, size)
                buf = io.BytesIO()
                Image.fromarray(image, "RGB").save(buf, "JPEG", quality=jpeg_quality)
                blobs.append(buf.getvalue())
            written = len(blobs)
            offsets = np.zeros(len(blobs) + 1, dtype="<u8")
            np.cumsum([len(b) for b in blobs], out=offsets[1:])
            for part in (JPEG_MAGIC, np.uint64(len(blobs)).astype("<u8").tobytes(), offsets.tobytes(), *blobs):
                f.write(part)
                h.update(part)
        else:
            raise ValueError(f"unknown shard format {fmt!r}; allowed: raw, jpeg")
        if written != count:
            raise ValueError(f"{path}: expected {count} images, got {written}")
        f.flush()
    return {"file": Path(path).name, "sha256": h.hexdigest(), "bytes": Path(path).stat().st_size}


def _check_image(image: np.ndarray, size: int) -> None:
    if image.shape != (size, size, 3) or image.dtype != np.uint8 or not image.flags.c_contiguous:
        raise ValueError(f"expected a contiguous uint8 ({size}, {size}, 3) image, got {image.dtype} {image.shape}")


def write_labels(path: str | Path, labels: np.ndarray, durable: bool = True) -> dict[str, Any]:
    buf = io.BytesIO()
    np.save(buf, np.asarray(labels, dtype=np.int64))
    data = buf.getvalue()
    with atomic_path(path, durable) as tmp:
        Path(tmp).write_bytes(data)
    return {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def read_manifest(shards_dir: str | Path) -> dict[str, Any]:
    """manifest.json of a complete shards folder; a ShardsError naming the folder otherwise."""
    path = Path(shards_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ShardsError(f"{shards_dir}: no {MANIFEST_FILE}: the shards are missing or incomplete "
                          "(run the preprocess stage; a rerun finishes an interrupted one)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShardsError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardsError(f"{path}: format_version {manifest.get('format_version')!r}, "
                          f"this code reads {FORMAT_VERSION}; rerun the preprocess stage")
    return manifest


# (path, size, mtime_ns) -> sha256 already checked in this process: a reopened ShardSet is cheap.
_verified: dict[tuple[str, int, int], str] = {}


def check_file(path: Path, record: dict[str, Any], verify: bool) -> None:
    """Refuse a file whose size (always) or sha256 (if verify) differs from its record."""
    if not path.is_file():
        raise ShardsError(f"{path}: listed in the manifest but missing")
    st = path.stat()
    if st.st_size != record["bytes"]:
        raise ShardsError(f"{path}: {st.st_size} bytes, the manifest says {record['bytes']}")
    if verify:
        key = (str(path), st.st_size, st.st_mtime_ns)
        if _verified.get(key) != record["sha256"]:
            digest = file_sha256(path)
            if digest != record["sha256"]:
                raise ShardsError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                                  f"{record['sha256'][:12]}...")
            _verified[key] = digest


class ShardSet:
    """One split of a shards folder, read by index (random access, any order).

    Picklable and cheap to reopen in DataLoader workers: memory maps and file handles open on
    first use in each process. verify=True (default) checks every shard's sha256 once per
    process against the manifest; verify=False checks sizes only.
    """

    def __init__(self, shards_dir: str | Path, split: str, verify: bool = True):
        self.shards_dir = Path(shards_dir)
        manifest = read_manifest(self.shards_dir)
        if split not in manifest["splits"]:
            raise ShardsError(f"{self.shards_dir}: no split {split!r} in the manifest "
                              f"(has {sorted(manifest['splits'])})")
        self.split = split
        self.format: str = manifest["format"]
        self.stored_size: int = int(manifest["stored_size"])
        self.classes: list[str] = [c["name"] for c in manifest["classes"]]
        entries = manifest["splits"][split]["shards"]
        self._files = [self.shards_dir / e["file"] for e in entries]
        counts = np.array([e["count"] for e in entries], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        labels = []
        for e, path in zip(entries, self._files, strict=True):
            check_file(path, e, verify)
            lpath = self.shards_dir / e["labels"]["file"]
            check_file(lpath, e["labels"], verify=True)  # small: always checked
            labels.append(np.load(lpath))
        self.labels: np.ndarray = (np.concatenate(labels) if labels else np.zeros(0)).astype(np.int64)
        if len(self.labels) != manifest["splits"][split]["count"] or len(self.labels) != self._starts[-1]:
            raise ShardsError(f"{self.shards_dir}: {split} has {len(self.labels)} labels, the manifest "
                              f"says {manifest['splits'][split]['count']}")
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def _shard(self, k: int) -> Any:
        if k not in self._open:
            if self.format == "raw":
                self._open[k] = np.load(self._files[k], mmap_mode="r")
            else:
                self._open[k] = _JpegShard(self._files[k])
        return self._open[k]

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), S, S, 3) images at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"{self.split}: indices must be in [0, {len(self)}), got "
                             f"{indices.min()}..{indices.max()}")
        s = self.stored_size
        out = np.empty((len(indices), s, s, 3), dtype=np.uint8)
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        for k in np.unique(shard_of):
            where = np.nonzero(shard_of == k)[0]
            local = indices[where] - self._starts[k]
            shard = self._shard(int(k))
            if self.format == "raw":
                out[where] = shard[local]  # reads only these rows from the map
            else:
                for i, j in zip(where, local, strict=True):
                    out[i] = shard.decode(int(j))
        return out


class _JpegShard:
    def __init__(self, path: Path):
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        if bytes(self.data[:8]) != JPEG_MAGIC:
            raise ShardsError(f"{path}: not a jpeg shard (bad magic)")
        n = int(self.data[8:16].view("<u8")[0])
        self.offsets = np.frombuffer(self.data[16 : 16 + 8 * (n + 1)].tobytes(), dtype="<u8")
        self.start = 16 + 8 * (n + 1)

    def decode(self, j: int) -> np.ndarray:
        a, b = self.start + int(self.offsets[j]), self.start + int(self.offsets[j + 1])
        with Image.open(io.BytesIO(self.data[a:b].tobytes())) as img:
            return np.asarray(img.convert("RGB"))


def load_stats(shards_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean image float32 (S, S, 3), eigenvalues (3,), eigenvectors (3, 3) as columns)."""
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    for record in manifest["stats"].values():
        check_file(shards_dir / record["file"], record, verify=True)
    return read_stats(shards_dir)


def data_version(shards_dir: str | Path) -> str:
    """Short sha256 of manifest.json: names the exact data a model was trained on."""
    read_manifest(shards_dir)
    return hashlib.sha256((Path(shards_dir) / MANIFEST_FILE).read_bytes()).hexdigest()[:12]


def remove_stale(shards_dir: Path, keep: set[str]) -> list[str]:
    """Delete the manifest, temporary files and shard files of other plans; return their names."""
    removed = []
    if (shards_dir / MANIFEST_FILE).is_file():  # first: from here on the folder reads as incomplete
        os.unlink(shards_dir / MANIFEST_FILE)
        removed.append(MANIFEST_FILE)
    for path in sorted(shards_dir.iterdir()) if shards_dir.is_dir() else []:
        name = path.name
        is_shard = name.split("-")[0] in SPLITS and name.split(".")[0] not in keep
        if path.is_file() and (name.startswith(".tmp-") or is_shard):
            os.unlink(path)
            removed.append(name)
    return removed
