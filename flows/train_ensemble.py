"""Prefect flow: train the ensemble's members (§6), each a retried task that resumes.

Tasks pass file paths, never tensors. A member whose task fails is retried and resumes from its
last checkpoint; a member that already finished is not trained again (its checkpoint says so).
Members run on this machine (a thread, or a process each when several run at once), each on its
device group from `ensemble.devices`, or as Ray tasks (`ensemble.runner: ray`), where Ray picks
the GPUs and the member maps them to cuda:0... Either way a member's weights are those it would
have alone: its seed, its work and its process's random generator are its own.
The work is alexnet/ensemble.py's; this flow adds the task boundaries, retries, concurrency and logs.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from alexnet.config import Params
from alexnet.ensemble import (
    EnsembleRun,
    MemberHook,
    TrainPaths,
    devices_in_ray_task,
    finish_ensemble_tracking,
    member_devices,
    members_at_once,
    placed,
    ray_resources,
    start_ensemble_tracking,
    train_logged_member,
)
from flows import retry_unless_hopeless, runners
from flows.waves import run_in_waves


@task(name="train-member", task_run_name="train-member-{index}", cache_policy=NO_CACHE)
def train_member_task(index: int, params: Params, paths: TrainPaths, run: EnsembleRun,
                      on_epoch: MemberHook | None = None) -> dict[str, Any]:
    if runners.in_ray_task():  # Ray chose the GPUs and made them this process's cuda:0..
        params = placed(params, devices_in_ray_task(params, runners.ray_gpu_ids()))
    get_run_logger().info("training member %d on %s", index, list(params.model.devices))
    return train_logged_member(index, params, paths, run, on_epoch=on_epoch)


@flow(name="train-ensemble")
def train_ensemble_flow(params: Params, paths: TrainPaths, on_epoch: MemberHook | None = None) -> list[dict[str, Any]]:
    """The flow `train_ensemble` runs, on the task runner ensemble.runner names."""
    logger = get_run_logger()
    run = start_ensemble_tracking(params, paths)
    task_fn = train_member_task.with_options(retries=params.ensemble.retries, retry_delay_seconds=1,
                                            retry_condition_fn=retry_unless_hopeless)  # not for a full disk
    if params.ensemble.runner == "ray":
        calls = [(i, params, paths, run, on_epoch) for i in range(params.ensemble.members)]
        with runners.member_options(ray_resources(params)):
            results = run_in_waves(task_fn, calls, params.ensemble.concurrency)
    else:
        # One member at a time in a thread; several at once each in a process (runners.task_runner).
        calls = [(i, placed(params, devices), paths, run, on_epoch)
                 for i, devices in enumerate(member_devices(params))]
        results = run_in_waves(task_fn, calls, members_at_once(params))
    for r in results:
        logger.info("%s: val top-1 err %.4f after %d epochs", r["name"], r["final"]["val_top1_err"], r["epochs"])
    finish_ensemble_tracking(run, results, paths.tracking_state)
    return results


def train_ensemble(params: Params, paths: TrainPaths, on_epoch: MemberHook | None = None,
                   return_state: bool = False) -> Any:
    """Train `ensemble.members` networks that differ only in seed; log them to MLflow.

    Placement is settled first: a pool too small for one member, or an unreachable
    ensemble.ray_address, fails in one line before any run or training starts. `on_epoch(index,
    row)` runs after each member's epoch (tests inject a fault through it).
    """
    member_devices(params)  # a bad pool fails here
    runner, address = params.ensemble.runner, params.ensemble.ray_address
    with runners.ray_session(address) if runner == "ray" else contextlib.nullcontext():
        task_runner = runners.task_runner(runner, address, members_at_once(params))
        flow_fn = train_ensemble_flow.with_options(task_runner=task_runner)
        return flow_fn(params, paths, on_epoch, return_state=return_state)
