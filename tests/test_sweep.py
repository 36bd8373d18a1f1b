"""A sweep as docs/team.md describes it: `dvc exp run --queue -S train.lr=...` twice, then `dvc queue start`.

DVC's queue workers run each experiment in a copy under <project>/.dvc/tmp/exps/ that it deletes
afterwards, without the git-ignored files. Both runs must land in the project's own MLflow store, in
one experiment, as siblings, and both members' checkpoints in the project's checkpoints folder.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alexnet.config.params import parse_params
from alexnet.tracking.lifecycle import experiment_name
from tests.gitproject import commit_project, sh
from tests.tiny import build_tiny_data, sqlite_store, tiny_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUEUE_TIMEOUT_S = 1500.0  # two tiny trainings one after the other, on a busy 2-core machine


def sweep_project(root: Path, data: Path) -> tuple[Path, dict]:
    """A git + DVC project with the real train stage, its checkpoints folder relative and git-ignored."""
    project = root / "project"
    project.mkdir()
    # PREFECT_API_URL stays: the stages use the test session's Prefect server (what is tested is MLflow's store)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost", PATH=f"{BIN}:{env['PATH']}")
    raw = tiny_params(epochs=1)
    raw["tracking"] = {"experiment": "sweep"}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd = (f"{sys.executable} -m stages.train --params params.yaml --prepared {data / 'prepared'} "
           f"--shards {data / 'shards'} --models models --history history --checkpoints checkpoints "
           "--tracking-state models/tracking.json")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": cmd, "params": ["train"], "outs": ["models", {"history": {"cache": False}}]}}}))
    (project / ".gitignore").write_text("mlflow.db\nmlartifacts/\ncheckpoints/\n")
    commit_project(project, env)
    sqlite_store(project)  # the project's own store (no uri in params), ignored by git
    return project, env


def wait_for_queue(project: Path, env: dict) -> str:
    """`dvc queue status` once nothing is queued or running: its last answer."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = sh(project, "dvc", "queue", "status", env=env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"the queue did not finish in {QUEUE_TIMEOUT_S:.0f} s:\n{status}"
        time.sleep(1)


@pytest.mark.slow
def test_a_queued_two_point_sweep_keeps_its_runs_and_checkpoints_in_the_project(tmp_path):
    from mlflow import MlflowClient

    data = build_tiny_data(tmp_path / "data")
    project, env = sweep_project(tmp_path, data)
    for lr in ("0.02", "0.03"):
        sh(project, "dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}", env=env)
    sh(project, "dvc", "queue", "start", env=env)  # one worker: the train stage holds the checkpoints' lock
    try:
        status = wait_for_queue(project, env)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=project, env=env, capture_output=True, timeout=120)
    assert status.count("Success") == 2, status

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    params = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    experiment = client.get_experiment_by_name(experiment_name(params.tracking, params.data))
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.info.run_name == "ensemble-1"]
    assert sorted(r.data.params["train.lr"] for r in parents) == ["0.02", "0.03"]
    assert all("mlflow.parentRunId" not in r.data.tags for r in parents)  # siblings, not one below the other
    members = [r for r in runs if r.info.run_name == "member-0"]
    assert sorted(r.data.tags["mlflow.parentRunId"] for r in members) == sorted(r.info.run_id for r in parents)

    # A member's checkpoint is keyed by everything that decides its weights: one file per point.
    checkpoints = sorted(p.name for p in (project / "checkpoints").glob("member-0-*.pt"))
    assert len(checkpoints) == 2, sorted(p.name for p in (project / "checkpoints").iterdir())
    assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*")), "DVC removes its copies"


def test_a_folder_in_dvcs_copy_resolves_in_the_project_it_copies(tmp_path, monkeypatch):
    from alexnet.tracking.store import in_home_project

    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert in_home_project(Path("checkpoints"))[1] == project / "checkpoints"
    assert in_home_project(copy / "state" / "ckpt")[1] == project / "state" / "ckpt"
    monkeypatch.chdir(project)
    assert in_home_project(Path("checkpoints"))[1] == Path("checkpoints")  # the project itself: as given
