"""Prefect flow: train the ensemble's members (§6), each a retried task that resumes.

Tasks pass file paths, never tensors. A member whose task fails is retried and resumes from its
last checkpoint; a member that already finished is not trained again (its checkpoint says so).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from alexnet.atomic import atomic_write_json
from alexnet.config import Params, flatten, load_params
from alexnet.member import member_name, train_member
from alexnet.provenance import dvc_lock_version, git_commit
from alexnet.shards import data_version
from alexnet.tracking import Tracker, check_tracking, provenance_tags, resolve_tracking_uri
from flows.waves import run_in_waves


@task(name="train-member", cache_policy=NO_CACHE)
def train_member_task(index: int, params: Params, paths: dict[str, str], tracker: Tracker, parent_run: str) -> dict:
    logger = get_run_logger()
    name = member_name(index)
    # A retry gets the nested run of its first attempt back and keeps logging into it.
    run_id = tracker.start_member(parent_run, name, params={"member": index}, tags={"member": name})
    logger.info("training %s", name)
    try:
        result = train_member(
            index, params,
            prepared_dir=Path(paths["prepared"]), shards_dir=Path(paths["shards"]),
            models_dir=Path(paths["models"]), history_dir=Path(paths["history"]),
            checkpoints_dir=Path(paths["checkpoints"]),
            on_epoch=lambda row: tracker.log_epoch(run_id, row, step=int(row["epoch"])),
        )
    except BaseException:
        tracker.end(run_id, status="FAILED")
        raise
    tracker.log_artifacts(run_id, [Path(result["history"]), Path(result["model"]).parent / "summary.json"])
    tracker.end(run_id)
    return {**result, "run_id": run_id}


@flow(name="train-ensemble")
def train_ensemble(
    params_path: str,
    prepared: str,
    shards: str,
    models: str,
    history: str,
    checkpoints: str,
    tracking_state: str,
) -> list[dict]:
    """Train `ensemble.members` networks that differ only in seed; log them to MLflow."""
    logger = get_run_logger()
    params = load_params(params_path)
    paths = {"prepared": prepared, "shards": shards, "models": models, "history": history,
             "checkpoints": checkpoints}
    tracker, parent = _start_tracking(params, Path(params_path).resolve().parent, shards)
    members = params.ensemble.members
    task_fn = train_member_task.with_options(retries=params.ensemble.retries, retry_delay_seconds=1)
    # Threads (the default task runner) suffice: the heavy work is in torch kernels, which release the GIL.
    results = run_in_waves(task_fn, [(i, params, paths, tracker, parent) for i in range(members)],
                           params.ensemble.concurrency)
    for r in results:
        logger.info("%s: val top-1 err %.4f after %d epochs", r["name"], r["final"]["val_top1_err"], r["epochs"])
    tracker.end(parent)
    # The evaluate stage logs its figures into these same runs.
    atomic_write_json(tracking_state, {
        "uri": tracker.uri, "experiment": params.tracking.experiment, "parent_run": parent,
        "member_runs": {r["name"]: r["run_id"] for r in results},
    })
    return results


def _start_tracking(params: Params, root: Path, shards: str) -> tuple[Tracker, str]:
    uri = resolve_tracking_uri(params.tracking.uri, root)
    check_tracking(uri)  # fail fast, before any training, if the server is down
    tracker = Tracker(uri, params.tracking.experiment, artifact_root=root / "mlartifacts")
    tags = {
        **provenance_tags(
            git_commit=git_commit(root), data_version=data_version(Path(shards)),
            dataset=params.data.source if params.data.root is None else f"{params.data.source}:{params.data.root}",
            devices=params.model.devices,
        ),
        "dvc_data_version": dvc_lock_version("preprocess", root / "dvc.lock") or "unknown",
        "members": str(params.ensemble.members),
    }
    parent = tracker.start_parent(f"ensemble-{params.ensemble.members}", params=flatten(params), tags=tags)
    return tracker, parent
