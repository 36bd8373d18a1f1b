"""Prefect flow: train the ensemble's members (§6), each a retried task that resumes.

The sequence is alexnet/pipeline/train.py's `train_ensemble`; this flow runs its steps as tasks.
A member whose task fails is retried and resumes from its last checkpoint (not for a full disk,
which a retry cannot mend); a member that already finished is not trained again. Members run on
this machine (a thread, or a process each when several run at once), each on its device group from
`ensemble.devices`, or as Ray tasks (`ensemble.runner: ray`), where Ray picks the GPUs. Either way
a member's weights are those it would have alone: its seed, its work and its process's random
generator are its own.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow

from alexnet.config.sections import Params
from alexnet.pipeline.paths import TrainPaths
from alexnet.pipeline.placement import member_devices, members_at_once, ray_resources
from alexnet.pipeline.train import MemberHook, StopCheck, train_ensemble
from alexnet.tracking.state import read_tracking_state
from flows import retry_unless_hopeless, runners, watch
from flows.steps import PrefectSteps


@flow(name="train-ensemble")
def train_ensemble_flow(params: Params, paths: TrainPaths, on_epoch: MemberHook | None = None,
                        should_stop: StopCheck | None = None, retries: int | None = None) -> list[dict[str, Any]]:
    """The flow `train_ensemble` runs, on the task runner ensemble.runner names; each member's progress
    artifact, updated every epoch, and at the end a table of the members and a link to the MLflow run."""
    watch.bars_on_terminal_only()
    steps = PrefectSteps({"train-member": dict(
        retries=params.ensemble.retries if retries is None else retries, retry_delay_seconds=1,
        retry_condition_fn=retry_unless_hopeless, task_run_name="train-member-{index}")})
    ray = params.ensemble.runner == "ray"
    with runners.member_options(ray_resources(params)) if ray else contextlib.nullcontext():
        results = train_ensemble(params, paths, steps, watch.EpochProgress(on_epoch), should_stop)
    watch.report_training(results, read_tracking_state(paths.tracking_state))
    return results


def run_train_flow(params: Params, paths: TrainPaths, on_epoch: MemberHook | None = None,
                   should_stop: StopCheck | None = None, retries: int | None = None, return_state: bool = False) -> Any:
    """Train `ensemble.members` networks that differ only in seed through the flow; log them to MLflow.

    Placement is settled first: a pool too small for one member, or an unreachable
    ensemble.ray_address, fails in one line before any run or training starts. `retries` overrides
    ensemble.retries (DDP ranks are restarted by torchrun, never one rank's task by Prefect).
    """
    member_devices(params)  # a bad pool fails here
    runner, address = params.ensemble.runner, params.ensemble.ray_address
    with runners.ray_session(address) if runner == "ray" else contextlib.nullcontext():
        task_runner = runners.task_runner(runner, address, members_at_once(params))
        flow_fn = train_ensemble_flow.with_options(task_runner=task_runner)
        return flow_fn(params, paths, on_epoch, should_stop, retries, return_state=return_state)
