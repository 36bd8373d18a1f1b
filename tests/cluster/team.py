"""The team's servers on a host of the cluster: PostgreSQL (as tests/pg.py makes it, but started on
that host), then `python -m alexnet.servers` as docs/scale-out.md says."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import _as_owner, find_bindir, skip_reason


@contextlib.contextmanager
def postgres_on(host, folder: Path) -> Iterator[str]:
    """A PostgreSQL cluster in `folder`, listening on the host's loopback; its URL (no database)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    bindir = find_bindir()
    folder.mkdir(mode=0o700, parents=True)
    data, password, pwfile = folder / "data", secrets.token_hex(12), folder / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
        for parent in folder.parents:  # pytest's folders are 0700 root: postgres must pass through them
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                              f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync"]),
                   check=True, capture_output=True, timeout=120)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\nport = 5432\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{folder}'\n"
                   "fsync = off\nmax_connections = 100\n")
    start_postgres(host, folder)
    try:
        yield f"postgresql://postgres:{password}@127.0.0.1:5432"
    finally:
        host.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                 check=False, timeout=120)


def start_postgres(host, folder: Path) -> None:
    """(Re)start the cluster in `folder` on `host` (after the host came back up, say)."""
    bindir = find_bindir()
    host.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "server.log"),
                        "-w", "-t", "60", "start"]), timeout=120)
