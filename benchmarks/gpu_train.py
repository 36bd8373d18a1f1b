"""One GPU at full speed (issue 15): the model step, the LRN kernels and the real train loop, in one run.

    python benchmarks/gpu_train.py                          # on a GPU: the paper's settings
    python benchmarks/gpu_train.py --device cpu --smoke     # tiny sizes, checks the script runs

(a) The training step on a batch already on the device (forward, cross-entropy, backward, SGD
    step): the paper's network with the fused LRN (model.lrn_gpu triton), with nn.LocalResponseNorm
    (model.lrn_impl torch) and without LRN, each in full fp32 (TF32 off), TF32 and bf16; with
    --compile also the fused bf16 model under whole-model torch.compile (train.compile).
    Variants run round-robin, each round timing every variant once; a throughput is the median
    over rounds.
(b) The LRN alone, forward + backward at conv1's and conv2's activations (two towers): the fused
    Triton kernels, the windowed formula compiled, and eagerly.
(c) The real train loop: synthetic shards at 256 px that the script writes (the real prepare and
    preprocess stages), TrainLoader with the finish on the device (train.finish), and
    alexnet.training.loop.train_one_epoch, epoch after epoch for --seconds; the first epochs are warm-up.

A JSON line follows each part; the last line is the fullest.
Ratios: fused / no-LRN step (target >= 0.85), bf16 / full fp32 (>= 1.6) and bf16 / TF32,
end-to-end / (a)'s step at the same settings (>= 0.95). Projected: one ImageNet epoch
(1,281,167 images) and 90 epochs at the end-to-end rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.config.sections import AugmentParams, DataParams, PreprocessParams, SyntheticParams, TrainParams
from alexnet.data.prepare import prepare
from alexnet.data.preprocess import preprocess
from alexnet.loading.loader import TrainLoader, resolve_workers
from alexnet.model.lrn import local_response_norm
from alexnet.model.network import AlexNet, autocast
from alexnet.training.heap import keep_freed_memory
from alexnet.training.loop import train_one_epoch
from alexnet.training.optim import make_optimizer

IMAGENET_TRAIN = 1_281_167
PRECISIONS = ("fp32", "tf32", "bf16")  # fp32: TF32 off; tf32: cuDNN and matmuls in TF32; bf16: autocast
MODELS = {"fused": {}, "torch_lrn": {"lrn_impl": "torch"}, "no_lrn": {"lrn": False}}


def set_tf32(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def build(args: argparse.Namespace, compile_: bool = False, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AlexNet(num_classes=args.classes, crop_size=args.crop, init="paper", **kw).place(args.device)
    if compile_:
        model.compile()
    return model


def step_seconds(model: torch.nn.Module, precision: str, args: argparse.Namespace) -> float:
    """Median seconds of one training step on a batch already on the device (steps queued back to
    back and timed together, as the train loop runs them: no host sync between steps)."""
    set_tf32(precision == "tf32")
    amp = "bf16" if precision == "bf16" else "fp32"
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=args.device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,), device=args.device)

    def step() -> None:
        with autocast(args.device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(args.device)
        times.append((time.perf_counter() - start) / args.steps)
    return statistics.median(times)


def model_steps(args: argparse.Namespace) -> dict[str, float]:
    """(a): images/s of every model x precision."""
    table: dict[str, Callable[[], tuple[torch.nn.Module, str]]] = {
        f"{name}_{p}": (lambda kw=kw, p=p: (build(args, **kw), p)) for name, kw in MODELS.items() for p in PRECISIONS
    }
    per_round: dict[str, list[float]] = {name: [] for name in table}
    failed: set[str] = set()
    for r in range(args.rounds):
        for name, make in table.items():
            if name in failed:
                continue
            try:
                model, precision = make()
                seconds = step_seconds(model, precision, args)
            except Exception as err:  # one variant failing (a compile error, say) must not end the run
                first = str(err).splitlines()[0] if str(err) else ""
                print(f"step {name}: failed: {type(err).__name__}: {first}", flush=True)
                failed.add(name)
                continue
            per_round[name].append(seconds)
            print(f"round {r + 1}/{args.rounds} step {name:22s} {args.batch / seconds:9.1f} img/s", flush=True)
            del model
    return {name: round(args.batch / statistics.median(s), 1) for name, s in per_round.items()
            if s and name not in failed}  # fmt: skip


def compiled_step(args: argparse.Namespace) -> dict[str, float]:
    """(a), last: the fused bf16 model under whole-model torch.compile (train.compile), timed once:
    compiling takes a while, so it runs after everything else has its figures."""
    try:
        seconds = step_seconds(build(args, compile_=True), "bf16", args)
    except Exception as err:
        print(f"step fused_bf16_compiled: failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
        return {}
    print(f"step fused_bf16_compiled {args.batch / seconds:9.1f} img/s", flush=True)
    return {"fused_bf16_compiled": round(args.batch / seconds, 1)}


def summary(result: dict, steps: dict[str, float], loop: dict | None, args: argparse.Namespace) -> dict:
    """The ratios and projections from what has been measured so far (None where a part is missing)."""

    def ratio(a: str, b: str) -> float | None:
        return round(steps[a] / steps[b], 3) if a in steps and b in steps else None

    out = {**result, "step_images_per_s": steps}
    for p in PRECISIONS:
        out[f"fused_vs_no_lrn_{p}"] = ratio(f"fused_{p}", f"no_lrn_{p}")  # target >= 0.85
        out[f"torch_lrn_vs_no_lrn_{p}"] = ratio(f"torch_lrn_{p}", f"no_lrn_{p}")
    out["bf16_vs_fp32"] = ratio("fused_bf16", "fused_fp32")  # target >= 1.6
    out["bf16_vs_tf32"] = ratio("fused_bf16", "fused_tf32")
    out["compiled_vs_eager_bf16"] = ratio("fused_bf16_compiled", "fused_bf16")
    if loop is not None:
        out["loop"] = loop
        same = f"fused_{args.loop_precision}" + ("_compiled" if args.compile_loop else "")
        out["loop_vs_step"] = round(loop["images_per_s"] / steps[same], 3) if same in steps else None  # >= 0.95
        epoch_h = IMAGENET_TRAIN / loop["images_per_s"] / 3600
        out["imagenet_epoch_h"], out["imagenet_90_epochs_h"] = round(epoch_h, 3), round(90 * epoch_h, 2)
    return out


def lrn_timings(args: argparse.Namespace) -> dict[str, float]:
    """(b): microseconds of LRN forward + backward (ReLU fused, two towers) at conv1's and conv2's sizes."""
    side1 = (args.crop + 4 - 11) // 4 + 1  # conv1: 11x11 stride 4, padding 2 (55 at 224)
    side2 = (side1 - 3) // 2 + 1  # after the first 3/2 pool (27)
    shapes = {"conv1": (args.batch, 96, side1, side1), "conv2": (args.batch, 256, side2, side2)}
    kernels = ("triton", "compiled", "eager") if torch.device(args.device).type == "cuda" else ("eager",)
    out: dict[str, float] = {}
    for layer, shape in shapes.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, device=args.device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            grad = torch.randn_like(x)
            for kernel in kernels:
                for _ in range(args.warmup):
                    lrn_pass(x, grad, kernel)
                synchronize(args.device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    lrn_pass(x, grad, kernel)
                synchronize(args.device)
                key = f"{layer}_{str(dtype).removeprefix('torch.')}_{kernel}_us"
                out[key] = round((time.perf_counter() - start) / args.steps * 1e6, 1)
                print(f"lrn {key:32s} {out[key]:10.1f}", flush=True)
    return out


def lrn_pass(x: torch.Tensor, grad: torch.Tensor, kernel: str) -> None:
    local_response_norm(x, groups=2, relu=True, gpu=kernel).backward(grad)


def write_shards(root: Path, args: argparse.Namespace) -> Path:
    """Synthetic shards at --stored px through the real prepare and preprocess stages."""
    classes = min(100, max(2, args.images // 64))
    synthetic = SyntheticParams(classes=classes, train_per_class=max(1, args.images // classes), val_per_class=1,
                                min_side=args.stored, max_side=args.stored + 64, seed=0)  # fmt: skip
    workers = resolve_workers("auto") + 1
    prepare(root / "prepared", DataParams(synthetic=synthetic), workers=workers, progress=False)
    preprocess(root / "prepared", root / "shards",
               PreprocessParams(stored_size=args.stored, shard_size=1024, workers=workers), progress=False)  # fmt: skip
    return root / "shards"


def train_loop(args: argparse.Namespace, precision: str, shards: Path) -> dict[str, float]:
    """(c): alexnet.training.loop.train_one_epoch over TrainLoader batches finished on the device."""
    set_tf32(precision == "tf32")
    amp = "bf16" if precision == "bf16" else "fp32"
    model = build(args, compile_=args.compile_loop)
    # The paper's update rule; a tenth of its lr keeps random labels from diverging (speed does not depend on it).
    train = TrainParams(batch_size=args.batch, lr=0.001)
    optimizer = make_optimizer(model.parameters(), train)
    rates, images = [], 0
    with TrainLoader(shards, batch_size=args.batch, crop_size=args.crop, seed=0, workers=resolve_workers(args.workers),
                     augment=AugmentParams(), finish_on=args.device) as loader:  # fmt: skip
        epoch, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds or epoch < args.loop_warmup + 1:
            stats = train_one_epoch(model, loader.epoch(epoch), optimizer, device=args.device, precision=amp,
                                    total=len(loader), progress=False)  # fmt: skip
            if epoch >= args.loop_warmup:
                rates.append(stats.row()["images_per_s"])
                images += len(loader) * args.batch
            print(f"loop epoch {epoch + 1}: {stats.row()['images_per_s']:.1f} img/s", flush=True)
            epoch += 1
    return {"images_per_s": round(statistics.median(rates), 1), "timed_epochs": len(rates),
            "timed_images": images, "loader_workers": resolve_workers(args.workers)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--stored", type=int, default=256)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="(a): rounds over all variants")
    parser.add_argument("--repeats", type=int, default=3, help="(a): timed windows per variant per round")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--compile", action="store_true", help="(a): also the compiled fused bf16 model, last")
    parser.add_argument("--compile-loop", action="store_true", help="(c): the train loop compiled (train.compile)")
    parser.add_argument("--images", type=int, default=12_800, help="(c): training images in the shards")
    parser.add_argument("--seconds", type=float, default=60.0, help="(c): about how long the loop runs")
    parser.add_argument("--loop-warmup", type=int, default=1, help="(c): untimed epochs first")
    parser.add_argument("--loop-precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--workers", default="auto", help="(c): loader processes, or auto (cores - 1)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: step, lrn, loop")
    args = parser.parse_args(argv)
    args.workers = args.workers if args.workers == "auto" else int(args.workers)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"{Path(__file__).name}: torch sees no CUDA device here; --device cpu --smoke checks the script")
    if args.smoke:
        args.batch, args.crop, args.stored, args.classes = 8, 64, 72, 10
        args.rounds, args.repeats, args.steps, args.warmup = 1, 1, 1, 1
        args.images, args.seconds, args.loop_warmup = 64, 0.0, 0
        args.workers = 1
        if args.device == "cpu":
            args.loop_precision = "fp32"  # bf16 is emulated, slowly, on most CPUs
    keep_freed_memory()
    torch.backends.cudnn.benchmark = True  # as training runs when train.deterministic is off
    skip = set(filter(None, args.skip.split(",")))
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result: dict = {"device": name, "torch": torch.__version__, "batch": args.batch, "crop": args.crop,
                    "smoke": args.smoke}  # fmt: skip
    # A JSON line after each part, the fullest last: a run stopped by its time limit keeps what it measured.
    steps = {} if "step" in skip else model_steps(args)
    result["lrn_us"] = {} if "lrn" in skip else lrn_timings(args)
    print(json.dumps(summary(result, steps, None, args)), flush=True)
    loop = None
    if "loop" not in skip:
        with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
            t = time.perf_counter()
            shards = write_shards(Path(tmp), args)
            result["shards_build_s"] = round(time.perf_counter() - t, 1)
            loop = {**train_loop(args, args.loop_precision, shards), "precision": args.loop_precision,
                    "compiled": args.compile_loop}  # fmt: skip
        print(json.dumps(summary(result, steps, loop, args)), flush=True)
    if args.compile and "step" not in skip:
        steps = {**steps, **compiled_step(args)}
        print(json.dumps(summary(result, steps, loop, args)), flush=True)


if __name__ == "__main__":
    main()
