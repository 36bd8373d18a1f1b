"""Pack a folder of ImageNet photos into the official ILSVRC-2012 layout, and the same photos
extracted; with --check, run prepare + preprocess on both and compare the outputs byte for byte.

    python scripts/pack_ilsvrc.py [--images DIR] --out DIR [--check]

--images: <wnid>/*.JPEG and synsets.txt ("<wnid> <name>" lines), default
../shared/datasets/imagenet-samples-200 beside the repository. Every photo goes to train; the
photos of every second class also to val (numbered ILSVRC2012_val_<n>.JPEG in class order).
Writes, under --out:
    tars/       ILSVRC2012_img_train.tar (per-class tars inside), ILSVRC2012_img_val.tar,
                ILSVRC2012_devkit_t12.tar.gz (data/meta.mat, data/ILSVRC2012_validation_ground_truth.txt)
    extracted/  train/<wnid>/, val/<wnid>/, LOC_synset_mapping.txt
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from scipy.io import savemat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alexnet.core.layout import MANIFEST_FILE, MEAN_FILE, PCA_FILE  # noqa: E402
from alexnet.data import ilsvrc  # noqa: E402


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            _add(tar, name, data)
    return buf.getvalue()


def pack(images: Path, out: Path) -> None:
    names = {}
    if (images / "synsets.txt").is_file():
        for line in (images / "synsets.txt").read_text().splitlines():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name or wnid
    wnids = sorted(p.name for p in images.iterdir() if p.is_dir())
    train = {w: sorted(p for p in (images / w).iterdir() if p.is_file()) for w in wnids}
    val = [(f"ILSVRC2012_val_{n + 1:08d}.JPEG", w, train[w][0]) for n, w in enumerate(wnids[::2])]
    tars, tree = out / "tars", out / "extracted"
    tars.mkdir(parents=True)
    (tars / ilsvrc.TRAIN_TAR).write_bytes(
        _tar([(f"{w}.tar", _tar([(p.name, p.read_bytes()) for p in files])) for w, files in train.items()]))
    (tars / ilsvrc.VAL_TAR).write_bytes(_tar([(name, p.read_bytes()) for name, _, p in val]))
    ids = {w: i + 1 for i, w in enumerate(wnids)}
    synsets = np.array([(ids[w], w, names.get(w, w), 0) for w in wnids],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    with tarfile.open(tars / ilsvrc.DEVKIT, "w:gz") as tar:
        _add(tar, f"ILSVRC2012_devkit_t12/{ilsvrc.META}", meta.getvalue())
        _add(tar, f"ILSVRC2012_devkit_t12/{ilsvrc.GROUND_TRUTH}", "".join(f"{ids[w]}\n" for _, w, _ in val).encode())
    for w, files in train.items():
        (tree / "train" / w).mkdir(parents=True)
        for p in files:
            (tree / "train" / w / p.name).write_bytes(p.read_bytes())
    for name, w, p in val:
        (tree / "val" / w).mkdir(parents=True, exist_ok=True)
        (tree / "val" / w / name).write_bytes(p.read_bytes())
    (tree / "LOC_synset_mapping.txt").write_text("".join(f"{w} {names.get(w, w)}\n" for w in wnids))
    print(f"{out}: {sum(map(len, train.values()))} train and {len(val)} val photos of {len(wnids)} classes")


def check(out: Path, workers: int) -> bool:
    """prepare + preprocess (stored_size 256, raw) on both layouts; True when every output is equal."""
    from alexnet.config.sections import DataParams, PreprocessParams
    from alexnet.data.prepare import prepare
    from alexnet.data.preprocess import preprocess

    digests = {}
    for layout in ("tars", "extracted"):
        prepare(out / f"prepared-{layout}", DataParams(source="imagenet", root=out / layout), workers, progress=False)
        shards = out / f"shards-{layout}"
        manifest = preprocess(out / f"prepared-{layout}", shards, PreprocessParams(workers=workers), progress=False)
        shard_list = [s for split in manifest["splits"].values() for s in split["shards"]]
        files = [MANIFEST_FILE, MEAN_FILE, PCA_FILE] + [f for s in shard_list for f in (s["file"], s["labels"]["file"])]
        digests[layout] = {f: hashlib.sha256((shards / f).read_bytes()).hexdigest() for f in files}
    same = digests["tars"] == digests["extracted"]
    print(json.dumps({"identical": same, "files": digests["tars"] if same else digests}, indent=1))
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "imagenet-samples-200")
    parser.add_argument("--out", type=Path, required=True, help="a new folder")
    parser.add_argument("--check", action="store_true", help="preprocess both layouts and compare the outputs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.images.is_dir():
        parser.error(f"--images {args.images}: no such folder")
    if args.out.exists():
        parser.error(f"--out {args.out}: already exists")
    pack(args.images, args.out)
    return 0 if not args.check or check(args.out, args.workers) else 1


if __name__ == "__main__":
    sys.exit(main())
