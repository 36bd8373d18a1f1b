"""An ensemble (§6) as the stages' flows run it, each step a plain function testable without Prefect.

Training: `start_ensemble_tracking` opens the parent run with its provenance, `train_logged_member`
trains one member into its nested run, `finish_ensemble_tracking` closes the parent and writes the
run ids for the evaluate stage. Evaluation: `member_models` names the members' files,
`write_reports` turns their saved probabilities into metrics.json and the report files, and
`log_evaluation` logs figures and models into the training's runs and registers the ensemble.
Placement: `member_devices` gives each member its device group from `ensemble.devices` (threads
runner), `ray_resources` and `devices_in_ray_task` what a member asks of Ray and where it then runs.
A flow (flows/) is the task boundaries, retries and concurrency over these calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet.config import DataParams, Params, TrainParams, flatten
from alexnet.evaluate import evaluate_ensemble, headline_view, read_class_names
from alexnet.layout import (
    CLASSES_FILE,
    DVC_LOCK_FILE,
    MODEL_FILE,
    PREDICTIONS_DIR,
    REPORT_FILES,
    SUMMARY_FILE,
    TEN_CROP,
    VAL,
    member_name,
)
from alexnet.member import load_member, train_member
from alexnet.placement import local_devices_from_ray, member_groups, ray_member_resources
from alexnet.provenance import dvc_lock_version, git_commit
from alexnet.registry import example_batch, log_ensemble, log_model, register
from alexnet.shards import ShardSet, data_version
from alexnet.tracking import Tracker, check_tracking, local_artifact_root, provenance_tags, resolve_tracking_uri
from alexnet.tracking_sync import read_tracking_state, write_tracking_state

# Called after each epoch of a member, with the member's index and the epoch's row (train.fit's),
# once its checkpoint is written: what it raises fails that attempt (the retry resumes there).
MemberHook = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainPaths:
    """The train stage's inputs and outputs (dvc.yaml names them), and the project they belong to."""

    root: Path  # the project: the default tracking store, mlartifacts/, dvc.lock
    prepared: Path
    shards: Path
    models: Path
    history: Path
    checkpoints: Path
    tracking_state: Path  # output: the MLflow run ids, read by the evaluate stage


@dataclass(frozen=True)
class EvalPaths:
    """The evaluate stage's inputs and outputs (dvc.yaml names them)."""

    prepared: Path
    shards: Path
    models: Path
    reports: Path
    metrics: Path
    tracking_state: Path  # input: the training's MLflow run ids

    @property
    def predictions(self) -> Path:
        return self.reports / PREDICTIONS_DIR


@dataclass(frozen=True)
class EnsembleRun:
    """An ensemble's open parent run, as each member's task gets it (pickles: a Tracker does)."""

    tracker: Tracker
    parent: str
    tags: Mapping[str, str]  # the provenance every run of the ensemble carries
    dataset: Mapping[str, str]  # the shards as the runs' dataset input: name, digest, source, dvc_data_version
    root: Path | None = None  # the project: tracking.json names a store inside it relative to it


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


def dataset_name(data: DataParams) -> str:
    """The source the shards were made from: "synthetic", or "imagenet:<root>"."""
    return data.source if data.root is None else f"{data.source}:{data.root}"


def entry_point(root: Path) -> str:
    """The program that started this process (MLflow's source name), relative to the project if inside it."""
    program = Path(sys.argv[0]).resolve()
    return program.relative_to(root.resolve()).as_posix() if program.is_relative_to(root.resolve()) else program.name


def start_ensemble_tracking(params: Params, paths: TrainPaths) -> EnsembleRun:
    """Check the tracking store (before any training), open the parent run with every param and its provenance."""
    uri = resolve_tracking_uri(params.tracking.uri, paths.root)
    check_tracking(uri)  # fail fast, before any training, if the store cannot be used
    tracker = Tracker(uri, params.tracking.experiment, artifact_root=local_artifact_root(uri, paths.root))
    version = data_version(paths.shards)
    tags = provenance_tags(source=entry_point(paths.root), git_commit=git_commit(paths.root), data_version=version,
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
                        on_epoch: MemberHook | None = None) -> dict[str, Any]:
    """Train member `index` in its nested run: per-epoch metrics, then its history and summary.

    A retried member gets the nested run of its first attempt back and keeps logging into it; an
    attempt that raises leaves the run FAILED.
    """
    name, tracker = member_name(index), run.tracker
    run_id = tracker.start_member(run.parent, name, params={"member": index}, tags={**run.tags, "member": name})
    _log_shards(run, run_id)

    def after_epoch(row: dict[str, float]) -> None:
        tracker.log_epoch(run_id, row, step=int(row["epoch"]))
        if on_epoch is not None:
            on_epoch(index, row)

    try:
        result = train_member(index, params, prepared_dir=paths.prepared, shards_dir=paths.shards,
                              models_dir=paths.models, history_dir=paths.history,
                              checkpoints_dir=paths.checkpoints, on_epoch=after_epoch)
    except BaseException:
        tracker.best_effort("closing the run as FAILED", run_id, tracker.end, run_id, "FAILED")
        raise
    # The member's files are complete: a store failing now warns and `sync` catches up later.
    files = [Path(result["history"]), Path(result["model"]).parent / SUMMARY_FILE]
    if tracker.best_effort("logging the member's files", run_id, tracker.log_artifacts, run_id, files):
        tracker.best_effort("closing the run", run_id, tracker.end, run_id)
    return {**result, "run_id": run_id}


def finish_ensemble_tracking(run: EnsembleRun, results: Sequence[Mapping[str, Any]], tracking_state: Path) -> None:
    """Close the parent run; write the run ids that the evaluate stage logs its figures into."""
    run.tracker.best_effort("closing the parent run", run.parent, run.tracker.end, run.parent)
    write_tracking_state(tracking_state, uri=run.tracker.uri, experiment=run.tracker.experiment, parent=run.parent,
                         member_runs={r["name"]: r["run_id"] for r in results}, root=run.root)


def member_models(params: Params, models: Path) -> dict[str, Path]:
    """{member name: its exported model file}, in member order."""
    return {member_name(i): models / member_name(i) / MODEL_FILE for i in range(params.ensemble.members)}


def write_reports(member_probs: Mapping[str, Mapping[str, str]], paths: EvalPaths) -> dict[str, Any]:
    """The members' saved val probabilities -> the ensemble's, metrics.json and the report files."""
    labels = torch.from_numpy(ShardSet(paths.shards, VAL).labels)
    names = read_class_names(paths.prepared / CLASSES_FILE)
    return evaluate_ensemble(member_probs, labels, names, reports_dir=paths.reports, metrics_path=paths.metrics)


def log_evaluation(metrics: Mapping[str, Any], params: Params, paths: EvalPaths) -> str:
    """Figures, report files and models into the training's runs; register the ensemble; its version.

    The registered ensemble takes the view its headline figure was measured on, and '@champion'
    moves to it if that figure beats the holder's.
    """
    state = read_tracking_state(paths.tracking_state)  # the store of the project it lies in now
    tracker, parent = Tracker(state["uri"], state["experiment"]), state["parent_run"]
    tracker.log_metrics(parent, {k: v for k, v in metrics.items() if k != "members"})
    reports = [paths.metrics, *(paths.reports / name for name in REPORT_FILES)]
    tracker.log_artifacts(parent, [p for p in reports if p.exists()])
    members = []
    crop = params.model.crop_size
    for name, run_id in state["member_runs"].items():
        tracker.log_metrics(run_id, metrics["members"][name])
        model = load_member(paths.models / name / MODEL_FILE, params, devices=("cpu",))
        members.append(model)
        log_model(tracker, run_id, model, example_batch(crop), name="model")
    view = headline_view(metrics)
    ten = view == TEN_CROP
    uri = log_ensemble(tracker, parent, members, example_batch(crop, views=10 if ten else 0), ten_crop=ten)
    return register(tracker, uri, params.tracking.registered_model, metrics[view]["top1_err"],
                    metric_name=f"{view}.top1_err")
