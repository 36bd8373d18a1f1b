"""Where each member of an ensemble runs: its device group from ensemble.devices, or what it asks of Ray.

Pure functions of the params (alexnet/training/placement.py holds the device arithmetic); a
member's weights never depend on where it runs, so none of this is in a checkpoint's key beyond
the model.devices a member is placed on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from alexnet.config.sections import Params, TrainParams
from alexnet.training.placement import local_devices_from_ray, member_groups, ray_member_resources


def replicas(train: TrainParams) -> int:
    """DDP ranks per member (train.replicas where this version has the key, else 1)."""
    return int(getattr(train, "replicas", 1))


def member_devices(params: Params) -> list[tuple[str, ...]]:
    """Each member's model.devices, in member order, and so how many run at once (`members_at_once`).

    Without a pool every member runs on model.devices. With `ensemble.devices` member i takes group
    i mod G of the G disjoint groups of train.replicas x len(model.devices) devices the pool holds
    (at most ensemble.concurrency groups): a member keeps its group on a rerun with the same params,
    and so its checkpoint (model.devices is part of its key). A pool too small for one member fails
    here, before any work, naming ensemble.devices.
    """
    shape, groups = params.model.devices, _groups(params)
    if groups is None:
        return [shape] * params.ensemble.members
    # A replica's devices are the first of its member's group (the launcher of DDP replicas numbers
    # the rest from there); both towers on one GPU stay on one: [g, g].
    per, members = _per_replica(shape), [groups[i % len(groups)] for i in range(params.ensemble.members)]
    return [group[:1] * len(shape) if per < len(shape) else group[:per] for group in members]


def members_at_once(params: Params) -> int:
    """Members trained side by side: ensemble.concurrency, or fewer when the pool holds fewer groups."""
    groups = _groups(params)
    return params.ensemble.concurrency if groups is None else len(groups)


def _groups(params: Params) -> list[tuple[str, ...]] | None:
    ens = params.ensemble
    if ens.devices is None:
        return None
    return member_groups(ens.devices, replicas(params.train), _per_replica(params.model.devices), ens.concurrency)


def _per_replica(shape: tuple[str, ...]) -> int:
    """Pool entries one replica takes: a GPU once however many towers it holds, a CPU slot per tower."""
    return 1 if len(set(shape)) == 1 and shape[0].startswith("cuda") else len(shape)


def placed(params: Params, devices: tuple[str, ...]) -> Params:
    """`params` with `devices` as model.devices: the same member, trained on another device group."""
    model = params.model.model_copy(update={"devices": tuple(devices)})
    # Copying the other sections is no use of them (what reads them is scanned by dvc_deps on its own).
    return Params.model_copy(params, update={"model": model})


def ray_resources(params: Params) -> dict[str, float]:
    """What one member's Ray task asks for: the distinct GPUs of its replicas, train.threads CPUs."""
    shape, copies = params.model.devices, replicas(params.train)
    gpus = [d for d in dict.fromkeys(shape) if d.startswith("cuda")]
    group = shape if copies == 1 or not gpus else tuple(f"cuda:{i}" for i in range(len(gpus) * copies))
    return ray_member_resources(group, cpus=params.train.threads or 1)


def devices_in_ray_task(params: Params, gpu_ids: Sequence[int | str]) -> tuple[str, ...]:
    """model.devices inside a member's Ray task: Ray's GPUs are cuda:0.. there (CUDA_VISIBLE_DEVICES)."""
    return local_devices_from_ray(gpu_ids, len(params.model.devices))


def in_ray_task() -> bool:
    """True inside a Ray worker (a member submitted by Prefect's Ray task runner), where Ray chose the GPUs."""
    ray = sys.modules.get("ray")  # a Ray worker has imported it; elsewhere importing it costs seconds
    if ray is None:
        return False
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def placed_in_this_process(params: Params) -> Params:
    """`params` as this process runs them: inside a Ray task, on the GPUs Ray gave it (cuda:0.. there)."""
    if not in_ray_task():
        return params
    import ray

    return placed(params, devices_in_ray_task(params, [str(i) for i in ray.get_gpu_ids()]))
