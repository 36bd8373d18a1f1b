"""A train stage told to stop under a real `dvc repro`: it stops at its next step, keeps its checkpoint,
leaves no process, and the next `dvc repro` finishes with the weights of an unbroken run.

Two ways users stop it: a SIGTERM to the whole process group (what `timeout`, CI runners, Slurm and
Kubernetes send; here `timeout` itself is told to stop, which passes the signal on as its expiry does),
and a SIGTERM to `dvc repro` alone, which orphans the stage: it must notice, stop, and never train
beside the `dvc repro` started next, which waits for its lock (alexnet/core/locks.py).
"""

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
from alexnet.core.cli import InputError
from alexnet.core.locks import exclusive
from alexnet.training.member import train_member
from tests.faults.test_kill_model_stages import MARKER, marked, no_leaks
from tests.tiny import build_tiny_data, prefect_home, sqlite_store, tiny_params

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STOPPED_WITHIN_S = 30  # a tiny step takes milliseconds; the rest is the flow reporting its end


def dvc_project(root: Path, data: Path) -> Path:
    prefect_home(root / ".prefect")  # the stage's own server's home (flows/server.py), its database migrated
    raw = tiny_params(epochs=16)  # enough left to interrupt after the first checkpoint
    raw["tracking"] = {"uri": sqlite_store(root), "experiment": "signals"}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd = (f"{sys.executable} -m stages.train --params params.yaml --prepared {data / 'prepared'} "
           f"--shards {data / 'shards'} --models models --history history --checkpoints ckpt "
           "--tracking-state tracking.json")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": cmd, "params": ["train"], "outs": ["models", "history", "tracking.json"]}}}))
    subprocess.run([BIN / "dvc", "init", "-q", "--no-scm"], cwd=root, check=True)
    subprocess.run([BIN / "dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    return root


def repro(project: Path, env: dict, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    with open(project / "repro.log", "ab") as log:
        return subprocess.Popen([*prefix, str(BIN / "dvc"), "repro"], cwd=project, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, project: Path) -> None:
    assert proc.wait(timeout=600) == 0, (project / "repro.log").read_text()[-4000:]


def when_training(project: Path, proc: subprocess.Popen) -> None:
    """Wait until an epoch's checkpoint is written and the stage trains the next one."""
    deadline = time.monotonic() + 300
    while b"wrote checkpoint" not in (project / "repro.log").read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, (project / "repro.log").read_text()[-4000:]
        time.sleep(0.1)


def stopped(token: str, since: float) -> float:
    no_leaks(token)  # waits up to 15 s more
    return time.monotonic() - since


def trainer_pid(token: str) -> int:
    """The stage's own process, not the `sh -c` that DVC may run it in (its command line names the stage too)."""
    return next(pid for pid, cmd in marked(token).items() if cmd.split()[1:3] == ["-m", "stages.train"])


def weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "models" / "member-0" / "model.pt", weights_only=True)["model"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find the stage's processes")
    root = tmp_path_factory.mktemp("signals")
    data = build_tiny_data(root / "data")
    token = uuid.uuid4().hex
    # DVC runs a stage in $SHELL -c: bash execs the stage, dash (/bin/sh, DVC's choice without $SHELL)
    # forks it, so `dvc repro` is the stage's grandparent. The fork is the case to pass.
    env = {**os.environ, MARKER: token, "PYTHONPATH": str(REPO), "SHELL": "/bin/sh"}
    env.pop("PREFECT_API_URL", None)  # as a user runs it: the stage's own temporary server
    # The unbroken run, trained in this process: the stage trains member 0 with the same params and
    # seed to the same weights (tests/test_cluster_ray.py compares the two), in a fraction of the time.
    raw = yaml.safe_load(dvc_project(root / "unbroken", data).joinpath("params.yaml").read_text())
    unbroken = root / "unbroken"
    train_member(0, parse_params(raw), prepared_dir=data / "prepared", shards_dir=data / "shards",
                 models_dir=unbroken / "models", history_dir=unbroken / "history",
                 checkpoints_dir=unbroken / "ckpt", progress=False)
    return root, data, env, token, weights(unbroken)


def test_a_group_sigterm_mid_training_stops_the_stage_and_a_rerun_finishes_the_unbroken_run(setup):
    root, data, env, token, unbroken = setup
    project = dvc_project(root / "timeout", data)
    first = repro(project, env, prefix=("timeout", "-s", "TERM", "600"))
    when_training(project, first)
    with pytest.raises(InputError, match=rf"ckpt: another trainer \(pid {trainer_pid(token)}\) is writing here"):
        with exclusive(project / "ckpt", "trainer"):  # a second trainer is refused while the first trains
            pass
    since = time.monotonic()
    os.kill(first.pid, signal.SIGTERM)  # timeout passes it to dvc and the whole group, as on its expiry
    first.wait(timeout=60)
    took = stopped(token, since)
    log = (project / "repro.log").read_text()
    assert "train: stopped by SIGTERM" in log and "Traceback" not in log, log[-4000:]
    assert took < STOPPED_WITHIN_S, f"the stage and its processes took {took:.0f} s to stop"
    assert not (project / "models" / "member-0" / "model.pt").exists()

    finish(repro(project, env), project)
    assert "resuming from" in (project / "repro.log").read_text()
    assert same(weights(project), unbroken)


def test_sigterm_to_dvc_alone_stops_the_orphaned_stage_and_never_two_trainers(setup):
    root, data, env, token, unbroken = setup
    project = dvc_project(root / "orphan", data)
    first = repro(project, env)
    when_training(project, first)
    orphan = trainer_pid(token)
    since = time.monotonic()
    os.kill(first.pid, signal.SIGTERM)  # dvc alone: its stage is reparented, still training
    first.wait(timeout=60)
    second = repro(project, env)  # at once: it must wait for the orphan to stop, not train beside it
    while orphan in marked(token):
        assert time.monotonic() - since < STOPPED_WITHIN_S, "the orphaned stage is still running"
        time.sleep(0.1)
    finish(second, project)
    log = (project / "repro.log").read_text()
    assert "train: stopped by the loss of its parent process" in log, log[-4000:]
    assert "resuming from" in log
    assert same(weights(project), unbroken)
    stopped(token, since)
