"""A deterministic, ImageNet-layout synthetic dataset: the default source of the demo.

Each class is one shape filled with one texture in one typical hue (class c: shape c % 10,
texture (c // 10 + c) % 8, hue spread around the colour wheel), drawn at a random position,
scale and rotation with hue/saturation jitter, on a random two-colour gradient with clutter and
pixel noise. Shape and texture are both needed to tell all classes apart beyond 10 classes; no
single pixel gives the class away. The layout and quirks are ImageNet's:

    <root>/train/<wnid>/<wnid>_<n>.JPEG
    <root>/val/<wnid>/<wnid>_<n>.JPEG
    <root>/LOC_synset_mapping.txt          "<wnid> <name>" per line

with, in the train split only, placed by the seed: grayscale JPEGs, CMYK JPEGs, one PNG saved
under a .JPEG name and exactly one truncated (unusable) file. Every image is drawn from its own
generator seeded by (seed, split, class, index), so the bytes depend on the params alone, not on
the number of processes.
"""

from __future__ import annotations

import colorsys
import io
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet.core.layout import SPLITS, TRAIN, VAL
from alexnet.core.processes import fork_pool

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "arrow", "crescent", "diamond")
TEXTURES = ("plain", "striped", "checkered", "dotted", "ringed", "gridded", "zigzag", "speckled")
HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "jade", "cyan", "azure", "blue", "violet",
             "magenta", "rose")  # 12 evenly spaced hues, red at 0
# Quirks of the real ILSVRC train set, in the order they are assigned to the chosen files.
QUIRKS = ("truncated", "png", "cmyk", "cmyk", "gray", "gray", "gray")


@dataclass(frozen=True)
class SyntheticClass:
    wnid: str
    shape: str
    texture: str
    hue: float  # 0..1 around the colour wheel

    @property
    def name(self) -> str:
        colour = HUE_NAMES[round(self.hue * len(HUE_NAMES)) % len(HUE_NAMES)]
        return f"{colour} {self.texture} {self.shape}"


def synthetic_classes(count: int) -> list[SyntheticClass]:
    """The class table: fake wnids n00000000.. with a distinct (shape, texture, hue) each."""
    out = []
    for c in range(count):
        hue = (c * 0.618033988749895) % 1.0 if count > len(SHAPES) else c / count
        out.append(SyntheticClass(f"n{c:08d}", SHAPES[c % len(SHAPES)],
                                  TEXTURES[(c // len(SHAPES) + c) % len(TEXTURES)], hue))
    return out


def _image_sides(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    short = int(rng.integers(min_side, max_side + 1))
    long = int(round(short * math.exp(rng.uniform(0.0, math.log(1.6)))))
    return (long, short) if rng.random() < 0.7 else (short, long)  # mostly landscape, like photos


def _rgb(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32) * 255


def _shape_mask(shape: str, w: int, h: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)

    def poly(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in points]

    def regular(n: int, phase: float = 0.0) -> list[tuple[float, float]]:
        return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=0)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        dx, dy = 0.55 * r * math.cos(angle), 0.55 * r * math.sin(angle)
        draw.ellipse((cx + dx - 0.8 * r, cy + dy - 0.8 * r, cx + dx + 0.8 * r, cy + dy + 0.8 * r), fill=0)
    elif shape == "square":
        draw.polygon(poly(regular(4, math.pi / 4)), fill=255)
    elif shape == "diamond":
        draw.polygon(poly([(0, -1), (0.55, 0), (0, 1), (-0.55, 0)]), fill=255)
    elif shape == "triangle":
        draw.polygon(poly(regular(3, -math.pi / 2)), fill=255)
    elif shape == "hexagon":
        draw.polygon(poly(regular(6)), fill=255)
    elif shape == "star":
        pts = [(math.cos(-math.pi / 2 + math.pi * k / 5) * (1 if k % 2 == 0 else 0.42),
                math.sin(-math.pi / 2 + math.pi * k / 5) * (1 if k % 2 == 0 else 0.42)) for k in range(10)]
        draw.polygon(poly(pts), fill=255)
    elif shape == "cross":
        t = 0.33
        draw.polygon(poly([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1),
                           (-t, t), (-1, t), (-1, -t), (-t, -t)]), fill=255)
    elif shape == "arrow":
        draw.polygon(poly([(-1, -0.3), (0.1, -0.3), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, 0.3),
                           (-1, 0.3)]), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(mask) > 127


def _texture_mask(texture: str, u: np.ndarray, v: np.ndarray, period: float,
                  rng: np.random.Generator) -> np.ndarray:
    # u, v: pixel coordinates in the object's rotated frame, centred on it (pixels).
    if texture == "plain":
        return np.ones(u.shape, dtype=bool)
    if texture == "striped":
        return (np.floor(u / (period / 2)) % 2) == 0
    if texture == "checkered":
        return ((np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2) == 0
    if texture == "dotted":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return du * du + dv * dv > (0.3 * period) ** 2
    if texture == "ringed":
        return (np.floor(np.sqrt(u * u + v * v) / (period / 2)) % 2) == 0
    if texture == "gridded":
        return ((u % period) > 0.3 * period) & ((v % period) > 0.3 * period)
    if texture == "zigzag":
        tri = np.abs((v / period) % 1.0 - 0.5) * period
        return (np.floor((u + tri) / (period / 2)) % 2) == 0
    if texture == "speckled":
        return rng.random(u.shape) > 0.35
    raise ValueError(f"unknown texture {texture!r}")


def draw_image(cls: SyntheticClass, rng: np.random.Generator, min_side: int, max_side: int) -> Image.Image:
    """One RGB image of class `cls`."""
    w, h = _image_sides(rng, min_side, max_side)
    short = min(w, h)
    # Drawn at half resolution and upscaled: soft, photo-like edges and half the work.
    dw, dh, ds = max(w // 2, 16), max(h // 2, 16), max(short // 2, 16)
    yy, xx = np.mgrid[0:dh, 0:dw].astype(np.float32)

    # Background: a gradient between two muted random colours, whatever the class.
    c0 = _rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.9))
    c1 = _rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.9))
    g_angle = rng.uniform(0, 2 * math.pi)
    g = (xx * math.cos(g_angle) + yy * math.sin(g_angle))
    g = (g - g.min()) / max(float(np.ptp(g)), 1.0)
    canvas = c0 + g[..., None] * (c1 - c0)

    # Clutter: a few small, dull blobs and bars that belong to no class.
    clutter = Image.new("L", (dw, dh), 0)
    cdraw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(0, dw), rng.uniform(0, dh)
        s = rng.uniform(0.05, 0.15) * ds
        if rng.random() < 0.5:
            cdraw.ellipse((x0 - s, y0 - s, x0 + s, y0 + s), fill=255)
        else:
            cdraw.line((x0, y0, x0 + rng.uniform(-3, 3) * s, y0 + rng.uniform(-3, 3) * s), fill=255,
                       width=max(1, int(s / 3)))
    cmask = np.asarray(clutter) > 127
    canvas[cmask] = _rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.8))

    # The object: centred within the middle of the shorter side, so the §2 centre crop keeps it.
    r = rng.uniform(0.2, 0.34) * ds
    cx = dw / 2 + rng.uniform(-0.16, 0.16) * ds
    cy = dh / 2 + rng.uniform(-0.16, 0.16) * ds
    angle = rng.uniform(0, 2 * math.pi)
    shape = _shape_mask(cls.shape, dw, dh, cx, cy, r, angle)
    ca, sa = math.cos(angle), math.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    tex = _texture_mask(cls.texture, u, v, period=r / 2.2, rng=rng)
    hue = cls.hue + rng.uniform(-0.05, 0.05)  # neighbouring class hues touch: hue alone is not enough
    sat, val = rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)
    fg = _rgb(hue, sat, val)
    fg_dark = _rgb(hue, sat * 0.8, val * 0.35)
    canvas[shape & tex] = fg
    canvas[shape & ~tex] = fg_dark
    # Sensor-like noise, added before the upscale so it is grain rather than single pixels.
    canvas += (rng.random(canvas.shape, dtype=np.float32) - 0.5) * 24.0  # uniform, std ~7 levels
    small = Image.fromarray(canvas.clip(0, 255).astype(np.uint8), "RGB")
    return small.resize((w, h), Image.BILINEAR)


def encode_file(img: Image.Image, quirk: str | None, quality: int) -> bytes:
    """The file's bytes: a JPEG, or one of the real data set's quirks."""
    buf = io.BytesIO()
    if quirk == "png":
        img.save(buf, "PNG", compress_level=1)  # a PNG under a .JPEG name
        return buf.getvalue()
    if quirk == "gray":
        img = img.convert("L")
    elif quirk == "cmyk":
        img = img.convert("CMYK")
    img.save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    if quirk == "truncated":
        return data[: int(len(data) * 0.6)]
    return data


@dataclass(frozen=True)
class _Job:
    path: Path
    cls: SyntheticClass
    seed: tuple[int, int, int, int]
    quirk: str | None
    min_side: int
    max_side: int


def _write_one(job: _Job) -> None:
    rng = np.random.default_rng(job.seed)
    img = draw_image(job.cls, rng, job.min_side, job.max_side)
    quality = int(rng.integers(75, 96))
    job.path.write_bytes(encode_file(img, job.quirk, quality))


def _jobs(root: Path, classes: list[SyntheticClass], per_split: dict[str, int], seed: int,
          min_side: int, max_side: int) -> Iterator[_Job]:
    n_train = len(classes) * per_split[TRAIN]
    chosen = np.random.default_rng([seed, 7]).permutation(n_train)[: len(QUIRKS)]
    quirk_of = {int(k): q for k, q in zip(chosen, QUIRKS, strict=False)}
    for s, split in enumerate(SPLITS):
        first = 0 if split == TRAIN else 100_000  # val file numbers never collide with train's
        for c, cls in enumerate(classes):
            for i in range(per_split[split]):
                quirk = quirk_of.get(c * per_split[TRAIN] + i) if split == TRAIN else None
                path = root / split / cls.wnid / f"{cls.wnid}_{first + i}.JPEG"
                yield _Job(path, cls, (seed, s, c, i), quirk, min_side, max_side)


def generate(root: str | Path, classes: int, train_per_class: int, val_per_class: int,
             min_side: int, max_side: int, seed: int, workers: int = 1) -> dict[str, int]:
    """Write the synthetic tree at `root` (replaced if present); return file counts per split.

    Same arguments -> byte-identical files, whatever `workers` is.
    """
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    table = synthetic_classes(classes)
    for split in SPLITS:
        for cls in table:
            (root / split / cls.wnid).mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{c.wnid} {c.name}\n" for c in table))
    jobs = list(_jobs(root, table, {TRAIN: train_per_class, VAL: val_per_class}, seed,
                      min_side, max_side))
    if workers > 1:
        # Workers die with the process that started them, even a killed one (alexnet/core/processes.py).
        with fork_pool(workers) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _write_one(job)
    return {TRAIN: classes * train_per_class, VAL: classes * val_per_class}
