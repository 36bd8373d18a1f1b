"""Which devices each ensemble member and each DDP replica trains on: pure functions, no torch.

Three levels, each taking devices from the one below:

- a *pool* (`ensemble.devices`): the devices this machine lends to training, in order;
- a *member* takes a disjoint *group* of `train.replicas * D` devices from the pool, where D is
  the devices one replica spans (`len(model.devices)`: 1, or 2 for the §3.2 tower split);
- a *replica* (one torchrun rank) takes D consecutive devices of its member's group.

So a member with R replicas needs R*D devices, and a pool of P devices runs floor(P / (R*D))
members at once (`ensemble.concurrency` can only lower that). 8 GPUs, D=2: R=1 gives four members
side by side on (cuda:0, cuda:1), (cuda:2, cuda:3), ...; R=2 gives two members, each a 2-rank
DDP job whose rank r holds cuda:2r and cuda:2r+1 of the member's group.

CUDA devices are exclusive: a pool lists each at most once, so no two members share a GPU. The
CPU is not: `cpu` may repeat, and each entry is a *slot* that one tower of one member takes.
`[cpu, cpu]` is one replica's two towers on the CPU, `[cpu, cpu, cpu, cpu]` two such members
side by side (they then share the CPU's cores; the pool only says how many run at once). Both
towers on one GPU (`[cuda:0, cuda:0]`, faster than one device on a large GPU) is a one-device group: take
groups of 1 from the pool and place the member's towers on [g, g].
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _exclusive_key(device: str) -> str | None:
    """The physical device a name refers to (None for the CPU, which any number of slots share)."""
    if not _DEVICE.match(device):
        raise ValueError(f"ensemble.devices: unknown device {device!r}; allowed: cpu, cuda, cuda:N, mps")
    if device == "cpu":
        return None
    return "cuda:0" if device == "cuda" else device  # bare "cuda" is torch's current device, index 0


def device_groups(pool: Sequence[str], per_group: int) -> list[tuple[str, ...]]:
    """Disjoint groups of `per_group` devices from `pool`, in pool order; leftover devices stay idle.

    8 GPUs, 2 per group -> 4 groups. A pool too small for one group, a GPU listed twice or an
    unknown device name -> ValueError naming ensemble.devices, before any work starts.
    """
    if per_group < 1:
        raise ValueError(f"devices per group must be at least 1, got {per_group}")
    seen: dict[str, int] = {}
    for i, device in enumerate(pool):
        key = _exclusive_key(device)
        if key is None:
            continue
        if key in seen:
            raise ValueError(
                f"ensemble.devices: {device!r} is listed twice (entries {seen[key]} and {i}); a GPU belongs "
                "to one member at a time (only cpu may repeat)"
            )
        seen[key] = i
    if len(pool) < per_group:
        raise ValueError(
            f"ensemble.devices: {len(pool)} device(s) {list(pool)} cannot give one group of {per_group} "
            f"(each member needs {per_group})"
        )
    count = len(pool) // per_group
    return [tuple(pool[i * per_group : (i + 1) * per_group]) for i in range(count)]


def member_groups(
    pool: Sequence[str], replicas: int, devices_per_replica: int, concurrency: int | None = None
) -> list[tuple[str, ...]]:
    """The device groups of the members that run at once: floor(len(pool) / (R*D)), at most `concurrency`."""
    if replicas < 1:
        raise ValueError(f"train.replicas must be at least 1, got {replicas}")
    if devices_per_replica not in (1, 2):
        raise ValueError(f"model.devices: a replica spans one or two devices, got {devices_per_replica}")
    per_member = replicas * devices_per_replica
    if len(pool) < per_member:
        raise ValueError(
            f"ensemble.devices: {len(pool)} device(s) cannot hold one member: train.replicas={replicas} x "
            f"{devices_per_replica} device(s) per replica = {per_member}"
        )
    groups = device_groups(pool, per_member)
    return groups if concurrency is None else groups[: max(1, concurrency)]


def check_replicas_fit(replicas: int, devices_per_replica: int, visible_devices: int) -> None:
    """train.replicas * devices per replica must not exceed the CUDA devices this node sees."""
    if replicas < 1:
        raise ValueError(f"train.replicas must be at least 1, got {replicas}")
    need = replicas * devices_per_replica
    if need > visible_devices:
        raise ValueError(
            f"train.replicas: {replicas} replicas x {devices_per_replica} device(s) each need {need} CUDA "
            f"devices, this node sees {visible_devices}"
        )


def replica_devices(
    devices_per_replica: int,
    rank: int,
    local_rank: int,
    *,
    replicas: int,
    device_type: str = "cuda",
    visible_devices: int = 0,
) -> tuple[str, ...]:
    """The devices of DDP rank `rank` (local rank `local_rank` on its node): cuda:D*l .. cuda:D*l+D-1.

    `replicas` is the ranks per node (torchrun's --nproc-per-node), `visible_devices` the CUDA
    devices this process sees (torch.cuda.device_count()). On the CPU every rank's replica is
    ("cpu",) * D: two ranks of [cpu, cpu] are two whole two-tower replicas on the CPU's cores.
    """
    if devices_per_replica not in (1, 2):
        raise ValueError(f"model.devices: a replica spans one or two devices, got {devices_per_replica}")
    if not 0 <= local_rank < replicas:
        raise ValueError(f"local rank {local_rank} is outside 0..{replicas - 1} (train.replicas={replicas})")
    if rank < local_rank:
        raise ValueError(f"rank {rank} is smaller than its local rank {local_rank}")
    if device_type == "cpu":
        return ("cpu",) * devices_per_replica
    if device_type != "cuda":
        raise ValueError(f"DDP replicas run on cpu (gloo) or cuda (NCCL), got {device_type!r}")
    check_replicas_fit(replicas, devices_per_replica, visible_devices)
    first = local_rank * devices_per_replica
    return tuple(f"cuda:{first + i}" for i in range(devices_per_replica))


def ray_member_resources(devices: Sequence[str], cpus: int = 1) -> dict[str, float]:
    """The Ray resource request of a member placed on `devices`: its distinct GPUs and `cpus` CPUs.

    ("cuda:0", "cuda:1") -> {"num_cpus": 1, "num_gpus": 2}; ("cuda:0", "cuda:0") -> 1 GPU;
    ("cpu", "cpu") -> no GPU. Ray then picks *which* GPUs; the names here only give the count.
    """
    if cpus < 1:
        raise ValueError(f"a member needs at least one CPU, got {cpus}")
    gpus = set()
    for device in devices:
        key = _exclusive_key(device)
        if key == "mps":
            raise ValueError("ensemble.runner: ray schedules CPUs and CUDA GPUs; an mps member cannot run on Ray")
        if key is not None:
            gpus.add(key)
    return {"num_cpus": cpus, "num_gpus": len(gpus)}


def local_devices_from_ray(gpu_ids: Sequence[int | str], per: int) -> tuple[str, ...]:
    """The member's `per` device names inside a Ray task given `ray.get_gpu_ids()`.

    Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, in the order of `gpu_ids`, so they are
    cuda:0..cuda:n-1 in the task whatever their ids on the node. One GPU for two devices: both
    towers on it; no GPU: the CPU.
    """
    if per < 1:
        raise ValueError(f"devices per member must be at least 1, got {per}")
    ids = [str(i) for i in gpu_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Ray assigned the same GPU twice: {ids}")
    if not ids:
        return ("cpu",) * per
    if len(ids) == 1:
        return ("cuda:0",) * per
    if len(ids) != per:
        raise ValueError(
            f"ensemble.devices: Ray assigned {len(ids)} GPUs {ids} to a member placed on {per} device(s)"
        )
    return tuple(f"cuda:{i}" for i in range(per))
