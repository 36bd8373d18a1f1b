"""Tracking through trouble, on a real SQLite store: a locked database before and during training,
a store that comes back (sync re-logs without duplicates), a killed stage's parent run, a copied project."""

import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from alexnet.config.params import parse_params
from alexnet.evaluation.members import predict_member
from alexnet.pipeline.evaluate import log_evaluation, member_models, write_reports
from alexnet.pipeline.paths import EvalPaths, TrainPaths
from alexnet.pipeline.train import finish_ensemble_tracking, start_ensemble_tracking, train_logged_member
from alexnet.tracking.lifecycle import registered_name
from alexnet.tracking.runs import Tracker
from alexnet.tracking.store import TrackingUnavailable
from tests.tiny import tiny_params


def paths_in(root: Path, data: Path) -> TrainPaths:
    return TrainPaths(root=root, prepared=data / "prepared", shards=data / "shards", models=root / "models",
                      history=root / "reports" / "train", checkpoints=root / "checkpoints",
                      tracking_state=root / "models" / "tracking.json")


def params_of(epochs: int, experiment: str):
    raw = tiny_params(epochs=epochs)
    raw["tracking"] = {"experiment": experiment}  # no uri: the project's own sqlite:///mlflow.db
    return parse_params(raw)


def lock(db: Path) -> sqlite3.Connection:
    """Another connection holding the database's exclusive lock (as an open `sqlite3` shell can)."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    return con


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_locked_database_stops_training_before_it_starts_naming_the_store(data, tmp_path):
    root = tmp_path / "project"
    params = params_of(1, "locked")
    assert Tracker(f"sqlite:///{root / 'mlflow.db'}", "locked").experiment_id  # the store exists
    con = lock(root / "mlflow.db")
    try:
        with pytest.raises(TrackingUnavailable, match=f"{root / 'mlflow.db'}.*locked"):
            start_ensemble_tracking(params, paths_in(root, data))
    finally:
        con.close()
    assert not (root / "models").exists() and not (root / "checkpoints").exists()


@pytest.mark.slow
def test_a_lock_during_training_warns_and_the_member_finishes_then_sync_relogs_once(data, tmp_path, caplog):
    from alexnet.tracking.__main__ import main as tracking_main

    root = tmp_path / "project"
    params, paths = params_of(2, "outage"), paths_in(root, data)
    run = start_ensemble_tracking(params, paths)
    held: list[sqlite3.Connection] = []

    def lock_for_epoch_two(index: int, row: dict) -> None:
        # Held from epoch 1's end until epoch 2's figures have met it (MLflow waits out its 20 s busy
        # timeout on each call that meets a lock, so the member's end is left unlocked).
        if int(row["epoch"]) == 1:
            held.append(lock(root / "mlflow.db"))
        elif held:
            held.pop().close()

    with caplog.at_level(logging.WARNING, logger="alexnet"):
        result = train_logged_member(0, params, paths, run, on_epoch=lock_for_epoch_two)
    assert not held  # epoch 2 happened, and met the lock
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("alexnet.tracking")]
    assert result["epochs"] == 2 and Path(result["model"]).exists()
    assert len([w for w in warnings if "per-epoch logging" in w]) == 1
    assert all("\n" not in w and "locked" in w for w in warnings), warnings
    finish_ensemble_tracking(run, [result], paths.tracking_state)

    client = MlflowClient(run.tracker.uri)
    member = result["run_id"]
    assert [m.step for m in client.get_metric_history(member, "val_top1_err")] == [1]  # epoch 2 was missed
    assert client.get_run(member).info.status == "FINISHED"  # its end met no lock

    argv = ["sync", "--models", str(paths.models), "--history", str(paths.history),
            "--tracking-state", str(paths.tracking_state)]
    assert tracking_main(argv) == 0
    for key in ("train_loss", "val_top1_err", "lr"):
        assert [m.step for m in client.get_metric_history(member, key)] == [1, 2]
    assert client.get_run(member).info.status == "FINISHED"
    assert client.get_run(run.parent).info.status == "FINISHED"
    again = subprocess.run([sys.executable, "-m", "alexnet.tracking", *argv], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert again.returncode == 0, again.stderr
    assert "member-0: 0 metric value(s) logged" in again.stdout  # idempotent: a second sync adds no step
    assert [m.step for m in client.get_metric_history(member, "val_top1_err")] == [1, 2]


_KILLED_STAGE = """
import os, signal, sys
from alexnet.tracking.runs import Tracker
tracker = Tracker(sys.argv[1], "killed")
parent = tracker.start_parent("ensemble-1", params={}, tags={})
member = tracker.start_member(parent, "member-0", params={}, tags={})
print(parent, member, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_parent_left_running_by_a_killed_stage_is_ended_on_the_next_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-c", _KILLED_STAGE, uri], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    dead_parent, dead_member = done.stdout.split()
    tracker = Tracker(uri, "killed")
    client = MlflowClient(uri)
    assert client.get_run(dead_parent).info.status == "RUNNING"
    alive = tracker.start_parent("ensemble-1", params={}, tags={})  # this process: alive
    again = tracker.start_parent("ensemble-1", params={}, tags={})  # the next run
    assert client.get_run(dead_parent).info.status == "KILLED"
    assert client.get_run(dead_member).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"  # its stage still runs: left alone
    assert again != alive


@pytest.mark.slow
def test_evaluate_in_a_copied_project_logs_into_the_copys_store(data, tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    params, paths = params_of(1, "copied"), paths_in(original, data)
    run = start_ensemble_tracking(params, paths)
    result = train_logged_member(0, params, paths, run)
    finish_ensemble_tracking(run, [result], paths.tracking_state)
    assert json.loads(paths.tracking_state.read_text())["uri"] == "sqlite:///mlflow.db"
    shutil.copytree(original, copy)
    before = sha256(original / "mlflow.db")

    evals = EvalPaths(prepared=data / "prepared", shards=data / "shards", models=copy / "models",
                      reports=copy / "reports" / "eval", metrics=copy / "reports" / "metrics.json",
                      tracking_state=copy / "models" / "tracking.json")
    probs = {name: predict_member(path, params, shards_dir=evals.shards, out_dir=evals.predictions, progress=False)
             for name, path in member_models(params, evals.models).items()}
    metrics = write_reports(probs, evals)
    log_evaluation(metrics, params, evals)

    assert sha256(original / "mlflow.db") == before
    copied = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    assert "center.top1_err" in copied.get_run(run.parent).data.metrics
    champion = copied.get_model_version_by_alias(registered_name(params.tracking, params.data), "champion")
    assert str(champion.version) == "1"
