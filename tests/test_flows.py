"""Prefect flows end to end on a tiny synthetic set, against Prefect's test server and a temporary
MLflow SQLite store: nested runs, retry-and-resume, the ensemble average, the deployment schedule."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness
from tiny import build_tiny_data, tiny_params

from alexnet.evaluate import load_probs
from alexnet.member import FAULT_ENV


@pytest.fixture(scope="module")
def harness():
    # Generous start-up: the test server shares 2 cores with everything else.
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory, harness, data_dirs):
    """A finished train + evaluate of a 2-member ensemble, member 1 failing once after epoch 1."""
    from flows.evaluate_ensemble import evaluate_ensemble
    from flows.train_ensemble import train_ensemble

    root = tmp_path_factory.mktemp("project")
    raw = tiny_params(epochs=2)
    raw["ensemble"] = {"members": 2, "retries": 1}
    raw["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "test-flows"}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    paths = {"params_path": str(root / "params.yaml"), "prepared": str(data_dirs / "prepared"),
             "shards": str(data_dirs / "shards"), "models": str(root / "models"),
             "tracking_state": str(root / "models" / "tracking.json")}
    mp = pytest.MonkeyPatch()
    mp.setenv(FAULT_ENV, "1:1")
    try:
        train_state = train_ensemble(**paths, history=str(root / "history"), checkpoints=str(root / "ckpt"),
                                     return_state=True)
    finally:
        mp.undo()
    metrics = evaluate_ensemble(**paths, reports=str(root / "reports"), metrics_path=str(root / "metrics.json"))
    return {"root": root, "train_state": train_state, "metrics": metrics, "raw": raw}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("flow-data"))


def test_mlflow_holds_a_parent_run_with_nested_member_runs(project):
    state = json.loads((project["root"] / "models" / "tracking.json").read_text())
    client = MlflowClient(state["uri"])
    parent = client.get_run(state["parent_run"])
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.params["ensemble.members"] == "2"
    assert parent.data.tags["devices"] == "cpu"
    assert len(parent.data.tags["data_version"]) >= 8
    assert parent.data.metrics["ensemble.center.top1_err"] == pytest.approx(project["metrics"]["center"]["top1_err"])
    assert set(state["member_runs"]) == {"member-0", "member-1"}
    for name, run_id in state["member_runs"].items():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run_id, "val_top1_err")]
        # member-1 failed once after epoch 1: its retry resumed at epoch 2, so each epoch is logged once.
        assert sorted(steps) == [1, 2], (name, steps)
        assert run.data.metrics["ten_crop.top1_err"] == pytest.approx(
            project["metrics"]["members"][name]["ten_crop"]["top1_err"])


def test_failed_member_was_retried_and_resumed(project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = project["train_state"].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    attempts = sorted(r.run_count for r in runs if r.name.startswith("train-member"))
    assert attempts == [1, 2], attempts
    marker = list((project["root"] / "ckpt").glob("member-1-*.fault-fired"))
    assert len(marker) == 1


def test_ensemble_probabilities_are_the_mean_of_the_members(project):
    pred = project["root"] / "reports" / "predictions"
    for view in ("center", "ten_crop"):
        members = [load_probs(pred / f"member-{i}.{view}.npy") for i in range(2)]
        ensemble = load_probs(pred / f"ensemble.{view}.npy")
        torch.testing.assert_close(ensemble, (members[0] + members[1]) / 2)
        assert np.allclose(ensemble.sum(dim=1).numpy(), 1.0, atol=1e-5)
    on_disk = json.loads((project["root"] / "metrics.json").read_text())
    assert set(on_disk["members"]) == {"member-0", "member-1"}
    for key in ("center", "ten_crop"):
        assert 0.0 <= on_disk[key]["top1_err"] <= on_disk[key]["top5_err"] or on_disk[key]["top5_err"] == 0.0


def test_the_ensemble_is_registered_with_the_champion_alias(project):
    state = json.loads((project["root"] / "models" / "tracking.json").read_text())
    client = MlflowClient(state["uri"])
    version = client.get_model_version_by_alias("alexnet-ensemble", "champion")
    assert float(version.tags["metric_value"]) == pytest.approx(project["metrics"]["ten_crop"]["top1_err"])


def test_pipeline_deployment_carries_its_cron_schedule(harness):
    from prefect.client.orchestration import get_client

    from flows.deploy import NIGHTLY_CRON, deployments

    deployment = deployments(str(Path.cwd()), timezone="UTC")[0]
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert [s.schedule.cron for s in stored.schedules] == [NIGHTLY_CRON]
    assert stored.schedules[0].schedule.timezone == "UTC"
    assert stored.parameters == {"project": str(Path.cwd())}
