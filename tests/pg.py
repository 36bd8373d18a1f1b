"""A throwaway PostgreSQL cluster for tests: `with postgres_cluster(tmp) as pg: pg.url`.

initdb into a temporary folder, one free loopback port, its socket in that folder, password
authentication (scram) for the `postgres` role; `pg_ctl stop` and the folder's removal on exit.
Run as root, every server binary runs as the `postgres` user (PostgreSQL refuses root).
Where the binaries are missing the test is skipped with the reason and the install command.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from alexnet.core.processes import free_port

INSTALL = "apt-get install postgresql-15 (Debian/Ubuntu; the binaries land in /usr/lib/postgresql/15/bin)"


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    password: str
    data: Path

    @property
    def url(self) -> str:
        """postgresql://postgres:PASSWORD@127.0.0.1:PORT, no database (alexnet.team.servers' --db)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}"


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl, else PATH's."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if all((Path(folder) / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _as_owner(argv: list[str]) -> list[str]:
    """PostgreSQL will not run as root: as root, run the binary as `postgres`."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def skip_reason() -> str | None:
    """Why a real PostgreSQL cannot run here, or None."""
    if find_bindir() is None:
        return f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install them: {INSTALL}"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return f"running as root and there is no `postgres` user to run PostgreSQL as ({INSTALL} creates it)"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` (util-linux) is missing to run PostgreSQL as `postgres`"
    return None


@contextmanager
def postgres_cluster(tmp: Path) -> Iterator[Cluster]:
    """A started cluster in tmp/pg (skips the test if PostgreSQL cannot run here); stopped on exit."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    bindir = find_bindir()
    root = Path(tmp) / "pg"
    root.mkdir(mode=0o700)
    data, password = root / "data", secrets.token_hex(12)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
        # The postgres user must be able to reach tmp (pytest's tmp folders are 0700 root).
        for parent in [Path(tmp), *Path(tmp).parents]:
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                              f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync"]), **run)
    port = free_port()
    # Settings in the config file, not pg_ctl -o (a string postgres re-splits).
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                   "fsync = off\nmax_connections = 100\n")
    log = root / "server.log"
    try:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                  "start"]), **run)
    except subprocess.CalledProcessError as err:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {err.stderr}\n{tail}") from err
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield Cluster("127.0.0.1", port, "postgres", password, data)
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=120)
        _stop_by_pid(postmaster, data)  # pg_ctl cannot stop it if the data folder went missing meanwhile
        shutil.rmtree(root, ignore_errors=True)


def _stop_by_pid(pid: int, data: Path, grace: float = 30.0) -> None:
    """SIGINT (PostgreSQL's fast shutdown) to the postmaster, SIGKILL after `grace` seconds.

    Only while /proc says the pid is still this cluster's postmaster (never a recycled pid)."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            if str(data).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
        except OSError:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.2)
