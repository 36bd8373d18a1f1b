"""Data-parallel scaling: one process vs 2 gloo DDP ranks on this CPU, and a projection to 1-8 GPUs.

    python benchmarks/scaling.py                          # crop 96, global batch 32, 1,000 classes (~2 min, 2 cores)
    python benchmarks/scaling.py --crop 224 --batch 128   # the paper's sizes (slow on a CPU)
    python benchmarks/scaling.py --gpu-img-per-s 5983     # project from another GPU's step (H100 run)

Measured here, with the project's two-tower AlexNet (alexnet.model.network.AlexNet, one device per replica):
- one process, global batch B, on all the cores and on a rank's share of them (round-robin), and
  again on all the cores after the ranks ran (drift);
- 2 ranks (torch.multiprocessing spawn, gloo, DDP(device_ids=None)), B/2 images each, cores split
  between them: a synced step (forward, backward with DDP's bucketed all-reduce, SGD step), the
  same step under no_sync() (compute alone: no gradient traffic), and a synced step with DDP's
  bf16_compress_hook. Exposed all-reduce time = synced - no_sync (what overlap did not hide);
- a standalone all_reduce of the paper model's whole gradient (61M parameters at 1,000 classes,
  ~244 MB fp32, ~122 MB bf16): algorithm bandwidth bytes/time, and bus bandwidth x 2(N-1)/N,
  the figure NCCL's tests quote and the projection's link speeds mean.
Every figure is the median over rounds of the median over steps. On a few shared cores expect
noise between runs, and gloo's threads compete with the ranks' compute for the same cores.

Then a PROJECTION (arithmetic, not a measurement) for 1/2/4/8 GPUs: the per-step compute of one
GPU from --gpu-img-per-s (default: the H200 figure for the paper model at batch 128 in the
docs/results.md), ring all-reduce time 2(N-1)/N * bytes / bus bandwidth at stated link
speeds, with no overlap (compute + all-reduce) and with the all-reduce hidden behind the backward
(forward + max(backward, all-reduce), the backward taken as 2/3 of the step). Beside it,
Krizhevsky's 2014 speed-ups. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from torch.nn.parallel import DistributedDataParallel

from alexnet.core.processes import free_port
from alexnet.model.network import AlexNet
from alexnet.training.heap import keep_freed_memory

# Effective all-reduce bus bandwidth, GB/s (stated assumptions, not measured here): PCIe 4.0 x16
# ~25 of its 32 GB/s; NVLink 4 through NVSwitch (H100/H200 HGX), what NCCL's all_reduce_perf
# reaches at large sizes, ~350; 100 Gb/s InfiniBand, 12.5 GB/s raw, ~11 effective, when every ring
# hop crosses the network (one GPU per node: the worst case of a multi-node ring).
LINKS_GB_S = {"PCIe 4.0 x16": 25.0, "NVLink (H100/H200 NVSwitch)": 350.0, "InfiniBand 100 Gb/s": 11.0}
GPU_COUNTS = (1, 2, 4, 8)
BACKWARD_SHARE = 2 / 3  # backward ~ 2x forward: the part of a step an all-reduce can hide behind

# Krizhevsky 2014, "One weird trick for parallelizing convolutional neural networks",
# arXiv:1404.5997, Table 1 (K20 GPUs; data parallelism in the convolutional layers, model
# parallelism in the fully connected ones; batch 128 per GPU in the conv layers). The search
# tool found only the abstract, so these are FROM MEMORY, UNVERIFIED: check the paper's Table 1.
KRIZHEVSKY_2014_SPEEDUP = {
    "source": "arXiv:1404.5997 Table 1 (from memory, unverified)",
    "fc_batch_128K": {1: 1.0, 2: 1.95, 4: 3.74, 8: 6.25},
    "fc_batch_128": {1: 1.0, 2: 1.93, 4: 3.66, 8: 5.87},
}


def build(classes: int, crop: int) -> AlexNet:
    torch.manual_seed(0)  # every rank the same initial weights, as DDP expects
    return AlexNet(num_classes=classes, crop_size=crop, init="kaiming").place("cpu")


def gradient_numel(classes: int, crop: int) -> int:
    return sum(p.numel() for p in AlexNet(num_classes=classes, crop_size=crop).parameters())


def batch(size: int, crop: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(size, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, classes, (size,))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def median_step_s(step, warmup: int, steps: int, barrier: bool = False) -> float:
    """Median wall seconds of `step()`; with `barrier`, every rank starts each step together."""
    times = []
    for i in range(warmup + steps):
        if barrier:
            dist.barrier()
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def single_process(args: argparse.Namespace, rounds: int, threads: int) -> list[float]:
    """Per-round median step seconds of one process at the global batch with `threads` threads."""
    torch.set_num_threads(threads)
    model = build(args.classes, args.crop).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = batch(args.batch, args.crop, args.classes)
    return [median_step_s(lambda: train_step(model, opt, x, y), args.warmup, args.steps) for _ in range(rounds)]


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    """One gloo rank: DDP steps (synced fp32, no_sync, synced bf16) and standalone all-reduces."""
    keep_freed_memory()
    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ddp_fp32 = DistributedDataParallel(build(args.classes, args.crop).train(), device_ids=None)
    ddp_bf16 = DistributedDataParallel(build(args.classes, args.crop).train(), device_ids=None)
    ddp_bf16.register_comm_hook(None, bf16_compress_hook)
    opt_fp32 = torch.optim.SGD(ddp_fp32.parameters(), lr=0.01, momentum=0.9)
    opt_bf16 = torch.optim.SGD(ddp_bf16.parameters(), lr=0.01, momentum=0.9)
    torch.manual_seed(rank)  # each rank its own half of the global batch
    x, y = batch(args.batch // world, args.crop, args.classes)

    def no_sync_step() -> None:
        opt_fp32.zero_grad(set_to_none=True)
        with ddp_fp32.no_sync():  # local gradients only: the step's compute without its traffic
            F.cross_entropy(ddp_fp32(x), y).backward()
        opt_fp32.step()

    paper_numel = gradient_numel(args.paper_classes, 224)
    flat = {dt: torch.ones(paper_numel, dtype=dt) for dt in (torch.float32, torch.bfloat16)}
    bench_flat = torch.ones(sum(p.numel() for p in ddp_fp32.parameters()))
    results: dict[str, list[float]] = {
        k: [] for k in ("synced_fp32", "no_sync", "synced_bf16", "allreduce_fp32", "allreduce_bf16", "allreduce_bench")
    }
    for _ in range(args.repeats):  # round-robin: load from other jobs hits every variant alike
        results["synced_fp32"].append(median_step_s(lambda: train_step(ddp_fp32, opt_fp32, x, y),
                                                    args.warmup, args.steps, barrier=True))
        results["no_sync"].append(median_step_s(no_sync_step, args.warmup, args.steps, barrier=True))
        results["synced_bf16"].append(median_step_s(lambda: train_step(ddp_bf16, opt_bf16, x, y),
                                                    args.warmup, args.steps, barrier=True))
        for key, tensor in (("allreduce_fp32", flat[torch.float32]), ("allreduce_bf16", flat[torch.bfloat16]),
                            ("allreduce_bench", bench_flat)):
            results[key].append(median_step_s(lambda t=tensor: dist.all_reduce(t), 1, args.allreduce_steps,
                                              barrier=True))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def ring_allreduce_s(nbytes: float, gpus: int, bus_gb_s: float) -> float:
    return 0.0 if gpus == 1 else 2 * (gpus - 1) / gpus * nbytes / (bus_gb_s * 1e9)


def projection(step_s: float, gpu_batch: int, grad_bytes: dict[str, float], links: dict[str, float],
               global_batch: bool) -> list[dict]:
    """Expected img/s and efficiency for 1/2/4/8 GPUs; global_batch keeps the step's batch fixed."""
    rows = []
    for link, bw in links.items():
        for n in GPU_COUNTS:
            compute = step_s / n if global_batch else step_s  # ideal split of the work (optimistic)
            images = gpu_batch if global_batch else gpu_batch * n
            row = {"link": link, "gpus": n}
            for precision, nbytes in grad_bytes.items():
                comm = ring_allreduce_s(nbytes, n, bw)
                serial = images / (compute + comm)
                hidden = images / (compute * (1 - BACKWARD_SHARE) + max(compute * BACKWARD_SHARE, comm))
                row[f"allreduce_ms_{precision}"] = round(comm * 1e3, 2)
                row[f"img_s_{precision}_no_overlap"] = round(serial)
                row[f"img_s_{precision}_overlap"] = round(hidden)
            rows.append(row)
    for row in rows:
        one = next(r for r in rows if r["link"] == row["link"] and r["gpus"] == 1)
        for key in [k for k in row if k.startswith("img_s_")]:
            row[key.replace("img_s_", "efficiency_")] = round(row[key] / (row["gpus"] * one[key]), 3)
    return rows


def print_projection(rows: list[dict], title: str) -> None:
    print(f"\nPROJECTION ({title}); arithmetic from stated figures, not measured")
    print(f"{'link':30s} {'GPUs':>4s} {'AR fp32 ms':>10s} {'AR bf16 ms':>10s} {'img/s fp32':>11s} "
          f"{'overlap':>8s} {'eff':>5s} {'img/s bf16':>11s} {'overlap':>8s} {'eff':>5s}")
    for r in rows:
        print(f"{r['link']:30s} {r['gpus']:4d} {r['allreduce_ms_fp32']:10.1f} {r['allreduce_ms_bf16']:10.1f} "
              f"{r['img_s_fp32_no_overlap']:11d} {r['img_s_fp32_overlap']:8d} {r['efficiency_fp32_overlap']:5.2f} "
              f"{r['img_s_bf16_no_overlap']:11d} {r['img_s_bf16_overlap']:8d} {r['efficiency_bf16_overlap']:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=96, help="crop of the measured model (paper: 224)")
    parser.add_argument("--batch", type=int, default=32, help="global batch, split over the ranks (paper: 128)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--world", type=int, default=2, help="gloo ranks")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="cores, split over the ranks")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant per round")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--allreduce-steps", type=int, default=3, help="timed all-reduces per size per round")
    parser.add_argument("--paper-classes", type=int, default=1000, help="classes of the paper-size gradient")
    parser.add_argument("--gpu-img-per-s", type=float, default=7100.0,
                        help="one GPU's training throughput for the projection (docs/results.md: H200, paper model)")
    parser.add_argument("--gpu-batch", type=int, default=128, help="the batch of --gpu-img-per-s")
    args = parser.parse_args()
    if args.batch % args.world:
        raise SystemExit(f"--batch {args.batch} must divide over --world {args.world} ranks")
    keep_freed_memory()
    start = time.perf_counter()

    bench_numel = gradient_numel(args.classes, args.crop)
    paper_numel = gradient_numel(args.paper_classes, 224)
    # The baseline with all the cores, and with a rank's share of them: on an oversubscribed machine
    # an op split over threads waits for its slowest thread, so fewer threads can be faster.
    rank_threads = max(1, args.threads // args.world)
    before, before_rank_threads = [], []
    for _ in range(args.repeats):
        before += single_process(args, 1, args.threads)
        before_rank_threads += single_process(args, 1, rank_threads)
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(rank_main, args=(args.world, free_port(), args, out_dir), nprocs=args.world, join=True)
        ranks = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(args.world)]
    after = single_process(args, 1, args.threads)  # drift check: the baseline again after the ranks

    # A step ends when the slowest rank ends: the max over ranks of each round's median.
    per_round = {k: [max(r[k][i] for r in ranks) for i in range(args.repeats)] for k in ranks[0]}
    med = {k: statistics.median(v) for k, v in per_round.items()}
    one_s = statistics.median(before + after)
    ratio_steps = statistics.median(b / s for b, s in zip(before, per_round["synced_fp32"]))
    ratio_rank_threads = statistics.median(b / s for b, s in zip(before_rank_threads, per_round["synced_fp32"]))
    one_rank_threads_s = statistics.median(before_rank_threads)
    bf16_ratio = statistics.median(f / b for f, b in zip(per_round["synced_fp32"], per_round["synced_bf16"]))
    wire = 2 * (args.world - 1) / args.world  # bytes a ring all-reduce sends per byte of payload, per rank
    bytes_step = {"fp32": 4 * bench_numel, "bf16": 2 * bench_numel}
    paper_bytes = {"fp32": 4 * paper_numel, "bf16": 2 * paper_numel}
    algbw = {p: paper_bytes[p] / med[f"allreduce_{p}"] / 1e9 for p in ("fp32", "bf16")}
    bench_ar_s = med["allreduce_bench"]

    print(f"threads={args.threads} world={args.world} crop={args.crop} global batch={args.batch} "
          f"classes={args.classes} cpu={torch.backends.cpu.get_cpu_capability()} torch={torch.__version__}")
    print(f"measured model: {bench_numel / 1e6:.1f}M parameters, gradient {bytes_step['fp32'] / 1e6:.0f} MB fp32 / "
          f"{bytes_step['bf16'] / 1e6:.0f} MB bf16 per step per rank (a ring sends {wire:.2f}x that per rank)")
    print(f"one process, batch {args.batch}: {one_s * 1e3:8.1f} ms/step  {args.batch / one_s:7.1f} img/s "
          f"(rounds before {[round(t * 1e3) for t in before]} ms, after {round(after[0] * 1e3)} ms)")
    print(f"one process, {rank_threads} thread(s):  {one_rank_threads_s * 1e3:8.1f} ms/step  "
          f"{args.batch / one_rank_threads_s:7.1f} img/s (a rank's share of the cores)")
    for key, label in (("synced_fp32", "2 ranks, DDP fp32"), ("synced_bf16", "2 ranks, DDP + bf16 hook"),
                       ("no_sync", "2 ranks, no_sync (compute)")):
        print(f"{label:27s}: {med[key] * 1e3:8.1f} ms/step  {args.batch / med[key]:7.1f} img/s")
    exposed = {p: med[f"synced_{p}"] - med["no_sync"] for p in ("fp32", "bf16")}
    print(f"exposed all-reduce per step: fp32 {exposed['fp32'] * 1e3:.1f} ms, bf16 {exposed['bf16'] * 1e3:.1f} ms; "
          f"the same gradient all-reduced alone {bench_ar_s * 1e3:.1f} ms (fp32)")
    print(f"2 ranks vs one process (paired by round): {ratio_steps:.2f}x with {args.threads} threads, "
          f"{ratio_rank_threads:.2f}x with {rank_threads}; bf16 hook vs fp32 step: {bf16_ratio:.2f}x")
    print(f"all_reduce of the paper gradient ({paper_numel / 1e6:.1f}M parameters) over {args.world} gloo ranks:")
    for p in ("fp32", "bf16"):
        print(f"  {p}: {paper_bytes[p] / 1e6:6.1f} MB in {med[f'allreduce_{p}'] * 1e3:7.1f} ms: "
              f"algbw {algbw[p]:.2f} GB/s, busbw {algbw[p] * wire:.2f} GB/s")

    gpu_step_s = args.gpu_batch / args.gpu_img_per_s
    strong = projection(gpu_step_s, args.gpu_batch, paper_bytes, LINKS_GB_S, global_batch=True)
    weak = projection(gpu_step_s, args.gpu_batch, paper_bytes, LINKS_GB_S, global_batch=False)
    print(f"\none GPU: {args.gpu_img_per_s:.0f} img/s at batch {args.gpu_batch} -> {gpu_step_s * 1e3:.1f} ms/step "
          f"(forward {gpu_step_s * (1 - BACKWARD_SHARE) * 1e3:.1f}, backward {gpu_step_s * BACKWARD_SHARE * 1e3:.1f}); "
          f"gradient {paper_bytes['fp32'] / 1e6:.0f} MB fp32, {paper_bytes['bf16'] / 1e6:.0f} MB bf16")
    print_projection(strong, f"global batch {args.gpu_batch} split over the GPUs, as train.batch_size stays")
    print_projection(weak, f"batch {args.gpu_batch} per GPU, global batch grows")
    k = KRIZHEVSKY_2014_SPEEDUP
    print(f"\nKrizhevsky 2014 speed-ups, {k['source']}: "
          + ", ".join(f"{n} GPUs {k['fc_batch_128K'][n]:.2f}x / {k['fc_batch_128'][n]:.2f}x" for n in GPU_COUNTS)
          + " (fc batch 128K / 128)")
    print(f"wall time {time.perf_counter() - start:.0f} s")

    print(json.dumps({
        "one_process_img_s": round(args.batch / one_s, 2),
        "two_ranks_img_s_fp32": round(args.batch / med["synced_fp32"], 2),
        "two_ranks_img_s_bf16": round(args.batch / med["synced_bf16"], 2),
        "one_process_rank_threads_img_s": round(args.batch / one_rank_threads_s, 2),
        "two_ranks_vs_one_process": round(ratio_steps, 3),
        "two_ranks_vs_one_process_rank_threads": round(ratio_rank_threads, 3),
        "bf16_hook_vs_fp32_step": round(bf16_ratio, 3),
        "step_ms": {k: round(v * 1e3, 2) for k, v in med.items() if not k.startswith("allreduce")},
        "exposed_allreduce_ms": {k: round(v * 1e3, 2) for k, v in exposed.items()},
        "standalone_allreduce_ms_measured_model_fp32": round(bench_ar_s * 1e3, 2),
        "bytes_per_step_per_rank": bytes_step,
        "paper_gradient_bytes": paper_bytes,
        "paper_allreduce_ms": {p: round(med[f"allreduce_{p}"] * 1e3, 2) for p in ("fp32", "bf16")},
        "paper_allreduce_algbw_gb_s": {p: round(v, 3) for p, v in algbw.items()},
        "paper_allreduce_busbw_gb_s": {p: round(v * wire, 3) for p, v in algbw.items()},
        "projection_global_batch": strong,
        "projection_per_gpu_batch": weak,
        "krizhevsky_2014": k,
        "config": {"crop": args.crop, "batch": args.batch, "classes": args.classes, "world": args.world,
                   "threads": args.threads, "repeats": args.repeats, "steps": args.steps,
                   "gpu_img_per_s": args.gpu_img_per_s, "gpu_batch": args.gpu_batch, "links_gb_s": LINKS_GB_S,
                   "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
