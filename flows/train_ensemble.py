"""Prefect flow: train the ensemble's members (§6), each a retried task that resumes.

Tasks pass file paths, never tensors. A member whose task fails is retried and resumes from its
last checkpoint; a member that already finished is not trained again (its checkpoint says so).
The work is alexnet/ensemble.py's; this flow adds the task boundaries, retries, concurrency and logs.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from alexnet.config import Params
from alexnet.ensemble import (
    EnsembleRun,
    MemberHook,
    TrainPaths,
    finish_ensemble_tracking,
    start_ensemble_tracking,
    train_logged_member,
)
from flows import retry_unless_hopeless
from flows.waves import run_in_waves


@task(name="train-member", task_run_name="train-member-{index}", cache_policy=NO_CACHE)
def train_member_task(index: int, params: Params, paths: TrainPaths, run: EnsembleRun,
                      on_epoch: MemberHook | None = None) -> dict[str, Any]:
    get_run_logger().info("training member %d", index)
    return train_logged_member(index, params, paths, run, on_epoch=on_epoch)


@flow(name="train-ensemble")
def train_ensemble(params: Params, paths: TrainPaths, on_epoch: MemberHook | None = None) -> list[dict[str, Any]]:
    """Train `ensemble.members` networks that differ only in seed; log them to MLflow.

    `on_epoch(index, row)` runs after each member's epoch (tests inject a fault through it).
    """
    logger = get_run_logger()
    run = start_ensemble_tracking(params, paths)
    task_fn = train_member_task.with_options(retries=params.ensemble.retries, retry_delay_seconds=1,
                                            retry_condition_fn=retry_unless_hopeless)  # not for a full disk
    # Threads (the default task runner) suffice: the heavy work is in torch kernels, which release the GIL.
    calls = [(i, params, paths, run, on_epoch) for i in range(params.ensemble.members)]
    results = run_in_waves(task_fn, calls, params.ensemble.concurrency)
    for r in results:
        logger.info("%s: val top-1 err %.4f after %d epochs", r["name"], r["final"]["val_top1_err"], r["epochs"])
    finish_ensemble_tracking(run, results, paths.tracking_state)
    return results
