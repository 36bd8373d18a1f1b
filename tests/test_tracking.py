"""MLflow tracking for real on a temporary SQLite store: nested runs, params, tags, histories,
what the MLflow UI reads (experiment kind, source, dataset input), best-effort epoch logging,
fail-fast checks; the registry's champion alias, and models that load back by
`models:/<name>@champion` in a process that cannot import this repo (registry.py)."""

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from torch import nn

from alexnet.config.params import flatten
from alexnet.config.sections import ModelParams, Params
from alexnet.core.processes import free_port
from alexnet.model import network as alexnet_model
from alexnet.tracking.owners import PARENT_TAG
from alexnet.tracking.registry import SoftmaxAverage, champion, log_model, register
from alexnet.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    Tracker,
    flatten_metrics,
    provenance_tags,
)
from alexnet.tracking.store import TrackingUnavailable, check_tracking, local_artifact_root, resolve_tracking_uri

REPO = Path(__file__).resolve().parents[1]
TAGS = provenance_tags(source="stages/train.py", git_commit="abc123", data_version="d41d8cd9", dataset="synthetic",
                       devices=["cpu"])
METRICS = {  # evaluate.ensemble_report's layout
    "center": {"top1_err": 0.40, "top5_err": 0.10},
    "ten_crop": {"top1_err": 0.35, "top5_err": 0.08},
    "ensemble": {"center": {"top1_err": 0.40, "top5_err": 0.10},
                 "ten_crop": {"top1_err": 0.35, "top5_err": 0.08}, "members": 2},
    "members": {"m0": {"center": {"top1_err": 0.45, "top5_err": 0.12}},
                "m1": {"center": {"top1_err": 0.47, "top5_err": 0.13}}},
    "images": 500,
}


def small_net(seed: int, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(4, classes))


def history(offset: float, epochs: int = 3) -> list[dict[str, float]]:
    return [{"epoch": e, "lr": 0.01, "train_loss": 2.0 - 0.1 * e + offset, "train_top1_err": 0.9 - 0.1 * e,
             "val_top1_err": 0.8 - 0.1 * e + offset, "val_top5_err": 0.3, "images_per_s": 100.0 + e}
            for e in range(1, epochs + 1)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating its tables takes seconds."""
    root = tmp_path_factory.mktemp("project")
    return root, resolve_tracking_uri("sqlite:///mlflow.db", root)


def members_of(tracker: Tracker, parent_id: str) -> dict[str, str]:
    """{member name: run id} of the nested runs under `parent_id`."""
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")
    return {r.data.tags.get("member", r.info.run_name): r.info.run_id for r in runs}


@pytest.fixture(scope="module")
def runs(store):
    """A parent run with two members, their epoch histories and final metrics."""
    root, uri = store
    tracker = Tracker(uri, "unit", local_artifact_root(uri, root))
    params = {**flatten(Params()), **{f"extra.k{i}": i for i in range(120)}}  # > 100: several batches
    parent = tracker.start_parent("ensemble-a", params, TAGS)
    members, nets = {}, {}
    for i, name in enumerate(["m0", "m1"]):
        run_id = tracker.start_member(parent, name, {"train.seed": i}, TAGS)
        for row in history(0.01 * i):
            tracker.log_epoch(run_id, row, step=int(row["epoch"]))
        tracker.log_metrics(run_id, {"center": METRICS["members"][name]["center"]})
        members[name], nets[name] = run_id, small_net(i)
        tracker.end(run_id)
    tracker.log_metrics(parent, METRICS)
    tracker.end(parent)
    return {"tracker": tracker, "parent": parent, "members": members, "nets": nets, "params": params}


@pytest.fixture(scope="module")
def ensemble(runs):
    """`runs` with a member's model and the two members' ensemble logged (torch.export: seconds each)."""
    tracker, members, nets = runs["tracker"], runs["members"], runs["nets"]
    example = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    member_uri = log_model(tracker, members["m0"], nets["m0"], example, "model")
    ensemble_uri = log_ensemble(tracker, runs["parent"], list(nets.values()), example)
    return {**runs, "example": example, "member_uri": member_uri, "ensemble_uri": ensemble_uri}


def log_ensemble(tracker, run_id, members, example, name="ensemble", ten_crop=False):
    """The members' averaged softmax as one logged model (what a registry entry of a pt2 ensemble is)."""
    return log_model(tracker, run_id, SoftmaxAverage(members, views=ten_crop), example, name, softmax=False)


def test_uri_env_beats_param_beats_default(tmp_path, monkeypatch):
    # MLflow's convention: the environment wins, so a team (or a sweep's temporary copy) points every
    # run at one store without editing params.yaml; the param is the project's fallback.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///runs/x.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs/x.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://tracking:5000"
    assert resolve_tracking_uri("sqlite:///runs/x.db", tmp_path) == "http://tracking:5000"
    assert local_artifact_root("http://tracking:5000", tmp_path) is None
    assert local_artifact_root("sqlite:////abs/x.db", tmp_path) == tmp_path.resolve() / "mlartifacts"


def test_unreachable_server_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailable) as err:
        check_tracking(uri)
    assert uri in str(err.value)
    assert "MLFLOW_TRACKING_URI" in str(err.value) and "mlflow server" in str(err.value)


def test_sqlite_check_creates_the_folder_and_names_a_bad_one(tmp_path):
    check_tracking(f"sqlite:///{tmp_path}/new/dir/mlflow.db")
    assert (tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/file/mlflow.db"
    with pytest.raises(TrackingUnavailable, match="file/mlflow.db"):
        check_tracking(uri)


def test_parent_params_and_tags(runs):
    client = runs["tracker"].client
    run = client.get_run(runs["parent"])
    assert run.data.params["train.lr"] == "0.01"
    assert run.data.params["model.devices"] == '["cpu"]'
    assert run.data.params["extra.k119"] == "119"
    assert len(run.data.params) == len(runs["params"])
    for key in ("data_version", "dataset", "devices"):
        assert run.data.tags[key] == TAGS[key]
    # MLflow's own keys, which fill the UI's Source and Version columns
    assert run.data.tags["mlflow.source.name"] == "stages/train.py"
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    assert run.data.tags["mlflow.source.git.dirty"] == "false"
    assert run.data.tags["role"] == "ensemble"
    assert run.info.status == "FINISHED"


def test_the_experiment_opens_in_the_model_training_view(runs, store):
    tracker = runs["tracker"]
    assert tracker.client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # An experiment made before the kind was set gets it; one whose kind a user chose keeps it.
    old = tracker.client.create_experiment("made-earlier")
    chosen = tracker.client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    for name, want in (("made-earlier", EXPERIMENT_KIND), ("chosen", "finetuning")):
        exp_id = Tracker(store[1], name).experiment_id
        assert exp_id in (old, chosen)
        assert tracker.client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == want


def test_source_tags_follow_mlflow_for_dirty_and_unknown_checkouts():
    dirty = provenance_tags(source="s", git_commit="abc123-dirty", data_version=None, dataset="d", devices=["cpu"])
    assert dirty["mlflow.source.git.commit"] == "abc123" and dirty["mlflow.source.git.dirty"] == "true"
    assert dirty["data_version"] == "unknown"
    unknown = provenance_tags(source="s", git_commit="unknown", data_version="v", dataset="d", devices=["cpu"])
    assert "mlflow.source.git.commit" not in unknown and "mlflow.source.git.dirty" not in unknown


def test_the_training_data_is_the_runs_dataset_input(runs, tmp_path):
    tracker, run_id = runs["tracker"], runs["members"]["m0"]
    for _ in range(2):  # a retried member logs it again: still one input
        tracker.log_dataset(run_id, name="synthetic", digest="0123456789ab", source=str(tmp_path / "shards"),
                            tags={"dvc_data_version": "f00d.dir"})
    (got,) = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert (got.dataset.name, got.dataset.digest) == ("synthetic", "0123456789ab")
    assert json.loads(got.dataset.source) == {"uri": str(tmp_path / "shards")}
    assert {t.key: t.value for t in got.tags} == {"mlflow.data.context": "training", "dvc_data_version": "f00d.dir"}


def test_metrics_json_is_flattened(runs):
    metrics = runs["tracker"].client.get_run(runs["parent"]).data.metrics
    assert metrics == flatten_metrics(METRICS)
    assert metrics["ensemble.ten_crop.top1_err"] == 0.35
    assert metrics["members.m1.center.top5_err"] == 0.13
    assert metrics["ensemble.members"] == 2


def test_members_are_nested_with_epoch_histories(runs):
    tracker, parent = runs["tracker"], runs["parent"]
    assert members_of(tracker, parent) == runs["members"]
    for i, (name, run_id) in enumerate(runs["members"].items()):
        run = tracker.client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["member"] == name and run.data.tags["mlflow.source.git.commit"] == "abc123"
        assert run.data.params == {"train.seed": str(i)}
        expected = history(0.01 * i)
        for key in ("val_top1_err", "train_loss", "lr", "images_per_s"):
            got = sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))
            assert got == [(int(r["epoch"]), pytest.approx(r[key])) for r in expected]


def test_retried_member_resumes_its_run(runs):
    tracker, parent = runs["tracker"], runs["parent"]
    run_id = runs["members"]["m1"]
    assert tracker.find_member(parent, "m1") == run_id
    assert tracker.find_member(parent, "m9") is None
    again = tracker.start_member(parent, "m1", {"train.seed": 1}, TAGS)
    assert again == run_id
    assert tracker.client.get_run(run_id).info.status == "RUNNING"
    tracker.end(run_id)


def test_tracker_pickles_and_logs_from_threads(runs):
    tracker, parent = runs["tracker"], runs["parent"]
    copy = pickle.loads(pickle.dumps(tracker))
    assert (copy.uri, copy.experiment, copy.experiment_id) == (tracker.uri, tracker.experiment, tracker.experiment_id)
    ids: dict[str, str] = {}

    def member(name: str) -> None:
        t = pickle.loads(pickle.dumps(tracker))
        ids[name] = t.start_member(parent, name, {}, TAGS)
        for row in history(0.0, epochs=4):
            t.log_epoch(ids[name], row, step=int(row["epoch"]))
        t.end(ids[name])

    threads = [threading.Thread(target=member, args=(f"t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, run_id in ids.items():
        assert tracker.find_member(parent, name) == run_id
        assert len(tracker.client.get_metric_history(run_id, "val_top1_err")) == 4


def test_dead_server_mid_training_warns_once_and_does_not_raise(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(uri, "unit")
    with caplog.at_level(logging.WARNING, logger="alexnet.tracking"):
        for row in history(0.0):
            tracker.log_epoch("0123456789abcdef", row, step=int(row["epoch"]))
    warnings = [r for r in caplog.records if r.name == "alexnet.tracking.runs"]
    assert len(warnings) == 1
    assert uri in warnings[0].getMessage() and "log_history" in warnings[0].getMessage()


def test_artifacts_stay_in_the_project_artifact_folder(runs, store, tmp_path, monkeypatch):
    root, _ = store
    tracker, parent = runs["tracker"], runs["parent"]
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "report"
    report.mkdir()
    (report / "per_class.csv").write_text("label,class\n")
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    tracker.log_artifacts(parent, [tmp_path / "metrics.json", report], artifact_path="eval")
    listed = {f.path for f in tracker.client.list_artifacts(parent, "eval")}
    assert listed == {"eval/metrics.json", "eval/report"}
    assert not (tmp_path / "mlruns").exists()
    assert list((root / "mlartifacts" / "unit").rglob("per_class.csv"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        tracker.log_artifacts(parent, [tmp_path / "missing.json"])


@pytest.mark.slow
def test_same_weights_are_not_logged_twice(ensemble):
    tracker, nets, example = ensemble["tracker"], ensemble["nets"], ensemble["example"]
    run_id = ensemble["members"]["m0"]
    assert log_model(tracker, run_id, nets["m0"], example, "model") == ensemble["member_uri"]  # a retry
    # A one-member ensemble is its member: the parent gets the member's model, no second copy.
    assert log_ensemble(tracker, ensemble["parent"], [nets["m0"]], example) == ensemble["member_uri"]
    found = tracker.client.search_logged_models([tracker.experiment_id])
    assert len([m for m in found if m.name in ("model", "ensemble")]) == 2  # the member's and the two-member ensemble's


class PerImageLoop(nn.Module):
    """A forward that loops over the batch in Python: torch.export unrolls it for one batch size."""

    def __init__(self):
        super().__init__()
        self.net = small_net(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i : i + 1]) for i in range(x.shape[0])])


@pytest.mark.slow
def test_a_model_exported_for_one_batch_size_is_refused(ensemble):
    tracker, run_id = ensemble["tracker"], ensemble["members"]["m1"]
    with pytest.raises(ValueError, match="batch size 4 only"):
        log_model(tracker, run_id, PerImageLoop(), ensemble["example"], "looped")
    failed = tracker.client.search_logged_models([tracker.experiment_id], filter_string="name = 'looped'")
    assert [m.status for m in failed] == [LoggedModelStatus.FAILED]  # never reused as "already logged"


@pytest.mark.slow
def test_champion_alias_moves_only_to_a_better_ensemble(ensemble):
    tracker, uri = ensemble["tracker"], ensemble["ensemble_uri"]
    name = "alias-test"
    assert champion(tracker, name) is None

    def holder() -> str:
        return str(champion(tracker, name).version)

    assert register(tracker, uri, name, 0.50) == "1" and holder() == "1"
    assert register(tracker, uri, name, 0.60) == "2" and holder() == "1"
    assert register(tracker, uri, name, 0.40) == "3" and holder() == "3"
    assert register(tracker, uri, name, 0.40) == "4" and holder() == "3"  # a tie keeps the holder
    v3 = tracker.client.get_model_version(name, "3")
    assert v3.tags["metric_value"] == "0.4" and v3.tags["metric_name"] == "ten_crop.top1_err"
    assert v3.run_id == ensemble["parent"]
    higher = "alias-higher"
    register(tracker, uri, higher, 0.7, lower_is_better=False)
    register(tracker, uri, higher, 0.9, lower_is_better=False)
    assert str(champion(tracker, higher).version) == "2"


# Run in a fresh interpreter that cannot import this repo: no PYTHONPATH, cwd elsewhere, the
# editable install's finder and the repo's sys.path entries removed before anything is imported.
NO_REPO = textwrap.dedent("""
    import sys
    repo = sys.argv[1]
    sys.path[:] = [p for p in sys.path if p not in ("", ".", repo)]  # the venv's site-packages stays
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path_importer_cache.clear()
    try:
        import alexnet  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("alexnet is importable: the check would prove nothing")
    import mlflow.pytorch, numpy as np, torch
    folder = sys.argv[2]
    for i, uri in enumerate(sys.argv[3:]):
        model = mlflow.pytorch.load_model(uri)
        x = torch.from_numpy(np.load(f"{folder}/in{i}.npy"))
        np.save(f"{folder}/out{i}.npy", model(x).detach().numpy())
""")


def load_without_repo(tracking_uri: str, model_uris: list[str], inputs: list[torch.Tensor],
                      tmp: Path) -> list[np.ndarray]:
    """Each model's output on its input, computed by a process that cannot import `alexnet`."""
    for i, x in enumerate(inputs):
        np.save(tmp / f"in{i}.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    done = subprocess.run([sys.executable, "-c", NO_REPO, str(REPO), str(tmp), *model_uris],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [np.load(tmp / f"out{i}.npy") for i in range(len(model_uris))]


@pytest.mark.slow
def test_champion_and_member_load_without_the_repo(ensemble, store, tmp_path):
    _, uri = store
    tracker, nets = ensemble["tracker"], ensemble["nets"]
    assert register(tracker, ensemble["ensemble_uri"], "roundtrip", 0.3) == "1"
    views = torch.randn(3, 10, 3, 16, 16)
    ten_crop_uri = log_ensemble(tracker, ensemble["parent"], list(nets.values()), views[:2], "ensemble-ten-crop",
                                ten_crop=True)
    x = torch.randn(7, 3, 16, 16)  # another batch size than the example: the batch dim is dynamic
    champion, member, ten_crop = load_without_repo(
        uri, ["models:/roundtrip@champion", ensemble["member_uri"], ten_crop_uri], [x, x, views], tmp_path)
    with torch.no_grad():
        expected = SoftmaxAverage(list(nets.values())).eval()(x).numpy()
        expected_member = nets["m0"].eval()(x).softmax(dim=1).numpy()
        per_view = SoftmaxAverage(list(nets.values())).eval()(views.flatten(0, 1)).unflatten(0, (3, 10))
    np.testing.assert_allclose(champion, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(member, expected_member, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ten_crop, per_view.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(champion.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_real_alexnet_loads_without_the_repo(request, tmp_path):
    """The paper's net (two towers, §3.3 LRN) at a tiny crop, trained with the fast LRN, served as pt2.

    The fast LRN (a custom autograd.Function) loops over pixel blocks in Python, which torch.export
    fixes to one batch size (log_model refuses that); the copy logged here is built with
    lrn_impl="torch", the same formula with no weights of its own, and must match the fast net.
    """
    model = alexnet_model
    ensemble, store = request.getfixturevalue("ensemble"), request.getfixturevalue("store")
    cfg = ModelParams(crop_size=67, num_classes=5, devices=("cpu",))
    torch.manual_seed(0)
    trained = model.build_model(cfg, 5).eval()
    served = model.build_model(cfg.model_copy(update={"lrn_impl": "torch"}), 5)
    served.load_state_dict(trained.state_dict())
    x = torch.randn(3, 3, 67, 67)
    uri = log_model(ensemble["tracker"], ensemble["members"]["m1"], served, x[:2], "alexnet")
    (loaded,) = load_without_repo(store[1], [uri], [x], tmp_path)
    with torch.no_grad():
        expected = trained(x).float().softmax(dim=1).numpy()
    np.testing.assert_allclose(loaded, expected, rtol=1e-4, atol=1e-6)
