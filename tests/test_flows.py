"""Prefect flows end to end on a tiny synthetic set, against Prefect's test server and a temporary
MLflow SQLite store: nested runs, retry-and-resume, the ensemble average, the deployment schedule.
Every test here waits for the module's flows (a minute or more): all are marked slow."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from alexnet.config.params import parse_params
from alexnet.data.shards import ShardSet, data_version
from alexnet.evaluation.reports import load_probs
from alexnet.pipeline.paths import EvalPaths, TrainPaths
from alexnet.tracking.lifecycle import registered_name
from alexnet.tracking.state import read_tracking_state
from alexnet.training.metrics import topk_errs
from tests.tiny import build_tiny_data, sqlite_store, tiny_params

pytestmark = pytest.mark.slow


class InjectedFault(RuntimeError):
    """The fault a test injects into one member's training."""


def fail_once(member: int, epoch: int):
    """An on_epoch hook that makes `member` fail once, right after `epoch`'s checkpoint is written."""
    fired: list[int] = []

    def hook(index: int, row: dict[str, float]) -> None:
        if (index, int(row["epoch"])) == (member, epoch) and not fired:
            fired.append(index)
            raise InjectedFault(f"member {index} fails once after epoch {epoch}")

    hook.fired = fired
    return hook


@pytest.fixture(scope="module")
def harness():
    # Generous start-up: the test server shares 2 cores with everything else.
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory, harness, data_dirs):
    """A finished train + evaluate of a 2-member ensemble, member 1 failing once after epoch 1."""
    from flows.evaluate_ensemble import evaluate_ensemble_flow
    from flows.train_ensemble import run_train_flow

    root = tmp_path_factory.mktemp("project")
    raw = tiny_params(epochs=2)
    raw["ensemble"] = {"members": 2, "retries": 1}
    raw["tracking"] = {"uri": sqlite_store(root), "experiment": "test-flows"}
    params = parse_params(raw)
    common = {"prepared": data_dirs / "prepared", "shards": data_dirs / "shards", "models": root / "models",
              "tracking_state": root / "models" / "tracking.json"}
    fault = fail_once(member=1, epoch=1)
    train_state = run_train_flow(params, TrainPaths(root=root, history=root / "history", checkpoints=root / "ckpt",
                                                    **common), on_epoch=fault, return_state=True)
    metrics = evaluate_ensemble_flow(params, EvalPaths(reports=root / "reports", metrics=root / "metrics.json",
                                                       **common))
    return {"root": root, "train_state": train_state, "metrics": metrics, "fault": fault,
            "shards": data_dirs / "shards", "params": params}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("flow-data"))


def test_mlflow_holds_a_parent_run_with_nested_member_runs(project):
    state = read_tracking_state(project["root"] / "models" / "tracking.json")
    client = MlflowClient(state["uri"])
    parent = client.get_run(state["parent_run"])
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.params["ensemble.members"] == "2"
    assert parent.data.tags["devices"] == "cpu"
    assert parent.data.tags["data_version"] == data_version(project["shards"])
    client_exp = client.get_experiment(parent.info.experiment_id)
    assert client_exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.metrics["ensemble.center.top1_err"] == pytest.approx(project["metrics"]["center"]["top1_err"])
    assert set(state["member_runs"]) == {"member-0", "member-1"}
    for name, run_id in state["member_runs"].items():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"]
        steps = [m.step for m in client.get_metric_history(run_id, "val_top1_err")]
        # member-1 failed once after epoch 1: its retry resumed at epoch 2, so each epoch is logged once.
        assert sorted(steps) == [1, 2], (name, steps)
        assert run.data.metrics["ten_crop.top1_err"] == pytest.approx(
            project["metrics"]["members"][name]["ten_crop"]["top1_err"])


def test_every_run_names_the_shards_it_trained_on(project):
    state = read_tracking_state(project["root"] / "models" / "tracking.json")
    client = MlflowClient(state["uri"])
    for run_id in [state["parent_run"], *state["member_runs"].values()]:
        # one input each, also for member-1, whose retry logged it a second time
        (got,) = client.get_run(run_id).inputs.dataset_inputs
        assert got.dataset.name == "synthetic"
        assert got.dataset.digest == data_version(project["shards"])
        assert json.loads(got.dataset.source)["uri"] == str(project["shards"].resolve())
        assert {t.key: t.value for t in got.tags}["mlflow.data.context"] == "training"


def test_failed_member_was_retried_and_resumed(project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = project["train_state"].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    attempts = {r.name: r.run_count for r in runs if r.name.startswith("train-member")}
    assert attempts == {"train-member-0": 1, "train-member-1": 2}, attempts
    assert project["fault"].fired == [1]


def test_the_flow_run_shows_the_params_it_was_given(project):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(project["train_state"].state_details.flow_run_id)
    shown = flow_run.parameters
    assert shown["params"]["train"]["epochs"] == 2 and shown["params"]["ensemble"]["members"] == 2
    assert shown["params"]["model"]["devices"] == ["cpu"]
    assert shown["paths"]["shards"] == str(project["shards"])


def test_ensemble_probabilities_are_the_mean_of_the_members(project):
    pred = project["root"] / "reports" / "predictions"
    for view in ("center", "ten_crop"):
        members = [load_probs(pred / f"member-{i}.{view}.npy") for i in range(2)]
        ensemble = load_probs(pred / f"ensemble.{view}.npy")
        torch.testing.assert_close(ensemble, (members[0] + members[1]) / 2)
        assert np.allclose(ensemble.sum(dim=1).numpy(), 1.0, atol=1e-5)
    on_disk = json.loads((project["root"] / "metrics.json").read_text())
    assert set(on_disk["members"]) == {"member-0", "member-1"}
    labels = torch.from_numpy(ShardSet(project["shards"], "val").labels)
    for view in ("center", "ten_crop"):
        # the figures are those of the saved ensemble probabilities
        expected = topk_errs(load_probs(pred / f"ensemble.{view}.npy"), labels)
        assert on_disk[view] == pytest.approx(expected)
        assert 0.0 <= on_disk[view]["top5_err"] <= on_disk[view]["top1_err"] <= 1.0
        for name in ("member-0", "member-1"):
            member = topk_errs(load_probs(pred / f"{name}.{view}.npy"), labels)
            assert on_disk["members"][name][view] == pytest.approx(member)


def test_the_ensemble_is_registered_with_the_champion_alias(project):
    state = read_tracking_state(project["root"] / "models" / "tracking.json")
    client = MlflowClient(state["uri"])
    version = client.get_model_version_by_alias(registered_name(project["params"].tracking, project["params"].data),
                                                "champion")
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
    assert stored.global_concurrency_limit.limit == 1 and stored.concurrency_options.collision_strategy == "ENQUEUE"
