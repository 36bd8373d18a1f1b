"""Does the loader hide behind the model, and how does it compare with torchvision's ImageFolder?

Two measurements in one run, on the first --images training images of Imagenette (taken
round-robin over the classes), preprocessed into shards in a temporary folder by the project's
own prepare + preprocess stages:

1. training images/s with the real TrainLoader feeding the training step, against the same
   step fed one pre-made batch over and over (target: ratio >= 0.95, the loader is hidden);
2. loader-only images/s against torchvision's ImageFolder + RandomResizedCrop +
   RandomHorizontalFlip + ToTensor (JPEG decoding per image) on the same JPEG files, the same
   batch size and the same number of workers (target: >= 10x).

Each figure is the median of --repeats timed windows; a window starts a fresh epoch, lets the
first batch through untimed (the epoch-start stall: one batch of one worker) and times the
next --steps batches. Training and its fixed-batch baseline alternate, so drifting machine
load hits both alike; the share of the loader-fed window spent waiting in next(batches) is
reported too, a view of the same question that other load on the machine disturbs less.
Prints a table, then ONE JSON object as the last line.

    python benchmarks/loader.py            # 1024 images, the demo's S=146, crop 128, batch 64
    python benchmarks/loader.py --stored-size 256 --crop 224 --batch-size 128   # the paper's sizes
    python benchmarks/loader.py --quick    # a smoke run: fewer images, steps and repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.config.sections import AugmentParams, DataParams, PreprocessParams
from alexnet.data.prepare import prepare
from alexnet.data.preprocess import preprocess
from alexnet.loading.loader import TrainLoader

# Beside the repository, not inside it: a clone without ../shared passes --data.
IMAGENETTE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "imagenette-224"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=IMAGENETTE,
                   help="an image tree: train/<class>/*.JPEG (default: ../shared/datasets/imagenette-224 "
                        "beside the repository)")  # fmt: skip
    p.add_argument("--images", type=int, default=1024, help="training images to shard")
    p.add_argument("--stored-size", type=int, default=146, help="the demo's 146; the paper's 256")
    p.add_argument("--crop", type=int, default=128, help="the demo's 128; the paper's 224")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="loader processes (both loaders)")
    p.add_argument("--format", choices=["raw", "jpeg"], default="raw", help="shard format")
    p.add_argument("--steps", type=int, default=6, help="timed batches per window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 only where the CPU has it natively (AVX-512 BF16 / AMX): emulated, it is far slower")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    p.add_argument("--skip-train", action="store_true", help="loader-only comparison")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 images, batch 32, 2 steps, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.batch_size, args.steps, args.repeats = 256, 32, 2, 1
    if not (args.data / "train").is_dir():
        p.error(f"--data {args.data}: no train/ folder there (expected an image tree train/<class>/*.JPEG)")
    if args.images // args.batch_size < args.steps + 1:
        p.error(f"--images {args.images} gives {args.images // args.batch_size} batches an epoch; "
                f"a window needs --steps + 1 = {args.steps + 1}")  # fmt: skip
    return args


def build_tree(data: Path, out: Path, images: int) -> Path:
    """out/train/<class>/ and out/val/<class>/: symlinks to the first images, round-robin over classes."""
    classes = sorted(d for d in (data / "train").iterdir() if d.is_dir())
    files = [sorted(c.iterdir()) for c in classes]
    picked: list[Path] = []
    for k in range(max(len(f) for f in files)):
        picked += [f[k] for f in files if k < len(f)]
    for path in picked[:images]:
        (out / "train" / path.parent.name).mkdir(parents=True, exist_ok=True)
        (out / "train" / path.parent.name / path.name).symlink_to(path)
    for c in classes:  # the preprocess stage wants a val split: one image a class
        val = sorted((data / "val" / c.name).iterdir())[:1] if (data / "val" / c.name).is_dir() else []
        (out / "val" / c.name).mkdir(parents=True, exist_ok=True)
        for path in val or sorted(c.iterdir())[-1:]:
            (out / "val" / c.name / path.name).symlink_to(path)
    return out


def build_model(num_classes: int, crop_size: int) -> nn.Module:
    """The project's AlexNet (demo profile: Kaiming init), or a one-tower stand-in if it is absent."""
    try:
        from alexnet.config.sections import ModelParams  # noqa: PLC0415
        from alexnet.model.network import build_model as project_model  # noqa: PLC0415
    except ImportError:
        project_model = None
    if project_model is not None:
        return project_model(ModelParams(crop_size=crop_size, init="kaiming"), num_classes)
    return nn.Sequential(  # stand-in: the paper's layer sizes in one tower (§3, Figure 2)
        nn.Conv2d(3, 96, 11, stride=4, padding=2), nn.ReLU(), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(256 * 36, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes),
    )  # fmt: skip


def make_step(model: nn.Module, precision: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed_window(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
                 consume: Callable[[torch.Tensor, torch.Tensor], None]) -> tuple[float, float]:  # fmt: skip
    """(images/s, share of the time spent waiting for batches) over `steps` batches, after one untimed."""
    consume(*next(batches))
    start, n, waited = time.perf_counter(), 0, 0.0
    for _ in range(steps):
        t = time.perf_counter()
        images, labels = next(batches)
        waited += time.perf_counter() - t
        consume(images, labels)
        n += len(labels)
    elapsed = time.perf_counter() - start
    return n / elapsed, waited / elapsed


def imagefolder_loader(root: Path, crop: int, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    from torchvision import datasets, transforms  # noqa: PLC0415  (the baseline only)

    tf = transforms.Compose([transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor()])  # fmt: skip
    return torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root), transform=tf), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_one_thread if workers > 0 else None,
    )  # fmt: skip


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # the same as the project's loader workers


def _nothing(images: torch.Tensor, labels: torch.Tensor) -> None:
    pass


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        tmp = Path(tmp)
        tree = build_tree(args.data, tmp / "tree", args.images)
        t = time.perf_counter()
        prepare(tmp / "prepared", DataParams(source="folder", root=tree), workers=2, progress=False)
        preprocess(tmp / "prepared", tmp / "shards", PreprocessParams(stored_size=args.stored_size, format=args.format,
                                                                      shard_size=512, workers=2), progress=False)
        build_s = time.perf_counter() - t
        num_classes = sum(1 for _ in (tree / "train").iterdir())
        options = dict(batch_size=args.batch_size, crop_size=args.crop, seed=0, workers=args.workers,
                       augment=AugmentParams())  # the paper's §4.1 augmentations, as the pipeline's default
        result: dict = {}
        with TrainLoader(tmp / "shards", **options) as loader:
            epochs = iter(range(10**9))
            fresh = lambda: iter(loader.epoch(next(epochs)))  # noqa: E731
            if not args.skip_train:
                torch.manual_seed(0)
                step = make_step(build_model(num_classes, args.crop), args.precision)
                fixed_batch = next(fresh())
                fixed = lambda: iter(lambda: fixed_batch, None)  # noqa: E731  (endless)
                timed_window(fixed(), 1, step)  # warm-up: allocator, oneDNN kernels
                pairs = [(timed_window(fixed(), args.steps, step)[0], timed_window(fresh(), args.steps, step))
                         for _ in range(args.repeats)]  # fmt: skip
                result["train_fixed_img_s"] = statistics.median(p[0] for p in pairs)
                result["train_loader_img_s"] = statistics.median(p[1][0] for p in pairs)
                result["train_ratio"] = statistics.median(p[1][0] / p[0] for p in pairs)
                # Noise-free view of the same question: how long the step stood waiting for data.
                result["train_wait_share"] = statistics.median(p[1][1] for p in pairs)
            ours = [timed_window(fresh(), args.steps, _nothing)[0] for _ in range(args.repeats)]
        baseline = imagefolder_loader(tree / "train", args.crop, args.batch_size, args.workers)
        theirs = [timed_window(iter(baseline), args.steps, _nothing)[0] for _ in range(args.repeats)]
        del baseline
        result["loader_img_s"] = statistics.median(ours)
        result["imagefolder_img_s"] = statistics.median(theirs)
        result["loader_vs_imagefolder"] = result["loader_img_s"] / result["imagefolder_img_s"]
        result["shard_build_s"] = build_s
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"benchmark": "loader", **result, "settings": settings, "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count()}  # fmt: skip


def print_table(r: dict) -> None:
    s = r["settings"]
    print(f"{s['images']} images, S={s['stored_size']}, crop {s['crop']}, batch {s['batch_size']}, "
          f"{s['workers']} worker(s), {s['format']} shards, {s['precision']}, median of {s['repeats']} "
          f"x {s['steps']} batches; {r['cpus']} CPUs, {r['torch_threads']} torch threads")  # fmt: skip
    rows = []
    if "train_ratio" in r:
        rows += [("training step, one pre-made batch", f"{r['train_fixed_img_s']:.1f}", ""),
                 ("training step, fed by TrainLoader", f"{r['train_loader_img_s']:.1f}",
                  f"ratio {r['train_ratio']:.3f} (target >= 0.95); waiting for data "
                  f"{100 * r['train_wait_share']:.1f} % of the time")]  # fmt: skip
    rows += [("TrainLoader alone", f"{r['loader_img_s']:.0f}", ""),
             ("ImageFolder + RandomResizedCrop alone", f"{r['imagefolder_img_s']:.0f}",
              f"loader / ImageFolder {r['loader_vs_imagefolder']:.2f}x (target >= 10x)")]  # fmt: skip
    print(f"{'':40s} {'images/s':>10s}")
    for name, value, note in rows:
        print(f"{name:40s} {value:>10s}  {note}")


def main(argv: list[str] | None = None) -> None:
    result = run(parse_args(argv))
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
