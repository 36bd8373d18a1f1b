"""Data parallelism inside one member: torchrun, the process group, the rank's replica, its traffic.

With `train.replicas` R > 1 the train stage runs itself again under `torchrun --standalone
--nproc-per-node R` (several machines: the user runs torchrun with --nnodes/--rdzv-endpoint, see
docs/scale-out.md). Each rank holds one whole two-tower replica (`replica_devices`) wrapped in
`DistributedDataParallel(model, device_ids=None)`, PyTorch's pattern for DDP over a model that
spans devices; gloo on the CPU, NCCL on GPUs. The global batch stays train.batch_size: rank r
takes the r-th contiguous slice of every batch (alexnet/loading/loader.py cuts it from the pure keys), so
each image is augmented as in one process and the mean of the ranks' gradients is the gradient
of the global batch's mean loss.

Nothing here changes a world-size-1 run: with one rank no process group is made and the
model is not wrapped.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from alexnet.training.placement import check_replicas_fit, replica_devices


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in its DDP job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes checkpoints and outputs and logs to MLflow."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def under_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    """True in a process torchrun started (it sets RANK, WORLD_SIZE, LOCAL_RANK and more)."""
    return all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def ranks_from_env(env: Mapping[str, str] = os.environ) -> Ranks:
    world = int(env["WORLD_SIZE"])
    return Ranks(int(env["RANK"]), world, int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", world)))


def current_ranks() -> Ranks:
    """This process's ranks once `process_group` has made the group; SINGLE otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))


def torchrun_command(replicas: int, max_restarts: int, module: str, argv: Sequence[str]) -> list[str]:
    """The argument list (never a shell string) that runs `python -m module argv` on R local ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(replicas),
            "--max-restarts", str(max_restarts), "-m", module, *argv]


def launch(replicas: int, max_restarts: int, module: str, argv: Sequence[str]) -> int:
    """Run `module` under torchrun on this machine and wait; torchrun's exit code."""
    return subprocess.run(torchrun_command(replicas, max_restarts, module, argv), check=False).returncode


def check_local_world(replicas: int, ranks: Ranks) -> None:
    """Under a torchrun the user started: its ranks per node must be train.replicas."""
    if ranks.local_world_size != replicas:
        raise ValueError(f"train.replicas: {replicas}, but torchrun started {ranks.local_world_size} rank(s) on "
                         "this node (--nproc-per-node); make them equal")


def backend_for(devices: Sequence[str]) -> str:
    return "nccl" if torch.device(devices[0]).type == "cuda" else "gloo"


def replica_placement(devices: Sequence[str], ranks: Ranks) -> tuple[str, ...]:
    """The devices of this rank's replica: model.devices at world size 1, else placement's rule.

    model.devices gives the shape of one replica: [cpu, cpu] -> every rank on [cpu, cpu];
    [cuda:0, cuda:1] -> rank with local rank l on cuda:2l, cuda:2l+1; both towers on one GPU
    ([cuda:0, cuda:0]) -> one GPU per rank, cuda:l twice.
    """
    devices = tuple(devices)
    if not ranks.parallel:
        return devices
    kind = torch.device(devices[0]).type
    per = len(set(devices)) if kind == "cuda" else len(devices)
    visible = torch.cuda.device_count() if kind == "cuda" else 0
    got = replica_devices(per, ranks.rank, ranks.local_rank, replicas=ranks.local_world_size,
                          device_type=kind, visible_devices=visible)
    return got * len(devices) if per == 1 else got


def check_fits(replicas: int, devices: Sequence[str], visible_cuda: int) -> None:
    """Before launching: R replicas of a CUDA placement must fit the GPUs this node sees (names train.replicas)."""
    if torch.device(devices[0]).type == "cuda":
        check_replicas_fit(replicas, len(set(devices)), visible_cuda)


@contextlib.contextmanager
def process_group(devices: Sequence[str], replicas: int, timeout_s: int) -> Iterator[Ranks]:
    """The DDP process group of this torchrun rank (SINGLE, and no group, outside torchrun).

    A rank that cannot reach the others within `timeout_s` (train.rendezvous_timeout; it also
    bounds each collective) fails with one line naming the endpoint and the setting.
    """
    if not under_torchrun():
        yield SINGLE
        return
    ranks = ranks_from_env()
    check_local_world(replicas, ranks)
    backend = backend_for(devices)
    if backend == "nccl":
        torch.cuda.set_device(replica_placement(devices, ranks)[0])
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    endpoint = f"{host}:{port}"
    if ranks.rank != 0 and not _reachable(host, port, timeout_s):
        # Before torch tries: its own failure is a C++ stack trace per attempt, not one line.
        raise ValueError(f"rank {ranks.rank} of {ranks.world_size} could not reach the rendezvous at {endpoint} "
                         f"(torchrun's --rdzv-endpoint, MASTER_ADDR:MASTER_PORT) within "
                         f"train.rendezvous_timeout={timeout_s} s")
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        store, _, _ = next(dist.rendezvous("env://", ranks.rank, ranks.world_size, timeout=timeout))
        store = dist.PrefixStore(f"alexnet/round-{_round(store, ranks.world_size)}", store)
        dist.init_process_group(backend, store=store, rank=ranks.rank, world_size=ranks.world_size, timeout=timeout)
    except (RuntimeError, dist.DistError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"rank {ranks.rank} of {ranks.world_size} could not join the others at {endpoint} "
                         f"(torchrun's --rdzv-endpoint) within train.rendezvous_timeout={timeout_s} s: "
                         f"{first}") from None
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def _round(store: dist.Store, world_size: int) -> int:
    """Which start of the group this is, the same number on every rank.

    torchrun's agent keeps its store across restarts: without a prefix per start, a restarted rank
    can read a dead rank's address from the start before and fail to connect. torchrun's own
    TORCHELASTIC_RESTART_COUNT cannot be that prefix across hosts: it counts per node, so the node
    whose rank failed restarts as attempt 1 and the others, restarted for the new membership, as 0.
    Each start, every rank joins once: the count of joins says the start.
    """
    return (store.add("alexnet/joins", 1) - 1) // world_size


def _reachable(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection to host:port opens within timeout_s (retrying: the server may start late)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def wrap(model: torch.nn.Module, grad_compression: str) -> torch.nn.Module:
    """DDP over a replica that may span two devices (device_ids=None); bf16: DDP's compress hook."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=None)
    if grad_compression == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return ddp


def grad_bytes_per_step(model: torch.nn.Module, grad_compression: str) -> int:
    """Bytes of gradient one rank hands to the all-reduce each step (a ring moves 2(N-1)/N times this)."""
    per = 2 if grad_compression == "bf16" else 4
    return per * sum(p.numel() for p in model.parameters() if p.requires_grad)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """The sum over ranks of each value (float64, so the order of a few terms hardly matters)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (small things: RNG states)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_part(indices: np.ndarray, ranks: Ranks) -> np.ndarray:
    """Rank r's contiguous share of one evaluation batch (sizes differ by at most one; may be empty)."""
    return np.array_split(indices, ranks.world_size)[ranks.rank]


def gather_parts(local: torch.Tensor, batch_sizes: Sequence[int], ranks: Ranks) -> torch.Tensor:
    """Undo `rank_part` over a pass: every rank's rows back in batch order, then rank order within a batch.

    `local` holds this rank's parts of the batches of `batch_sizes`, concatenated.
    """
    world = ranks.world_size
    parts = [[len(a) for a in np.array_split(np.arange(n), world)] for n in batch_sizes]
    counts = [sum(p[r] for p in parts) for r in range(world)]
    if local.shape[0] != counts[ranks.rank]:
        raise RuntimeError(f"rank {ranks.rank} holds {local.shape[0]} rows, expected {counts[ranks.rank]}")
    device = _collective_device()
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    offsets, rows = [0] * world, []
    for sizes in parts:
        for r, n in enumerate(sizes):
            rows.append(gathered[r][offsets[r] : offsets[r] + n])
            offsets[r] += n
    return torch.cat(rows).cpu()


def check_world(path: Path, state: dict[str, Any], world: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written by another world size: it would continue another computation."""
    saved = int(state.get("world", {}).get("size", 1))
    if saved != world["size"]:
        raise ValueError(
            f"{path}: written by a DDP job of world size {saved}, this job has world size {world['size']} "
            f"(train.replicas x nodes); resuming with another world size is refused. Run it again with "
            f"{saved} rank(s), or delete the checkpoint to start over")
