"""A stage killed with SIGKILL (the OOM killer, `kill -9 <pid>`) leaves no process it started behind.

The stage runs in its own session with a marker in its environment, which every process it starts
inherits; after killing the stage's pid alone (not its group), no process may carry the marker.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.tiny import build_tiny_data, tiny_params

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
            if f"{MARKER}={token}".encode() in environ:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; only its parent's wait is missing
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def test_sigkill_of_the_train_stage_leaves_no_process(tmp_path):
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find the stage's processes")
    data = build_tiny_data(tmp_path / "data")
    raw = tiny_params(epochs=200)  # still training when killed
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "leaks"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    token = uuid.uuid4().hex
    env = {**os.environ, MARKER: token, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # as a user runs it: Prefect's temporary server
    log = tmp_path / "stage.log"
    with open(log, "wb") as out:
        stage = subprocess.Popen(
            [sys.executable, "-m", "stages.train", "--params", str(tmp_path / "params.yaml"),
             "--prepared", str(data / "prepared"), "--shards", str(data / "shards"),
             "--models", str(tmp_path / "models"), "--history", str(tmp_path / "history"),
             "--checkpoints", str(tmp_path / "ckpt"),
             "--tracking-state", str(tmp_path / "models" / "tracking.json")],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while b"member-0 epoch 1:" not in log.read_bytes():  # an epoch is done: training is under way
            assert stage.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert len(marked(token)) >= 2, "the stage started no server process: nothing to check"
        os.kill(stage.pid, signal.SIGKILL)  # the stage alone, as the OOM killer does
        stage.wait()
        deadline = time.monotonic() + 15
        while (left := marked(token)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes outlived the killed stage: {left}"
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
        for pid in marked(token):  # whatever leaked, so it does not outlive the test either
            os.kill(pid, signal.SIGKILL)
