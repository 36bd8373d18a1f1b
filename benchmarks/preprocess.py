"""Images/s of the preprocess stage against a naive baseline measured in the same run.

    python benchmarks/preprocess.py [--images /work/shared/datasets/imagenet-samples-200] [--repeats 3]

Data: full-resolution ImageNet photos in `<wnid>/*.JPEG`, treated as a train split (prepare's
`folder` source on a tree whose train/ links there). Baseline: torchvision ImageFolder with PIL
Resize(256) + CenterCrop(256), one process, each image converted to a uint8 array. The stage:
alexnet.preprocess.preprocess at stored_size 256 (raw shards of 100 images, mean/PCA included),
from an empty output folder each time. Every measurement runs in a fresh child process; time
is measured inside it (no interpreter start-up), peak memory is the summed RSS of the child and
its workers, sampled every 10 ms. 4x = the same images listed 4 times in the index.
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SIZE, SHARD = 256, 100  # 2 shards for 200 images: one per worker


def child_baseline(images: str) -> dict:
    import numpy as np
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(images, transform=transforms.Compose([transforms.Resize(SIZE),
                                                                    transforms.CenterCrop(SIZE)]))
    start = time.perf_counter()
    for img, _ in ds:
        np.asarray(img, dtype=np.uint8)
    return {"images": len(ds), "seconds": time.perf_counter() - start}


def child_stage(prepared: str, out: str, workers: int) -> dict:
    from alexnet.preprocess import preprocess

    start = time.perf_counter()
    manifest = preprocess(prepared, out, stored_size=SIZE, fmt="raw", shard_size=SHARD, workers=workers,
                          progress=False)
    return {"images": manifest["splits"]["train"]["count"], "seconds": time.perf_counter() - start}


def measure(args: list[str]) -> dict:
    """Run one child; its JSON result plus the peak RSS (MiB) of it and its children."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    parent, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass  # a worker exited between listing and reading: the next sample counts
        time.sleep(0.01)
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"child {args} failed with {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "rate": result["images"] / result["seconds"], "peak_mib": peak / 2**20}


def make_prepared(images: Path, work: Path) -> tuple[Path, Path]:
    """Prepared indexes of the images as a train split: 1x, and the same rows 4 times."""
    import pandas as pd

    from alexnet.prepare import prepare

    tree = work / "tree"
    (tree / "val").mkdir(parents=True)
    (tree / "train").symlink_to(images.resolve(), target_is_directory=True)
    one = work / "prepared-1x"
    prepare(one, "folder", tree, workers=2, progress=False)
    four = work / "prepared-4x"
    shutil.copytree(one, four)
    index = pd.read_parquet(one / "index.parquet")
    train = index[index["split"] == "train"]
    pd.concat([train] * 4 + [index[index["split"] == "val"]]).to_parquet(four / "index.parquet", index=False)
    return one, four


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="/work/shared/datasets/imagenet-samples-200")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_baseline(*rest) if kind == "baseline" else child_stage(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = Path(tmp)
        one, four = make_prepared(Path(args.images), work)
        runs: dict[str, list[dict]] = {"baseline": [], "stage 1x w1": [], "stage 1x w2": [], "stage 4x w2": []}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
            runs["baseline"].append(measure(["baseline", args.images]))
            for name, prepared, workers in (("stage 1x w1", one, 1), ("stage 1x w2", one, 2),
                                            ("stage 4x w2", four, 2)):
                out = work / "shards"
                shutil.rmtree(out, ignore_errors=True)
                runs[name].append(measure(["stage", str(prepared), str(out), str(workers)]))
    med = {name: {"images": r[0]["images"], "rate": statistics.median(x["rate"] for x in r),
                  "peak_mib": statistics.median(x["peak_mib"] for x in r)} for name, r in runs.items()}
    base = med["baseline"]["rate"]
    per_worker = {"1": med["stage 1x w1"]["rate"] / base, "2": med["stage 1x w2"]["rate"] / 2 / base}
    speedup = med["stage 1x w2"]["rate"] / med["stage 1x w1"]["rate"]
    mem_growth = med["stage 4x w2"]["peak_mib"] / med["stage 1x w2"]["peak_mib"]

    print(f"{'run':<14}{'images':>8}{'images/s':>11}{'x baseline':>12}{'peak RSS MiB':>14}")
    for name, m in med.items():
        print(f"{name:<14}{m['images']:>8}{m['rate']:>11.1f}{m['rate'] / base:>12.2f}{m['peak_mib']:>14.0f}")
    print(f"per-worker ratio to baseline: 1 worker {per_worker['1']:.2f}, 2 workers {per_worker['2']:.2f} "
          f"(target >= 1.0)")
    print(f"speed-up 1 -> 2 workers: {speedup:.2f} (target >= 1.8)")
    print(f"peak memory 4x / 1x images (2 workers): {mem_growth:.2f} (target: flat, ~1.0)")
    print(json.dumps({"benchmark": "preprocess", "images": args.images, "stored_size": SIZE, "shard_size": SHARD,
                      "repeats": args.repeats, "cpus": psutil.cpu_count(), "median": med,
                      "per_worker_ratio": per_worker, "speedup_1_to_2": speedup,
                      "peak_mem_ratio_4x_1x": mem_growth}))


if __name__ == "__main__":
    main()
