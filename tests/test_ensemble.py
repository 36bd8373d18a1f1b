"""alexnet.pipeline.train without Prefect: the steps the flows run as tasks, called as plain functions on
a tiny synthetic set and a temporary MLflow SQLite store."""

import json
import socket
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alexnet.config.params import parse_params
from alexnet.evaluation.members import predict_member
from alexnet.pipeline.evaluate import log_evaluation, member_models, write_reports
from alexnet.pipeline.paths import EvalPaths, TrainPaths
from alexnet.pipeline.train import finish_ensemble_tracking, start_ensemble_tracking, train_logged_member
from alexnet.tracking.lifecycle import entry_point, experiment_name, registered_name
from alexnet.tracking.store import TrackingUnavailable
from tests.tiny import build_tiny_data, sqlite_store, tiny_params


def paths_in(root: Path, data: Path) -> TrainPaths:
    return TrainPaths(root=root, prepared=data / "prepared", shards=data / "shards", models=root / "models",
                      history=root / "history", checkpoints=root / "ckpt", tracking_state=root / "tracking.json")


def test_a_dead_tracking_server_stops_the_ensemble_before_any_training(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    params = parse_params({"tracking": {"uri": uri}})
    with pytest.raises(TrackingUnavailable, match=uri):
        start_ensemble_tracking(params, paths_in(tmp_path, tmp_path / "no-data"))
    assert list(tmp_path.iterdir()) == []


def test_the_source_is_the_program_relative_to_the_project(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "stages" / "train.py")])
    assert entry_point(tmp_path) == "stages/train.py"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/somewhere/pytest"])
    assert entry_point(tmp_path) == "pytest"


class Fault(RuntimeError):
    pass


@pytest.mark.slow
def test_train_evaluate_register_without_prefect(tmp_path):
    data = build_tiny_data(tmp_path / "data")
    root = tmp_path / "project"
    raw = tiny_params(epochs=2)
    raw["tracking"] = {"uri": sqlite_store(root), "experiment": "no-prefect"}
    params = parse_params(raw)
    paths = paths_in(root, data)

    run = start_ensemble_tracking(params, paths)

    def fail_after_first_epoch(index: int, row: dict) -> None:
        raise Fault(f"member {index} after epoch {row['epoch']}")

    with pytest.raises(Fault):
        train_logged_member(0, params, paths, run, on_epoch=fail_after_first_epoch)
    client = MlflowClient(run.tracker.uri)
    (member_run,) = client.search_runs([run.tracker.experiment_id], "tags.member = 'member-0'")
    assert member_run.info.status == "FAILED"
    result = train_logged_member(0, params, paths, run)  # resumes after epoch 1, in the same run
    assert result["run_id"] == member_run.info.run_id and result["epochs"] == 2
    assert [m.step for m in client.get_metric_history(result["run_id"], "val_top1_err")] == [1, 2]
    finish_ensemble_tracking(run, [result], paths.tracking_state)
    assert json.loads(paths.tracking_state.read_text()) == {  # the store relative to the project
        "uri": "sqlite:///mlflow.db", "project_root": ".", "experiment": experiment_name(params.tracking, params.data),
        "parent_run": run.parent,
        "member_runs": {"member-0": result["run_id"]}}

    evals = EvalPaths(prepared=paths.prepared, shards=paths.shards, models=paths.models, reports=root / "reports",
                      metrics=root / "metrics.json", tracking_state=paths.tracking_state)
    models = member_models(params, paths.models)
    assert models == {"member-0": paths.models / "member-0" / "model.pt"}
    probs = {name: predict_member(path, params, shards_dir=paths.shards, out_dir=evals.predictions, progress=False)
             for name, path in models.items()}
    metrics = write_reports(probs, evals)
    assert json.loads(evals.metrics.read_text()) == json.loads(json.dumps(metrics))
    assert log_evaluation(metrics, params, evals) == "1"
    champion = client.get_model_version_by_alias(registered_name(params.tracking, params.data), "champion")
    assert str(champion.version) == "1" and champion.tags["metric_name"] == "ten_crop.top1_err"
    assert float(champion.tags["metric_value"]) == pytest.approx(metrics["ten_crop"]["top1_err"])
    parent = client.get_run(run.parent)
    assert parent.data.metrics["ten_crop.top1_err"] == pytest.approx(metrics["ten_crop"]["top1_err"])
    assert {f.path for f in client.list_artifacts(run.parent)} >= {"metrics.json", "per_class.csv", "confusion.png"}


@pytest.mark.slow
def test_each_dataset_keeps_its_own_champion(tmp_path):
    from alexnet.data.prepare import prepare
    from alexnet.data.preprocess import preprocess
    from alexnet.pipeline.evaluate import evaluate_ensemble
    from alexnet.pipeline.train import train_ensemble

    root = tmp_path / "project"

    def train_and_evaluate(seed: int, epochs: int, tag: str) -> tuple[str, float, str]:
        raw = tiny_params(epochs=epochs)
        raw["data"]["synthetic"]["seed"] = seed  # another synthetic dataset: another champion
        raw["tracking"] = {"uri": sqlite_store(root)}
        params = parse_params(raw)
        data = tmp_path / f"data-{seed}"
        if not (data / "shards").is_dir():
            prepare(data / "prepared", params.data, workers=1, progress=False)
            preprocess(data / "prepared", data / "shards", params.preprocess, progress=False)
        paths = TrainPaths(root=root, prepared=data / "prepared", shards=data / "shards", models=root / f"models-{tag}",
                           history=root / f"history-{tag}", checkpoints=root / "checkpoints",
                           tracking_state=root / f"models-{tag}" / "tracking.json")
        train_ensemble(params, paths)  # the sequences without Prefect
        evals = EvalPaths(prepared=paths.prepared, shards=paths.shards, models=paths.models,
                          reports=root / f"reports-{tag}", metrics=root / f"metrics-{tag}.json",
                          tracking_state=paths.tracking_state)
        metrics, version = evaluate_ensemble(params, evals)
        return registered_name(params.tracking, params.data), metrics["ten_crop"]["top1_err"], version

    a, a1, _ = train_and_evaluate(1, 1, "a1")
    b, b1, _ = train_and_evaluate(2, 2, "b1")
    assert a != b  # one registered model, and one '@champion', per dataset
    _, a2, version = train_and_evaluate(1, 3, "a2")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    best_a = "1" if a1 <= a2 else "2"  # a tie keeps the earlier holder
    assert (version, str(client.get_model_version_by_alias(a, "champion").version)) == ("2", best_a)
    champion_b = client.get_model_version_by_alias(b, "champion")
    assert str(champion_b.version) == "1" and float(champion_b.tags["metric_value"]) == pytest.approx(b1)
    assert champion_b.description.startswith("AlexNet ensemble of 1 member(s) trained on synthetic")
