"""What the shards will take, checked before the preprocess stage reads an image.

A dataset whose shards cannot fit their disk would otherwise fail hours in, on a full disk (one
line naming the file, nothing half-written: alexnet/core/atomic.py, but hours lost).
"""

from __future__ import annotations

import json
from pathlib import Path

from alexnet.config.sections import PreprocessParams
from alexnet.core.cli import InputError
from alexnet.core.layout import DATASET_FILE


def shards_bytes(images: int, stored_size: int, fmt: str) -> int:
    """About how many bytes `images` stored images take: raw exactly; jpeg at 1/8 of raw (photos at
    quality 90 take 1/10 to 1/6: an estimate that refuses only what plainly cannot fit)."""
    raw = images * stored_size * stored_size * 3
    return raw if fmt == "raw" else raw // 8


def check_disk_for_shards(spec: PreprocessParams, prepared_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse, before any image is read, shards that cannot fit the disk of `out_dir`."""
    import shutil

    try:
        splits = json.loads((Path(prepared_dir) / DATASET_FILE).read_text())["splits"]
        images = sum(int(s["indexed"]) for s in splits.values())
    except (OSError, ValueError, KeyError, TypeError):
        return  # no readable count: preprocess names the file when it reads it
    need = shards_bytes(images, spec.stored_size, spec.format)
    out = Path(out_dir)
    have = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) if out.is_dir() else 0  # replaced or kept
    probe = next(p for p in (out, *out.absolute().parents) if p.exists())
    free = shutil.disk_usage(probe).free + have
    if need > free:
        hint = "; preprocess.format: jpeg stores about an eighth" if spec.format == "raw" else ""
        raise InputError(f"{out}: the shards need about {_gib(need)} ({images} images of "
                         f"{spec.stored_size}x{spec.stored_size}, {spec.format}) but its disk has {_gib(free)} "
                         f"free; free space or point --out at a larger disk{hint}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
