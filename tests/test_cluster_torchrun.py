"""One member's DDP replicas on two network hosts: torchrun on each, a c10d rendezvous on the head's
address, gloo between them, `[cpu, cpu]` replicas (docs/scale-out.md, "Tested on one machine").

The two hosts train as one process does (within tests/test_ddp.py's tolerance), and a rank killed
on one host makes both torchruns restart the group (`--max-restarts 1`), which resumes from the
last checkpoint and ends bit-identical to the unbroken two-host run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from cluster import cluster_of
from cluster.docs import command
from cluster.projects import FAULTS, wait_for_file
from test_ddp import ATOL, RTOL

from alexnet.config.params import parse_params
from alexnet.core.layout import MODEL_FILE, member_name
from alexnet.training.checkpoint import load_checkpoint
from alexnet.training.member import train_member
from tests.tiny import tiny_params

pytestmark = pytest.mark.cluster
EPOCHS = 3
STEPS_PER_EPOCH = 6  # tiny_params: 48 training images, batches of 8


def _raw() -> dict:
    raw = tiny_params(epochs=EPOCHS)  # train.replicas 1: one rank per node, world size 2
    raw["model"] = {**raw["model"], "dropout": 0.0, "devices": ["cpu", "cpu"]}
    return raw


def _project(folder: Path, data: Path, **train) -> Path:
    folder.mkdir(parents=True)
    raw = _raw()
    raw["train"] |= train
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    (folder / "data").symlink_to(data, target_is_directory=True)
    return folder


def _two_nodes(hosts, project: Path, head_ip: str, fault: dict | None = None) -> dict[str, str]:
    """The documented torchrun command on `head` and `node1`, in `project`; each node's log."""
    procs = {}
    for name in ("head", "node1"):
        host = hosts[name]
        env = {"HEAD_IP": head_ip, "NODE_IP": host.ip, "IS_HEAD": "1" if name == "head" else "0", "IFACE": "eth0"}
        if fault and name in fault:
            env |= {"ALEXNET_CLUSTER_FAULT": fault[name], "PYTHONPATH": f"{FAULTS}:{host.env['PYTHONPATH']}"}
        procs[name] = host.bash(command("torchrun-node"), project / f"{name}.log", env=env, cwd=project)
    codes = _wait_both(procs)
    logs = {name: (project / f"{name}.log").read_text() for name in procs}
    assert codes == {"head": 0, "node1": 0}, f"{codes}\n{logs['head'][-3000:]}\n{logs['node1'][-3000:]}"
    return logs


def _wait_both(procs: dict, timeout: float = 400, grace: float = 20) -> dict[str, int]:
    """Both exit codes; once one torchrun has failed, the other gets `grace` seconds (it may be waiting
    for a node that will never come back to the rendezvous) and is then killed."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs.values()):
            deadline = min(deadline, time.monotonic() + grace)
        time.sleep(0.5)
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {name: proc.wait() for name, proc in procs.items()}


def _weights(project: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(project / "models" / member_name(0) / MODEL_FILE)["model"]


@pytest.fixture(scope="module")
def hosts():
    with cluster_of("head", "node1") as hosts:
        yield hosts


@pytest.fixture(scope="module")
def unbroken(hosts, data, tmp_path_factory):
    project = _project(tmp_path_factory.mktemp("torchrun") / "unbroken", data)
    logs = _two_nodes(hosts, project, hosts["head"].ip)
    return project, logs


def test_two_hosts_train_as_one_process_does(unbroken, data, tmp_path):
    project, logs = unbroken
    # Each host ran one rank of a world of two; rank 0 (the head) alone wrote the checkpoints.
    assert "rank 0 of 2" in logs["head"] and "rank 1 of 2" in logs["node1"]
    assert "wrote checkpoint" in logs["head"] and "wrote checkpoint" not in logs["node1"]
    one = tmp_path / "one"
    train_member(0, parse_params(_raw()), prepared_dir=data / "prepared", shards_dir=data / "shards",
                 models_dir=one / "models", history_dir=one / "history", checkpoints_dir=one / "checkpoints",
                 progress=False)
    a, b = _weights(one), _weights(project)
    assert a.keys() == b.keys()
    worst = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert all(torch.allclose(a[k], b[k], atol=ATOL, rtol=RTOL) for k in a), worst


def test_a_rank_killed_on_one_host_restarts_the_group_bit_identical(hosts, unbroken, data, tmp_path):
    # A short rendezvous timeout (not part of the run key): a restart that cannot join fails in 30 s, not 300.
    project = _project(tmp_path / "broken", data, rendezvous_timeout=30)
    stalls = tmp_path / "stalls"
    stalls.mkdir()
    # node1's rank stalls in epoch 2 (after epoch 1's checkpoint) on its first attempt; then it is killed.
    fault = {"node1": f"forward:{STEPS_PER_EPOCH + 2}:{stalls}"}
    killer = _kill_when_stalled(stalls)
    logs = _two_nodes(hosts, project, hosts["head"].ip, fault)
    assert killer() is not None, "the fault never fired"
    assert "resuming from" in logs["head"] and "resuming from" in logs["node1"], logs["node1"][-3000:]
    a, b = _weights(unbroken[0]), _weights(project)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def _kill_when_stalled(folder: Path):
    """Kill (SIGKILL) the process that stalls in `folder`, from a thread; the result: its pid or None."""
    import threading

    killed: list[int] = []

    def watch() -> None:
        path = wait_for_file(folder, "stalled-*", timeout=300)
        if path is not None:
            pid = int(path.name.split("-")[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def result() -> int | None:
        thread.join(timeout=5)
        return killed[0] if killed else None

    return result
