"""kill -9 of the train or the evaluate stage mid-work, then a rerun: the outputs of an unbroken run, and
no process of the killed stage left behind (the data stages: test_kill_data_stages.py).

The stage is killed alone, not its process group (as the OOM killer or `kill -9 <pid>` does). Every
process it starts inherits a marker in its environment; after the kill none may carry it.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from alexnet.config.params import parse_params
from alexnet.pipeline.evaluate import member_models, predict_member_files, write_reports
from alexnet.pipeline.paths import EvalPaths
from alexnet.training.member import train_member
from tests.procs import alive, command_line
from tests.tiny import build_tiny_data, prefect_home, sqlite_store, tiny_params

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MARKER = "ALEXNET_LEAK_TEST"


def marked(token: str) -> dict[int, str]:
    """{pid: command line} of every live process whose environment carries MARKER=token."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            if f"{MARKER}={token}".encode() in environ and alive(proc.name):
                found[int(proc.name)] = command_line(int(proc.name))
        except OSError:
            continue
    return found


def stage_command(name: str, project: Path, data: Path) -> list[str]:
    common = ["--params", str(project / "params.yaml"), "--prepared", str(data / "prepared"),
              "--shards", str(data / "shards"), "--models", str(project / "models"),
              "--tracking-state", str(project / "models" / "tracking.json")]
    if name == "train":
        return [sys.executable, "-m", "stages.train", *common, "--history", str(project / "history"),
                "--checkpoints", str(project / "ckpt")]
    if name == "study":  # the study prepares its own data from the study file's base params
        return [sys.executable, "-m", "stages.study", "--study", str(project / "study.yaml"),
                "--work", str(project / "work"), "--out", str(project / "out")]
    return [sys.executable, "-m", "stages.evaluate", *common, "--reports", str(project / "reports"),
            "--metrics", str(project / "metrics.json")]


def run(name: str, project: Path, data: Path, env: dict, kill_when=None, token: str = "", cwd: Path = REPO) -> None:
    """Run a stage to the end, or SIGKILL its process alone once `kill_when()` holds."""
    log = project / f"{name}.log"
    with open(log, "ab") as out:
        stage = subprocess.Popen(stage_command(name, project, data), cwd=cwd, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while stage.poll() is None and not (kill_when and kill_when()):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        if stage.poll() is None:
            # Something to check: the stage has started a process of its own (Prefect's server, workers).
            assert len(marked(token)) >= 2, "the stage started no process: nothing to check"
            os.kill(stage.pid, signal.SIGKILL)  # the stage alone, as the OOM killer does
            stage.wait()
            assert kill_when, log.read_text()[-3000:]
        else:
            assert stage.returncode == 0 and not kill_when, log.read_text()[-3000:]
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)


def no_leaks(token: str) -> None:
    deadline = time.monotonic() + 15
    while (left := marked(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # so that a failure does not outlive the test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the killed stage: {left}"


def weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "models" / "member-0" / "model.pt", weights_only=True)["model"]


def figures(project: Path) -> dict:
    return json.loads((project / "metrics.json").read_text())


def unbroken_run(project: Path, data: Path) -> None:
    """The reference, trained and evaluated in this process by the library functions the stages run (the
    stage trains member 0 with the same params and seed to the same weights: tests/faults/test_signals.py
    compares the two); its metrics.json is the evaluate stage's file, without the MLflow logging."""
    params = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    train_member(0, params, prepared_dir=data / "prepared", shards_dir=data / "shards",
                 models_dir=project / "models", history_dir=project / "history", checkpoints_dir=project / "ckpt",
                 progress=False)
    paths = EvalPaths(prepared=data / "prepared", shards=data / "shards", models=project / "models",
                      reports=project / "reports", metrics=project / "metrics.json",
                      tracking_state=project / "models" / "tracking.json")
    models = member_models(params, paths.models)
    write_reports({name: predict_member_files(path, params, paths) for name, path in models.items()}, paths)


def test_train_and_evaluate_killed_mid_work_rerun_to_the_unbroken_outputs(tmp_path):
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find the stage's processes")
    data = build_tiny_data(tmp_path / "data")
    token = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), MARKER: token}
    env.pop("PREFECT_API_URL", None)  # as a user runs it: the stage's own temporary server, one process to check
    projects = {}
    for name in ("unbroken", "killed"):
        project = projects[name] = tmp_path / name
        project.mkdir()
        raw = tiny_params(epochs=3)
        raw["tracking"] = {"uri": sqlite_store(project), "experiment": "kill"}
        (project / "params.yaml").write_text(yaml.safe_dump(raw))

    a, b = projects["unbroken"], projects["killed"]
    unbroken_run(a, data)

    # Killed once epoch 1's checkpoint is written, during epoch 2: the rerun resumes from it.
    run("train", b, data, env, kill_when=lambda: b"wrote checkpoint" in (b / "train.log").read_bytes(),
        token=token)
    no_leaks(token)
    assert not (b / "models" / "member-0" / "model.pt").exists()
    run("train", b, data, env)
    assert b"resuming from" in (b / "train.log").read_bytes()
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    predictions = b / "reports" / "predictions"
    run("evaluate", b, data, env, kill_when=lambda: predictions.is_dir() and any(predictions.iterdir()),
        token=token)
    no_leaks(token)
    assert not (b / "metrics.json").exists()
    run("evaluate", b, data, env)
    assert figures(b) == figures(a)


def test_a_killed_study_stage_leaves_no_process(tmp_path):
    """The study stage runs its flow on a Prefect server too: killed mid-run, nothing of it may stay."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find the stage's processes")
    token = uuid.uuid4().hex
    env = {**os.environ, MARKER: token, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    raw = tiny_params(epochs=50)  # far longer than the test waits
    raw["tracking"] = {"uri": sqlite_store(tmp_path), "experiment": "kill-study"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    prefect_home(tmp_path / ".prefect")  # the stage's own server's home (flows/server.py), its database migrated
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(
        {"name": "kill", "base": str(tmp_path / "base.yaml"), "seeds": [0], "variants": {"baseline": {}}}))
    # Killed once a run has written a checkpoint: the flow is under way on the stage's server. The
    # project is the working directory, as under `dvc repro study/dvc.yaml` (wdir: the project).
    log = tmp_path / "study.log"
    run("study", tmp_path, tmp_path, env, kill_when=lambda: b"wrote checkpoint" in log.read_bytes(), token=token,
        cwd=tmp_path)
    no_leaks(token)
