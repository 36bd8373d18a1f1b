"""Train an ensemble (§6): the train stage's sequence, written once for the stage, the DDP path and the flow.

`train_ensemble` holds the order and the failure policy: the placement is checked and the tracking
store opened (a parent run with every param and its provenance) before any training; each member
trains in its nested run (`train_logged_member`, the step the flow runs as a retried task that
resumes from its checkpoint); the parent is closed and the run ids written for the evaluate stage.
When a member fails for good the parent is closed FAILED and the error goes on up. How the steps
run (here in order, or as Prefect tasks on threads, processes or Ray) is the `Steps` passed in.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.config.params import flatten
from alexnet.config.sections import Params
from alexnet.core.layout import DVC_LOCK_FILE, MEMBER_SUMMARY_FILE, member_name
from alexnet.core.provenance import dvc_lock_version
from alexnet.data.shards import data_version
from alexnet.pipeline.paths import TrainPaths
from alexnet.pipeline.placement import member_devices, members_at_once, placed, placed_in_this_process
from alexnet.pipeline.steps import InOrder, Steps
from alexnet.tracking.lifecycle import (
    dataset_name,
    entry_point,
    experiment_name,
    failed_on_error,
    finish,
    source_commit,
    system_metrics,
)
from alexnet.tracking.runs import Tracker, provenance_tags
from alexnet.tracking.state import write_tracking_state
from alexnet.tracking.store import check_tracking, local_artifact_root, resolve_tracking_uri
from alexnet.training.member import member_seed, train_member

log = logging.getLogger(__name__)

# Called after each epoch of a member, with the member's index and the epoch's row (train.fit's, plus
# `epochs`: train.epochs, and `eta_s`: the seconds left at this attempt's pace), once its checkpoint is
# written: what it raises fails that attempt (the retry resumes there).
MemberHook = Callable[[int, dict[str, float]], None]
# Asked after every training step: True stops the member with a checkpoint of the epoch in progress.
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class EnsembleRun:
    """An ensemble's open parent run, as each member's task gets it (pickles: a Tracker does)."""

    tracker: Tracker
    parent: str
    tags: Mapping[str, str]  # the provenance every run of the ensemble carries
    dataset: Mapping[str, str]  # the shards as the runs' dataset input: name, digest, source, dvc_data_version
    root: Path | None = None  # the project: tracking.json names a store inside it relative to it


def train_ensemble(params: Params, paths: TrainPaths, steps: Steps | None = None, on_epoch: MemberHook | None = None,
                   should_stop: StopCheck | None = None) -> list[dict[str, Any]]:
    """Train `ensemble.members` networks that differ only in seed, each in its MLflow run; their summaries.

    A pool too small for one member and an unusable tracking store fail here in one line, before
    any run or training starts. `on_epoch(index, row)` runs after each member's epoch.
    """
    steps = steps or InOrder()
    groups = member_devices(params)  # a bad pool fails here
    run = steps.one("open-ensemble-run", start_ensemble_tracking, params, paths)
    calls = [(i, placed(params, devices), paths, run, on_epoch, should_stop) for i, devices in enumerate(groups)]
    with failed_on_error(run.tracker, run.parent):
        results = steps.each("train-member", train_logged_member, calls, members_at_once(params))
    steps.one("close-ensemble-run", finish_ensemble_tracking, run, results, paths.tracking_state)
    return results


def train_members_on_rank(params: Params, paths: TrainPaths, should_stop: StopCheck | None = None) -> None:
    """A DDP rank other than 0: the same members in the same order beside rank 0, which tracks them."""
    for index in range(params.ensemble.members):
        train_member(index, params, prepared_dir=paths.prepared, shards_dir=paths.shards, models_dir=paths.models,
                     history_dir=paths.history, checkpoints_dir=paths.checkpoints, progress=False,
                     should_stop=should_stop)


def start_ensemble_tracking(params: Params, paths: TrainPaths) -> EnsembleRun:
    """Check the tracking store (before any training), open the parent run with every param and its provenance."""
    uri = resolve_tracking_uri(params.tracking.uri, paths.root)
    check_tracking(uri)  # fail fast, before any training, if the store cannot be used
    tracker = Tracker(uri, experiment_name(params.tracking, params.data),
                      artifact_root=local_artifact_root(uri, paths.root))
    version = data_version(paths.shards)
    tags = provenance_tags(source=entry_point(paths.root), git_commit=source_commit(paths.root), data_version=version,
                           dataset=dataset_name(params.data), devices=params.model.devices)
    dvc_version = dvc_lock_version("preprocess", paths.root / DVC_LOCK_FILE) or "unknown"
    members = params.ensemble.members
    parent = tracker.start_parent(f"ensemble-{members}", params=flatten(params),
                                  tags={**tags, "dvc_data_version": dvc_version, "members": str(members)})
    run = EnsembleRun(tracker, parent, tags, {"name": dataset_name(params.data), "digest": version,
                                              "source": str(paths.shards.resolve()), "dvc_data_version": dvc_version},
                      paths.root)
    _log_shards(run, parent)
    return run


def _log_shards(run: EnsembleRun, run_id: str) -> None:
    data = run.dataset
    run.tracker.log_dataset(run_id, name=data["name"], digest=data["digest"], source=data["source"],
                            tags={"dvc_data_version": data["dvc_data_version"]})


def train_logged_member(index: int, params: Params, paths: TrainPaths, run: EnsembleRun,
                        on_epoch: MemberHook | None = None, should_stop: StopCheck | None = None) -> dict[str, Any]:
    """Train member `index` in its nested run: per-epoch metrics, then its history and summary.

    A retried member gets the nested run of its first attempt back and keeps logging into it; an
    attempt that raises leaves the run FAILED.
    """
    name, tracker = member_name(index), run.tracker
    group = ",".join(params.model.devices)  # its device group from ensemble.devices: the same on every attempt
    params = placed_in_this_process(params)  # a Ray task trains on the GPUs Ray gave it
    devices = ",".join(params.model.devices)
    log.info("training %s on %s", name, devices)
    run_id = tracker.start_member(run.parent, name, params={
        "member": index, "seed": member_seed(params.train.seed, index), "placement": group},
        tags={**run.tags, "member": name, "devices": devices})
    _log_shards(run, run_id)
    eta = _EpochClock(params.train.epochs)

    def after_epoch(row: dict[str, float]) -> None:
        tracker.log_epoch(run_id, row, step=int(row["epoch"]))
        if on_epoch is not None:
            on_epoch(index, {**row, "epochs": params.train.epochs, "eta_s": eta.left(int(row["epoch"]))})

    with failed_on_error(tracker, run_id), system_metrics(tracker, run_id):
        result = train_member(index, params, prepared_dir=paths.prepared, shards_dir=paths.shards,
                              models_dir=paths.models, history_dir=paths.history, checkpoints_dir=paths.checkpoints,
                              on_epoch=after_epoch, progress=_on_terminal(), should_stop=should_stop)
    summary = Path(result["model"]).parent / MEMBER_SUMMARY_FILE
    # The member's files are complete: a store failing now warns and `sync` catches up later.
    finish(tracker, run_id, [Path(result["history"]), summary])
    return {**result, "run_id": run_id}


def _on_terminal() -> bool:
    """Progress bars only where someone watches them: a log file gets the epoch lines, no bar redraws.
    (tqdm's own check, made explicit: a member in a process of its own asks its inherited stream.)"""
    return sys.stderr is not None and sys.stderr.isatty()


class _EpochClock:
    """The seconds left of a member's train.epochs, at this attempt's pace (a resumed attempt's earlier epochs
    not counted): what the epoch log line's ETA says, for the hooks that show it elsewhere."""

    def __init__(self, epochs: int):
        self.epochs, self.began, self.first = epochs, time.monotonic(), None

    def left(self, done: int) -> float:
        if self.first is None:
            self.first = done - 1  # the epochs before this attempt
        per_epoch = (time.monotonic() - self.began) / max(done - self.first, 1)
        return max(self.epochs - done, 0) * per_epoch


def finish_ensemble_tracking(run: EnsembleRun, results: Sequence[Mapping[str, Any]], tracking_state: Path) -> None:
    """Close the parent run; write the run ids that the evaluate stage logs its figures into."""
    run.tracker.best_effort("closing the parent run", run.parent, run.tracker.end, run.parent)
    write_tracking_state(tracking_state, uri=run.tracker.uri, experiment=run.tracker.experiment, parent=run.parent,
                         member_runs={r["name"]: r["run_id"] for r in results}, root=run.root)
