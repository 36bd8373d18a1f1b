"""Training-set statistics for §2 (per-pixel mean image) and §4.1 (PCA of RGB), streamed.

Each shard contributes exact integer partial sums (per-pixel sums, the RGB sum, the sum of
RGB outer products, the counts); partials add in any order, so shards are processed in
parallel and a resumed run gets the same numbers as a fresh one. The division and the
eigendecomposition happen once, in float64, at the end. Pixel units are 0..255.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet.core.atomic import atomic_write, atomic_write_json
from alexnet.core.layout import MEAN_FILE, PCA_FILE

# The six distinct entries of the symmetric 3x3 sum of x x^T.
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
# Pixels per uint32 partial sum: 66,051 * 255^2 < 2^32, so no chunk can overflow.
_CHUNK = 65536


def rgb_outer_sum(image: np.ndarray) -> np.ndarray:
    """The exact sum over the pixels of a uint8 (..., 3) image of x x^T, as int64 (3, 3).

    In integers all the way: a product of two uint8 values fits uint16 (255^2 = 65,025) and a
    chunk of 65,536 of them fits uint32. Faster than a float64 matmul, which needs the whole
    image converted to float64 first (this is the preprocess stage's hot loop).
    """
    pixels = image.reshape(-1, 3)
    out = np.zeros((3, 3), np.int64)
    planes_buf, product_buf = _scratch_buffers()
    for a in range(0, len(pixels), _CHUNK):
        chunk = pixels[a:a + _CHUNK]
        planes, product = planes_buf[:, :len(chunk)], product_buf[:len(chunk)]
        planes[...] = chunk.T  # channel-planar: contiguous rows to multiply
        for i, j in _PAIRS:
            np.multiply(planes[i], planes[j], out=product)
            out[i, j] += int(product.sum(dtype=np.uint32))
    return np.triu(out) + np.triu(out, 1).T


_scratch = threading.local()


def _scratch_buffers() -> tuple[np.ndarray, np.ndarray]:
    # Reused, not allocated per image: in the preprocess loop, between PIL's allocations, fresh
    # 400 KB arrays come from mmap and page-fault on first touch, which cost more than the maths.
    if not hasattr(_scratch, "buffers"):
        _scratch.buffers = (np.empty((3, _CHUNK), np.uint16), np.empty(_CHUNK, np.uint16))
    return _scratch.buffers


@dataclass
class PixelSums:
    """Exact partial sums over a set of (S, S, 3) uint8 images."""

    images: int
    pixel_sum: np.ndarray  # int64 (S, S, 3): sum over images of each pixel (uint32 while adding)
    rgb_outer: np.ndarray  # int64 (3, 3): sum over every pixel of x x^T

    @classmethod
    def zeros(cls, size: int) -> PixelSums:
        # uint32 halves the memory traffic per image; exact up to 2^32 / 255 = 16.8 M images.
        return cls(0, np.zeros((size, size, 3), np.uint32), np.zeros((3, 3), np.int64))

    def add_image(self, image: np.ndarray) -> None:
        """Add one uint8 (S, S, 3) image, in place."""
        if self.images >= 16_000_000 and self.pixel_sum.dtype == np.uint32:
            self.pixel_sum = self.pixel_sum.astype(np.int64)
        self.images += 1
        np.add(self.pixel_sum, image, out=self.pixel_sum)
        self.rgb_outer += rgb_outer_sum(image)

    def __add__(self, other: PixelSums) -> PixelSums:
        return PixelSums(self.images + other.images,
                         self.pixel_sum.astype(np.int64) + other.pixel_sum.astype(np.int64),
                         self.rgb_outer + other.rgb_outer)

    @property
    def pixels(self) -> int:
        return self.images * self.pixel_sum.shape[0] * self.pixel_sum.shape[1]

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, images=np.int64(self.images), pixel_sum=self.pixel_sum.astype(np.int64),
                 rgb_outer=self.rgb_outer)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: str | Path) -> PixelSums:
        with np.load(path) as z:
            return cls(int(z["images"]), z["pixel_sum"].astype(np.int64), z["rgb_outer"].astype(np.int64))


def finish(sums: PixelSums) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean image float32 (S, S, 3), eigenvalues (3,) descending, eigenvectors (3, 3) columns).

    The covariance is np.cov's (unbiased, n - 1) of all training pixels as RGB triples.
    """
    if sums.images == 0:
        raise ValueError("no training images: cannot compute the mean image and RGB PCA")
    mean = (sums.pixel_sum.astype(np.float64) / sums.images).astype(np.float32)
    n = sums.pixels
    rgb_sum = [int(v) for v in sums.pixel_sum.reshape(-1, 3).sum(axis=0)]
    # n * sum(x x^T) - sum(x) sum(x)^T in Python integers: exact, then one float division.
    cov = np.array([[(n * int(sums.rgb_outer[i, j]) - rgb_sum[i] * rgb_sum[j]) / (n * (n - 1))
                     for j in range(3)] for i in range(3)], dtype=np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    # A fixed sign (largest component positive): the same data always gives the same file.
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), range(3)])
    return mean, eigenvalues, eigenvectors * np.where(signs == 0, 1, signs)


def write_stats(out_dir: str | Path, sums: PixelSums) -> dict[str, str]:
    """Write mean.npy and pca.json into `out_dir`; return {file name: its name} for the manifest."""
    mean, eigenvalues, eigenvectors = finish(sums)
    out_dir = Path(out_dir)
    atomic_write(out_dir / MEAN_FILE, lambda f: np.save(f, mean))
    atomic_write_json(out_dir / PCA_FILE, {
        "eigenvalues": [float(v) for v in eigenvalues],
        "eigenvectors": [[float(v) for v in row] for row in eigenvectors],
        "eigenvectors_are": "columns",
        "pixels": sums.pixels,
        "images": sums.images,
        "units": "0..255",
    })
    return {"mean": MEAN_FILE, "pca": PCA_FILE}


def read_stats(shards_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shards_dir = Path(shards_dir)
    mean = np.load(shards_dir / MEAN_FILE).astype(np.float32)
    pca = json.loads((shards_dir / PCA_FILE).read_text())
    return (mean, np.asarray(pca["eigenvalues"], dtype=np.float64),
            np.asarray(pca["eigenvectors"], dtype=np.float64))
