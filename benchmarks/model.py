"""Training-step throughput of the paper's network and its variants, all measured in one run.

    python benchmarks/model.py                      # batch 128, 224x224, 1,000 classes
    python benchmarks/model.py --batch 32 --repeats 2 --only paper_fast,paper_no_lrn
    python benchmarks/model.py --device cuda --repeats 5 --steps 10 --warmup 3   # on a GPU

One training step = forward, cross-entropy, backward, SGD step (momentum 0.9, weight decay).
Variants are measured round-robin (each round times every variant once), so load from
other processes hits all of them alike; a variant's throughput is the median over rounds,
and each ratio the median over rounds of the ratio within a round. Wall time is what counts;
process CPU time is reported too, as it moves less with other processes' load.
Achieved GFLOP/s count the forward's convolution and matmul FLOPs (FlopCounterMode) times 3
for a training step, against a large matrix product measured in the same run (the ceiling).
On a GPU every step ends with a synchronize; `paper_two_devices` is the two-tower placement
on [dev, dev] (the §3.2 split with its cross-device copies, on one card), and the LRN of the
"fast" variants is the GPU path (the fused Triton kernel; `paper_lrn_compiled` runs the windowed
sums compiled, `paper_lrn_eager` eagerly; see alexnet/model/lrn.py).
The last line is one JSON object with the ratios and throughputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet.model.lrn import local_response_norm
from alexnet.model.network import AlexNet
from alexnet.training.heap import keep_freed_memory


class GroupedAlexNet(nn.Module):
    """The same network written the plain way: one module per layer, groups=2 in conv2, conv4, conv5.

    The reference for the tower structure's cost: identical FLOPs and LRN, no tower modules.
    """

    def __init__(self, num_classes: int = 1000, crop_size: int = 224):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, 4, 2)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        side = (((crop_size + 4 - 11) // 4 + 1 - 3) // 2 + 1 - 3) // 2 + 1
        side = (side - 3) // 2 + 1
        self.fc6 = nn.Linear(256 * side * side, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(local_response_norm(self.conv1(x), groups=2, relu=True), 3, 2)
        x = F.max_pool2d(local_response_norm(self.conv2(x), groups=2, relu=True), 3, 2)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = torch.flatten(F.max_pool2d(F.relu(self.conv5(x)), 3, 2), 1)
        x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)


def torchvision_alexnet(num_classes: int) -> nn.Module:
    return torchvision.models.alexnet(num_classes=num_classes).to(memory_format=torch.channels_last)


def variants(num_classes: int, crop: int, device: str) -> dict[str, tuple[Callable[[], nn.Module], str]]:
    """name -> (model builder, precision); builders return the model on `device`."""

    def paper(devices: str | list[str] = device, **kw):
        return lambda: AlexNet(num_classes=num_classes, crop_size=crop, init="kaiming", **kw).place(devices)

    def on_device(build):
        return lambda: build().to(device)

    table = {
        "paper_fast": (paper(), "fp32"),
        "paper_two_devices": (paper([device, device]), "fp32"),
        "paper_torch_lrn": (paper(lrn_impl="torch"), "fp32"),
        "paper_no_lrn": (paper(norm="none"), "fp32"),
        "paper_fast_bf16": (paper(), "bf16"),
        "one_tower": (paper(towers=1), "fp32"),
        "grouped_reference": (on_device(lambda: GroupedAlexNet(num_classes, crop)), "fp32"),
        "paper_fast_nchw": (paper(channels_last=False), "fp32"),
        "torchvision_alexnet": (on_device(lambda: torchvision_alexnet(num_classes)), "fp32"),
        "torchvision_alexnet_bf16": (on_device(lambda: torchvision_alexnet(num_classes)), "bf16"),
    }
    if torch.device(device).type == "cuda":  # model.lrn_gpu: the fused kernel (default), compiled, eager
        table["paper_lrn_eager"] = (paper(lrn_gpu="eager"), "fp32")
        table["paper_lrn_compiled"] = (paper(lrn_gpu="compiled"), "fp32")
    return table


def train_flops(model: nn.Module, crop: int, device: str) -> float:
    """FLOPs of one training step per image: 3x the forward's (backward ~ 2x forward)."""
    # Eagerly: the compiled GPU LRN is the same formula, and dynamo under a dispatch mode is not needed.
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, crop, crop, device=device))
    return 3.0 * counter.get_total_flops()


def time_steps(
    model: nn.Module, precision: str, batch: int, crop: int, num_classes: int, warmup: int, steps: int, device: str
) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of one training step (forward + backward + SGD step).

    CPU time is what this process itself used: on a shared machine it moves much less with
    other processes' load than wall time does (with --threads 1 it equals wall time when quiet).
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    kind = torch.device(device).type
    times, cpu_times = [], []
    for i in range(warmup + steps):
        _synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return statistics.median(times), statistics.median(cpu_times)


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, device: str, seconds: float = 0.3) -> tuple[int, float]:
    """(n, GFLOP/s) of an n x n matrix product, n doubled up to max_n while one product is quick."""
    n, max_n = 512, (8192 if torch.device(device).type == "cuda" else 4096)
    while True:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if n >= max_n or elapsed > seconds:
            break
        n *= 2
    reps = max(1, int(seconds / max(elapsed, 1e-6)))
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _synchronize(device)
    return n, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all variants")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant per round")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-tf32", action="store_true", help="CUDA fp32 in full fp32 (cuDNN defaults to TF32)")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: train.keep_freed_memory's heap setting, as training runs (default); "
                        "default: glibc's own (every large tensor a fresh mmap)")
    args = parser.parse_args()
    if args.malloc == "keep":
        keep_freed_memory()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    table = variants(args.classes, args.crop, args.device)
    names = args.only.split(",") if args.only else list(table)
    unknown = set(names) - set(table)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(table)}")

    ceilings = {
        str(dt).removeprefix("torch."): matmul_gflops(dt, args.device) for dt in (torch.float32, torch.bfloat16)
    }
    native_bf16 = ceilings["bfloat16"][1] > 0.5 * ceilings["float32"][1]
    if not native_bf16 and not args.only:
        # Without native bf16 (AVX-512 BF16 / AMX, GPUs) a bf16 step is many times slower than fp32 and would
        # take most of the run: say so and leave those variants out unless asked for by name.
        names = [n for n in names if table[n][1] != "bf16"]
        print(
            f"bf16 matmul {ceilings['bfloat16'][1]:.1f} vs fp32 {ceilings['float32'][1]:.1f} GFLOP/s: "
            "no native bf16 on this CPU, skipping the bf16 variants (name them in --only to run them)"
        )
    flops = {name: train_flops(table[name][0](), args.crop, args.device) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeats):
        for name in names:
            build, precision = table[name]
            torch.manual_seed(0)
            model = build()
            wall, cpu = time_steps(
                model, precision, args.batch, args.crop, args.classes, args.warmup, args.steps, args.device
            )
            del model
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
            print(
                f"round {round_ + 1}/{args.repeats} {name:26s} {args.batch / wall:7.1f} img/s "
                f"({args.batch / cpu:6.1f} img per CPU-s)",
                flush=True,
            )

    ips = {name: args.batch / statistics.median(s) for name, s in seconds.items()}
    cpu_ips = {name: args.batch / statistics.median(s) for name, s in cpu_seconds.items()}
    print(
        f"\nthreads={torch.get_num_threads()} batch={args.batch} crop={args.crop} classes={args.classes} "
        f"cpu={torch.backends.cpu.get_cpu_capability()} device={device_name(args.device)}"
    )
    for dt, (n, gf) in ceilings.items():
        print(f"matmul {n}x{n} {dt}: {gf:.1f} GFLOP/s")
    print(f"{'variant':26s} {'img/s':>8s} {'spread':>14s} {'img/CPU-s':>10s} {'GFLOP/img':>10s} {'GFLOP/s':>8s}")
    for name in names:
        lo, hi = (args.batch / max(seconds[name]), args.batch / min(seconds[name]))
        gflop = flops[name] / 1e9
        print(
            f"{name:26s} {ips[name]:8.1f} {lo:6.1f}-{hi:6.1f} {cpu_ips[name]:10.1f} {gflop:10.2f} "
            f"{gflop * ips[name]:8.1f}"
        )

    def ratios(per_round: dict[str, list[float]]) -> dict[str, float | None]:
        # Each round times a and b a few seconds apart, so a/b within a round sees the same load;
        # the median over rounds of those paired ratios is steadier than a ratio of medians.
        pairs = {
            "fast_lrn_vs_no_lrn": ("paper_fast", "paper_no_lrn"),  # target >= 0.85
            "torch_lrn_vs_no_lrn": ("paper_torch_lrn", "paper_no_lrn"),
            "bf16_vs_fp32": ("paper_fast_bf16", "paper_fast"),  # target >= 1.6 (needs native bf16)
            "two_tower_vs_grouped": ("paper_fast", "grouped_reference"),  # target >= 0.95
            "two_tower_vs_one_tower": ("paper_fast", "one_tower"),
            "two_devices_vs_one_device": ("paper_two_devices", "paper_fast"),
            "channels_last_vs_nchw": ("paper_fast", "paper_fast_nchw"),
            "triton_lrn_vs_eager": ("paper_fast", "paper_lrn_eager"),
            "compiled_lrn_vs_eager": ("paper_lrn_compiled", "paper_lrn_eager"),
        }
        return {
            key: round(statistics.median(tb / ta for ta, tb in zip(per_round[a], per_round[b])), 3)
            if a in per_round and b in per_round
            else None
            for key, (a, b) in pairs.items()
        }

    result = {
        **ratios(seconds),
        "cpu_time_ratios": ratios(cpu_seconds),
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "images_per_cpu_s": {k: round(v, 2) for k, v in cpu_ips.items()},
        "matmul_gflops": {k: round(v[1], 1) for k, v in ceilings.items()},
        "batch": args.batch,
        "crop": args.crop,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device_name(args.device),
        "torch": torch.__version__,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "native_bf16": native_bf16,
        "malloc": args.malloc,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
