"""`dvc exp run --temp` trains in a copy under <project>/.dvc/tmp/exps/ that DVC deletes afterwards:
the runs and the registered version must land in the project's own store, not the copy's."""

import os
import sys
from pathlib import Path

import pytest
import yaml

from alexnet.tracking.store import home_project, resolve_tracking_uri
from tests.gitproject import commit_project, sh
from tests.tiny import build_tiny_data, sqlite_store, tiny_params

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_a_temporary_copy_resolves_local_stores_against_its_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    assert home_project(copy) == tmp_path / "project" and home_project(tmp_path) == tmp_path
    assert resolve_tracking_uri(None, copy) == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///runs/db.sqlite", copy) == f"sqlite:///{tmp_path / 'project/runs/db.sqlite'}"


@pytest.mark.slow
def test_dvc_exp_run_temp_keeps_its_runs_and_registered_version(tmp_path):
    from mlflow import MlflowClient

    data = build_tiny_data(tmp_path / "data")
    project = tmp_path / "project"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost", PATH=f"{BIN}:{env['PATH']}")
    env.pop("PREFECT_API_URL", None)
    raw = tiny_params(epochs=1)
    raw["tracking"] = {"experiment": "temp"}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    common = (f"--params params.yaml --prepared {data / 'prepared'} --shards {data / 'shards'} --models models "
              "--tracking-state models/tracking.json")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": f"{sys.executable} -m stages.train {common} --history history --checkpoints ckpt",
                  "params": ["train"], "outs": ["models", "history"]},
        "evaluate": {"cmd": f"{sys.executable} -m stages.evaluate {common} --reports reports --metrics metrics.json",
                     "deps": ["models"], "outs": ["reports"], "metrics": [{"metrics.json": {"cache": False}}]}}}))
    (project / ".gitignore").write_text("mlflow.db\nmlartifacts/\nckpt/\n")
    commit_project(project, env)
    sqlite_store(project)  # the project's own store (no uri in params), ignored by git

    sh(project, "dvc", "exp", "run", "--temp", "-S", "train.lr=0.02", env=env)

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert sorted(r.info.run_name for r in runs) == ["ensemble-1", "member-0"]
    assert {r.data.params.get("train.lr") for r in runs if r.info.run_name == "ensemble-1"} == {"0.02"}
    versions = [v for m in client.search_registered_models() for v in client.search_model_versions(f"name='{m.name}'")]
    assert len(versions) == 1 and (project / "mlartifacts").is_dir()
