"""A cluster of network hosts on one machine: Linux network namespaces joined by a private bridge.

    with cluster_of("head", "node1") as hosts:
        hosts["node1"].popen(["python", "-m", "stages.train", ...], log=folder / "train.log")

Each host is a network namespace with one interface, `eth0`, at 10.77.0.N/24 (N = 1, 2, ... in
the order named); the bridge joining them lives in a namespace of its own. Nothing is added to the
machine's own network: no address, route, bridge or NAT outside the namespaces, so no host can
reach anything but the others. The hosts share the filesystem, users and hostname of the machine
(the hostname resolves to loopback, which is why servers are told their address explicitly).

Everything goes when the block ends, also when a test fails: every process left in a namespace
is killed (`ip netns pids`), then the namespaces, which take their interfaces with them. A
watchdog process of its own session does the same if the test process itself is killed, SIGKILL
included, and a new cluster first removes those of dead test processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.77.0"
PREFIX = "alxc"  # every namespace this module makes: alxc<owner pid>-<n>-<host>
_made = [0]


def skip_reason() -> str | None:
    """Why network namespaces cannot be made here (one line), or None."""
    if not sys.platform.startswith("linux"):
        return f"cluster tests need Linux network namespaces, this is {sys.platform}"
    if shutil.which("ip") is None:
        return "cluster tests need iproute2's `ip` (apt-get install iproute2)"
    if os.geteuid() != 0:
        return f"cluster tests need root to make network namespaces (`ip netns add`), running as uid {os.geteuid()}"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        first = (made.stderr.strip().splitlines() or ["no reason given"])[0]
        return f"cannot make a network namespace here (`ip netns add`: {first})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespace_pids(ns: str) -> set[int]:
    """Every process whose network namespace is `ns`."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def namespaces() -> list[str]:
    """The names `ip netns list` shows (first word of each line)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def remove(names: Sequence[str]) -> None:
    """Kill every process in each namespace, then delete it (its interfaces go with it)."""
    for ns in names:
        kill_all(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def kill_all(ns: str) -> None:
    """SIGKILL every process in namespace `ns` until none is left (a dying server may still fork)."""
    for _ in range(50):
        pids = namespace_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_orphans() -> None:
    """Namespaces of test processes that died without removing theirs (their watchdog killed too)."""
    dead = [ns for ns in namespaces() if ns.startswith(PREFIX) and ns[len(PREFIX):].split("-")[0].isdigit()
            and not _owner_alive(int(ns[len(PREFIX):].split("-")[0]))]
    remove(dead)


# Run by the watchdog: wait for the owner to die, or for the namespaces to be gone, then remove them.
_WATCHDOG = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from cluster import namespaces, remove
owner, names = int(sys.argv[2]), sys.argv[3:]
while True:
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        remove(names)
        break
    if not set(names) & set(namespaces()):
        break
    time.sleep(0.5)
"""


@dataclass
class Host:
    """One network host: a namespace, its address, and the processes started in it."""

    name: str
    ns: str
    ip: str
    env: Mapping[str, str]
    scratch: Path  # where commands run unless told: never the checkout, which relative paths would write into
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *map(str, cmd)]

    def run(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300,
            check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` on this host and wait; its output captured. check: fail the test on a non-zero exit."""
        done = subprocess.run(self.argv(cmd), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or self.scratch)
        if check:
            assert done.returncode == 0, (f"{self.name}: {' '.join(map(str, cmd))} exited {done.returncode}:\n"
                                          f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        return done

    def popen(self, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start `cmd` on this host, its output into `log`; it is killed with the host at the latest."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.argv(cmd), env={**self.env, **(env or {})}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd or self.scratch,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def bash(self, script: str, log: Path, env: Mapping[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.Popen:
        """Start a documented command (docs/scale-out.md) with bash on this host, as a user would type it."""
        return self.popen(["bash", "-euo", "pipefail", "-c", script], log, env, cwd)

    def pids(self) -> set[int]:
        return namespace_pids(self.ns)

    def down(self) -> None:
        """The host goes down: every process on it is SIGKILLed, then its link to the bridge is cut.

        In that order the kernel still closes the dead processes' connections, as when a machine's
        processes die (OOM, a crash, a reboot); peers that call the host afterwards learn only from
        their own timeouts. Ray's retry could wait on those for minutes even in this order, so the Ray
        test kills the processes (`kill_all`) and cuts the link only once Ray has declared the node dead.
        """
        kill_all(self.ns)
        _ip("-n", self.ns, "link", "set", "eth0", "down")
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def up(self) -> None:
        """The host is back on the network (the processes killed by `down` stay dead)."""
        _ip("-n", self.ns, "link", "set", "eth0", "up")


def base_env() -> dict[str, str]:
    """What every process on a host gets: this checkout importable, the venv's commands first, one
    thread per process (the hosts share two cores), and no server or token of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API", "RAY_", "DASK_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


@contextlib.contextmanager
def cluster_of(*names: str) -> Iterator[dict[str, Host]]:
    """Hosts `names` on one private bridge, for the block; skips the test where namespaces cannot be made."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    remove_orphans()
    _made[0] += 1
    stem = f"{PREFIX}{os.getpid()}-{_made[0]}"
    switch = f"{stem}-sw"
    scratch = Path(tempfile.mkdtemp(prefix=f"{stem}-"))
    hosts = {name: Host(name, f"{stem}-{name}", f"{SUBNET}.{i}", base_env(), scratch)
             for i, name in enumerate(names, 1)}
    all_ns = [switch, *(h.ns for h in hosts.values())]
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(Path(__file__).parent.parent), str(os.getpid()),
                                 *all_ns], start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        for ns in all_ns:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(hosts.values(), 1):
            # Made inside the namespaces: the machine's own network never sees either end.
            _ip("-n", switch, "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            _ip("-n", switch, "link", "set", f"port{i}", "master", "br0", "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
        yield hosts
    finally:
        remove(all_ns)
        for host in hosts.values():
            for proc in host.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        watchdog.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
