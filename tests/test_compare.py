"""`python -m alexnet.compare` on a real temporary SQLite store: rows, values and the params
that differ come back as they were logged."""

import math

import pandas as pd
import pytest
from mlflow import MlflowClient

from alexnet.compare import main
from alexnet.config.params import load_params
from alexnet.tracking.compare import compare_table
from alexnet.tracking.lifecycle import experiment_name
from alexnet.tracking.runs import Tracker, provenance_tags
from alexnet.tracking.store import local_artifact_root, resolve_tracking_uri

TAGS = provenance_tags(source="stages/train.py", git_commit="abc123", data_version="v1", dataset="synthetic",
                       devices=["cpu"])


def ensemble_metrics(center: float, ten_crop: float, members: dict[str, float]) -> dict:
    return {
        "center": {"top1_err": center, "top5_err": center / 4},
        "ten_crop": {"top1_err": ten_crop, "top5_err": ten_crop / 4},
        "members": {m: {"center": {"top1_err": e, "top5_err": e / 4}, "ten_crop": {"top1_err": e - 0.02,
                                                                                  "top5_err": e / 5}}
                    for m, e in members.items()},
    }


def log_ensemble(tracker: Tracker, name: str, params: dict, metrics: dict, member_own: bool) -> str:
    parent = tracker.start_parent(name, params, TAGS)
    for i, member in enumerate(metrics["members"]):
        run_id = tracker.start_member(parent, member, {"train.seed": i}, TAGS)
        tracker.log_epoch(run_id, {"epoch": 1, "val_top1_err": 0.9 - i / 10, "train_loss": 2.0}, step=1)
        if member_own:  # else compare falls back to the parent's members.<name>.* figures
            tracker.log_metrics(run_id, metrics["members"][member])
        tracker.end(run_id)
    tracker.log_metrics(parent, metrics)
    tracker.end(parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    uri = resolve_tracking_uri("sqlite:///mlflow.db", root)
    base = {"train": {"lr": 0.01, "epochs": 10}, "model": {"lrn": True}}
    a = Tracker(uri, "exp-a", local_artifact_root(uri, root))
    old = log_ensemble(a, "old", base, ensemble_metrics(0.50, 0.45, {"member-0": 0.55}), member_own=True)
    new = log_ensemble(a, "new", base, ensemble_metrics(0.40, 0.35, {"member-0": 0.45, "member-1": 0.47}),
                       member_own=False)
    b = Tracker(uri, "exp-b", local_artifact_root(uri, root))
    other = log_ensemble(b, "no-lrn", {**base, "model": {"lrn": False}},
                         ensemble_metrics(0.42, 0.38, {"member-0": 0.46}), member_own=True)
    (root / "params.yaml").write_text(f"tracking:\n  uri: {uri}\n  experiment: exp-a\n")
    return {"root": root, "uri": uri, "old": old, "new": new, "other": other}


def test_members_follow_their_ensemble_newest_first(store):
    table = compare_table(MlflowClient(store["uri"]), ["exp-a"])
    assert list(table["run"]) == ["new", "  member-0", "  member-1", "old", "  member-0"]
    assert list(table["role"]) == ["ensemble", "member", "member", "ensemble", "member"]
    assert table.loc[0, "run_id"] == store["new"][:8]
    assert list(table["status"].unique()) == ["FINISHED"]


def test_views_and_members_values_match_what_was_logged(store):
    table = compare_table(MlflowClient(store["uri"]), ["exp-a"]).set_index("run_id")
    new = table.loc[store["new"][:8]]
    assert (new["center.top1_err"], new["ten_crop.top1_err"]) == (0.40, 0.35)
    assert (new["center.top5_err"], new["ten_crop.top5_err"]) == (0.10, 0.0875)
    members = table[table["role"] == "member"].reset_index()
    # new's members had no metrics of their own: read from the parent's members.<name>.*
    assert members.loc[0, "center.top1_err"] == 0.45 and members.loc[1, "center.top1_err"] == 0.47
    assert members.loc[1, "ten_crop.top1_err"] == pytest.approx(0.45)
    assert members.loc[2, "center.top1_err"] == 0.55  # old's member logged its own


def test_only_differing_params_are_columns(store):
    table = compare_table(MlflowClient(store["uri"]), ["exp-a", "exp-b"], last=1, metrics=["val_top1_err"])
    assert list(table["experiment"]) == ["exp-a", "exp-a", "exp-a", "exp-b", "exp-b"]
    assert "model.lrn" in table and "train.seed" in table
    assert "train.lr" not in table and "train.epochs" not in table
    assert list(table["model.lrn"]) == ["True", "True", "True", "False", "False"]
    assert math.isnan(table.loc[0, "val_top1_err"]) and table.loc[2, "val_top1_err"] == pytest.approx(0.8)
    assert pd.isna(table.loc[0, "train.seed"]) and table.loc[2, "train.seed"] == "1"


def test_norm_is_shown_as_the_model_resolves_it(tmp_path):
    """model.norm null (the default) is the LRN of model.lrn: true, not a value that reads "None"."""
    uri = resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    tracker = Tracker(uri, "norms", local_artifact_root(uri, tmp_path))
    models = {"paper": {"lrn": True, "norm": None}, "norm-none": {"lrn": True, "norm": "none"},
              "lrn-off": {"lrn": False, "norm": None}, "bn": {"lrn": True, "norm": "batchnorm"}}
    for name, model in models.items():
        parent = tracker.start_parent(name, {"model": model}, TAGS)
        tracker.end(parent)
    table = compare_table(MlflowClient(uri), ["norms"]).set_index("run")
    assert table.loc[["paper", "norm-none", "lrn-off", "bn"], "model.norm"].tolist() == [
        "lrn", "none", "none", "batchnorm"]


def test_cli_prints_the_table(store, capsys, monkeypatch):
    monkeypatch.chdir(store["root"])
    assert main(["--experiment", "exp-a", "--experiment", "exp-b", "--last", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["experiment", "run", "role", "run_id", "status"]
    assert "center.top1_err" in lines[0] and "ten_crop.top5_err" in lines[0] and "model.lrn" in lines[0]
    assert len(lines) == 1 + 5
    assert "no-lrn" in out and "0.3800" in out and "old" not in out
    # Without --experiment: params.yaml's experiment for its dataset (tracking.experiment, dot, the dataset)
    params = load_params(store["root"] / "params.yaml")
    mine = Tracker(store["uri"], experiment_name(params.tracking, params.data))
    log_ensemble(mine, "this-dataset", {}, ensemble_metrics(0.3, 0.3, {"member-0": 0.3}), member_own=True)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "this-dataset" in out and "old" not in out


def test_cli_names_a_missing_experiment_or_store(store, capsys, tmp_path):
    assert main(["--uri", store["uri"], "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "exp-a" in err
    missing = f"sqlite:///{tmp_path}/none.db"
    assert main(["--uri", missing, "--params", str(tmp_path / "absent.yaml")]) == 2
    assert missing in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
