"""§2 preprocessing of one image: any mode to RGB, shorter side to S, central SxS patch.

Two ways to compute it (`preprocess.resize`):

- "torchvision" (the default): byte for byte torchvision's `Resize(S)` + `CenterCrop(S)`, so a
  model trained here sees exactly what a torchvision pipeline would feed it.
- "central_square": the same §2 operation in exact geometry: the image's central square
  (side = its shorter side, centred to the sub-pixel) resampled to S x S by one PIL call,
  `resize((S, S), BILINEAR, box=square)`. PIL then resamples only the pixels the patch needs,
  less resize work than a full resize and a crop (docs/results.md has the figures).
  Not byte-equal to "torchvision": torchvision truncates the longer side to an integer and
  rounds the crop offset to whole pixels of the resized image, this does neither.

The "torchvision" definition (the reference the tests compare against, pixel for pixel):

    rgb = to_rgb(Image.open(path))                   # full decode, no JPEG draft
    w, h = rgb.size; short, long = min(w, h), max(w, h)
    size = (S, int(S * long / short)) ordered as (w, h)   # torchvision's Resize(S) arithmetic
    resized = rgb.resize(size, Image.BILINEAR)       # reducing_gap=None: plain bilinear, PIL's
                                                     # antialiased support when downscaling
    left, top = round((W - S) / 2), round((H - S) / 2)   # torchvision's CenterCrop
    patch = resized.crop((left, top, left + S, top + S))

This is exactly torchvision's `Resize(S)` + `CenterCrop(S)` on a PIL image (the benchmark's
baseline). `resize_center_crop` returns the same bytes faster, with no tolerance:
- PIL resamples in two separable passes, horizontal first, each rounding to uint8. For a wide
  image we run the horizontal pass alone, crop the columns, then the vertical pass on the kept
  columns only: the same arithmetic on fewer pixels. (PIL's `box=` argument would skip the
  crop too, but computes filter centres in a different float order: off by one level at some
  pixels, so it is not used.)
- Mode L is resized before it becomes RGB: channels are independent and L->RGB copies.
- JPEG `draft` (DCT-domain downscaling) is not used: on full-size ImageNet photos it differs
  from the full decode by far more than a rounding error, which is no tiny tolerance.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import numpy as np
from PIL import Image

RESAMPLE = Image.BILINEAR


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    PIL's own convert("RGB") for every mode except the 16/32-bit integer ones, which it clips
    at 255 (so any real 16-bit photo would come out white): those are scaled to 8 bits (>> 8).
    Alpha is dropped, not composited (as convert("RGB") does); CMYK uses PIL's conversion.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.int64)
        gray = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return img.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side equal to `size`, the longer truncated (torchvision's rule)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def _resizable(img: Image.Image) -> tuple[Image.Image, bool]:
    """`img` in the mode it is resized in, and whether that is L: grey images are resized before
    they become RGB (channels are independent and L->RGB copies), everything else as RGB."""
    gray = img.mode in ("L", "1")
    return (img.convert("L") if img.mode == "1" else img if gray else to_rgb(img)), gray


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The §2 patch of `img` as an RGB image of size x size (see the module docstring)."""
    img, gray = _resizable(img)
    w, h = img.size
    nw, nh = resized_size(w, h, size)
    left, top, right, bottom = center_box(nw, nh, size)
    if nw > nh:
        # Wide: horizontal pass only (PIL skips the vertical one when the height is kept).
        if nw != w:
            img = img.resize((nw, h), RESAMPLE)
        img = img.crop((left, 0, right, h))
        if h != size:
            img = img.resize((size, size), RESAMPLE)
    else:
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), RESAMPLE)
        if (nw, nh) != (size, size):
            img = img.crop((left, top, right, bottom))
    return img.convert("RGB") if gray else img


def central_square_patch(img: Image.Image, size: int) -> Image.Image:
    """The §2 patch as the image's central square resampled to size x size (see the module docstring)."""
    img, gray = _resizable(img)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    img = img.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side))
    return img.convert("RGB") if gray else img


RESIZES = {"torchvision": resize_center_crop, "central_square": central_square_patch}


class _PillowLimitOff:
    """Pillow's limit off while any thread is inside `no_pillow_limit`, restored when the last leaves.

    Saving and restoring it per block is not enough with threads (Dask's, a server's): a block
    entered while another has it off saves None, and restores None for good when it leaves last."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a fork never inherits the lock held by a thread

    def _reset(self) -> None:
        self.lock, self.inside, self.saved = threading.Lock(), 0, None

    @contextmanager
    def block(self) -> Iterator[None]:
        with self.lock:
            if self.inside == 0:
                self.saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            self.inside += 1
        try:
            yield
        finally:
            with self.lock:
                self.inside -= 1
                if self.inside == 0:
                    Image.MAX_IMAGE_PIXELS = self.saved


_PILLOW_LIMIT_OFF = _PillowLimitOff()


def no_pillow_limit() -> contextlib.AbstractContextManager[None]:
    """Pillow's decompression-bomb check off inside the block (restored after the last thread leaves).

    Pillow's check is one process-wide setting (it warns above it and raises above twice it).
    The pipeline's limit is a param, data.max_image_pixels, that open_image checks on each image
    instead, so the same limit holds in every process (pool and Dask workers) and exactly at it."""
    return _PILLOW_LIMIT_OFF.block()


class TooManyPixels(ValueError):
    """An image above data.max_image_pixels (a decompression bomb, or just too big to decode)."""


def open_image(path: str | IO[bytes], max_pixels: int | None) -> Image.Image:
    """Image.open (inside no_pillow_limit), refusing an image of more than `max_pixels` pixels
    (None: no limit) before any pixel is decoded: opening reads only the header."""
    img = Image.open(path)
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise TooManyPixels(f"{w}x{h} = {w * h} pixels, above data.max_image_pixels={max_pixels} "
                            "(the decompression-bomb guard; raise it, or set it to null, to accept larger images)")
    return img


def load_patch(path: str | IO[bytes], size: int, resize: str = "torchvision",
               max_pixels: int | None = Image.MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode the file at `path` (or an open binary file) in full and return its §2 patch (RGB, size x size).

    max_pixels: the limit prepare checked the file against (TooManyPixels above it; the default
    is Pillow's, data.max_image_pixels's default)."""
    if resize not in RESIZES:
        raise ValueError(f"unknown resize {resize!r}; allowed: {', '.join(RESIZES)}")
    with no_pillow_limit(), open_image(path, max_pixels) as img:
        img.load()
        return RESIZES[resize](img, size)
