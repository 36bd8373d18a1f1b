"""The cluster fixture itself (tests/cluster/): hosts that reach each other and nothing else, and
nothing left behind, whether the block ends, fails, or the test process is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster import PREFIX, cluster_of, namespaces

pytestmark = pytest.mark.cluster
TESTS = Path(__file__).resolve().parent

LISTEN = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind((sys.argv[1], 29511)); s.listen(); print('listening', flush=True); s.accept()")
CONNECT = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 29511), timeout=3).close()\n"
           "    print('connected')\nexcept OSError as err:\n    print('refused', err)")


def _ours() -> list[str]:
    return [ns for ns in namespaces() if ns.startswith(PREFIX)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def _wait_listening(log: Path) -> None:
    deadline = time.monotonic() + 30
    while "listening" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the listener never started"
        time.sleep(0.1)


def test_hosts_reach_each_others_address_but_not_each_others_loopback(tmp_path):
    # Why every documented command names the node's address: a rendezvous on 127.0.0.1 is the
    # head's own loopback, which no other host reaches.
    with cluster_of("head", "node1") as hosts:
        head, node1 = hosts["head"], hosts["node1"]
        head.popen(["python", "-c", LISTEN, "127.0.0.1"], tmp_path / "loopback.log")
        _wait_listening(tmp_path / "loopback.log")
        assert "refused" in node1.run(["python", "-c", CONNECT, "127.0.0.1"]).stdout
        head.popen(["python", "-c", LISTEN, head.ip], tmp_path / "address.log")
        _wait_listening(tmp_path / "address.log")
        assert node1.run(["python", "-c", CONNECT, head.ip]).stdout.strip() == "connected"
        # No route out: the machine's own addresses are not reachable from a host.
        assert "refused" in node1.run(["python", "-c", CONNECT, "10.77.0.254"]).stdout


def test_a_failing_block_leaves_no_namespace_or_process(tmp_path):
    before = set(_ours())
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="the test failed"), cluster_of("head", "node1") as hosts:
        for host in hosts.values():
            proc = host.popen(["sleep", "600"], tmp_path / f"{host.name}.log")
            pids.append(proc.pid)
        assert len(set(_ours()) - before) == 3  # two hosts and the bridge's namespace
        raise RuntimeError("the test failed")
    assert set(_ours()) == before
    assert not [pid for pid in pids if _alive(pid)]


WHO_GETS_KILLED = """
import sys, time
sys.path.insert(0, sys.argv[1])
from cluster import cluster_of
with cluster_of("head", "node1") as hosts:
    for host in hosts.values():
        print(host.popen(["sleep", "600"], host.scratch / (host.name + ".log")).pid, host.ns, flush=True)
    print("ready", flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_test_process_leaves_no_namespace_or_process():
    # pytest-timeout, the OOM killer or a CI runner's kill -9: no finally runs; the watchdog cleans up.
    proc = subprocess.Popen([sys.executable, "-c", WHO_GETS_KILLED, str(TESTS)], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        if line.strip() == "ready":
            break
        lines.append(line.split())
    assert len(lines) == 2, lines
    made = {ns for _, ns in lines}
    assert made <= set(namespaces())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while made & set(namespaces()) or any(_alive(int(pid)) for pid, _ in lines):
        assert time.monotonic() < deadline, (made & set(namespaces()), lines)
        time.sleep(0.2)
    assert not [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{proc.pid}-")]
