"""A team's servers: MLflow and Prefect on one PostgreSQL, started, checked and stopped together.

    python -m alexnet.servers start --db postgresql://alexnet:PASSWORD@127.0.0.1:5432
    python -m alexnet.servers status
    python -m alexnet.servers stop

`--db` (or $ALEXNET_DB_URL, which keeps the password out of `ps` and shell history) names a
PostgreSQL server and a role allowed to create databases; MLflow's runs and registry go to the
database `mlflow`, Prefect's to `prefect` (created on first start). Both servers have their own
alembic migrations and version table, which is why they take a database each.

MLflow serves its artifacts (`--artifacts-destination`, <state>/mlartifacts by default, or an
s3:// URI), so clients need only the tracking URI. `--auth-config FILE` starts MLflow's
basic-auth app with that ini file (docs/team.md). Both servers bind 127.0.0.1 unless --host says
otherwise. The state folder holds each server's log, its pid and process start time (so stop
never signals a recycled pid) and state.json; stop removes the pid files and state.json and
keeps the logs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from alexnet.core.atomic import atomic_write_json
from alexnet.core.cli import InputError
from alexnet.core.processes import process_start_time

ENV_DB = "ALEXNET_DB_URL"
DEFAULT_STATE = ".servers"
STATE_FILE = "state.json"
SERVERS = ("mlflow", "prefect")
HEALTH = {"mlflow": "/health", "prefect": "/api/health"}
STOP_GRACE_S = 15.0


class ServersError(InputError):
    """A setup problem, said in one line naming the setting or file."""


@dataclass(frozen=True)
class Database:
    """A PostgreSQL server as the URL gave it: scheme, credentials and address, no database."""

    user: str
    password: str | None
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Database:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.username:
            raise ServersError(f"--db/{ENV_DB} must look like postgresql://USER:PASSWORD@HOST:PORT, "
                               f"got scheme {parts.scheme!r}, host {parts.hostname!r}")
        return cls(parts.username, parts.password, parts.hostname, parts.port or 5432)

    def url(self, database: str, driver: str = "postgresql") -> str:
        auth = self.user + (f":{self.password}" if self.password is not None else "")
        return urlunsplit((driver, f"{auth}@{self.host}:{self.port}", f"/{database}", "", ""))

    def ensure(self, database: str) -> None:
        """CREATE DATABASE `database` unless it exists."""
        try:
            import psycopg
            from psycopg import sql
        except ImportError as err:
            raise ServersError("MLflow on PostgreSQL needs psycopg: pip install -e '.[team]'") from err
        try:
            # autocommit: CREATE DATABASE refuses to run inside a transaction.
            conn = psycopg.connect(dbname="postgres", user=self.user, password=self.password, host=self.host,
                                   port=self.port, connect_timeout=10, autocommit=True)
        except psycopg.OperationalError as err:
            first = str(err).strip().splitlines()[0]
            raise ServersError(f"cannot connect to PostgreSQL at {self.host}:{self.port} as {self.user}: "
                               f"{first}") from None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        finally:
            conn.close()


def _bin(name: str) -> str:
    """The console script beside this interpreter (the venv's mlflow/prefect), else PATH's."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _alive(pid: int, started: str | None) -> bool:
    return started is not None and process_start_time(pid) == started


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _url_host(host: str) -> str:
    """A host clients can reach: a wildcard bind is reached on loopback from this machine."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host  # an IPv6 literal in a URL


def _commands(args: argparse.Namespace, db: Database, state: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each server's argument list and extra environment. Credentials go in the environment."""
    artifacts = args.artifacts or str((state / "mlartifacts").resolve())
    mlflow = [_bin("mlflow"), "server", "--host", args.host, "--port", str(args.mlflow_port),
              "--artifacts-destination", artifacts]
    if args.mlflow_workers:
        mlflow += ["--workers", str(args.mlflow_workers)]
    # MLflow's server-side jobs (GenAI evaluation, trace roll-ups) serve nothing of this pipeline, and
    # each start would add half a dozen job-consumer processes, each a Python with MLflow imported;
    # off unless the team set MLFLOW_SERVER_ENABLE_JOB_EXECUTION itself.
    mlflow_env = {"MLFLOW_BACKEND_STORE_URI": db.url(args.mlflow_db), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
                  os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    if args.auth_config:
        config = Path(args.auth_config).resolve()
        if not config.is_file():
            raise ServersError(f"--auth-config {config}: no such file")
        mlflow += ["--app-name", "basic-auth"]
        mlflow_env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
        # The auth app's CSRF protection needs one key shared by MLflow's workers; a fresh one per
        # start unless the user set theirs (then sessions survive restarts).
        mlflow_env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY",
                              os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32))
    prefect = [_bin("prefect"), "server", "start", "--host", args.host, "--port", str(args.prefect_port),
               "--analytics-off"]
    prefect_env = {
        "PREFECT_API_DATABASE_CONNECTION_URL": db.url(args.prefect_db, "postgresql+asyncpg"),
        "PREFECT_HOME": str((state / "prefect-home").resolve()),
    }
    return {"mlflow": (mlflow, mlflow_env), "prefect": (prefect, prefect_env)}


def start(args: argparse.Namespace) -> int:
    state = Path(args.state)
    if (state / STATE_FILE).exists():
        status(args)
        raise ServersError(f"{state / STATE_FILE} exists: the servers are running or were not stopped; "
                           f"run `python -m alexnet.servers stop --state {state}` first")
    url = args.db or os.environ.get(ENV_DB)
    if not url:
        raise ServersError(f"no database: pass --db postgresql://USER:PASSWORD@HOST:PORT or set {ENV_DB}")
    db = Database.parse(url)
    for name in (args.mlflow_db, args.prefect_db):
        db.ensure(name)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    commands = _commands(args, db, state)
    base = _url_host(args.host)
    urls = {"mlflow": f"http://{base}:{args.mlflow_port}", "prefect": f"http://{base}:{args.prefect_port}/api"}
    record: dict = {"urls": urls, "servers": {}}
    for name, (argv, extra_env) in commands.items():
        log = open(state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        # A session of its own: stop signals the server's whole process group (uvicorn's workers too).
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **extra_env}, start_new_session=True)
        log.close()
        started = process_start_time(proc.pid)
        (state / f"{name}.pid").write_text(f"{proc.pid}\n")
        record["servers"][name] = {"pid": proc.pid, "start_time": started, "argv": argv}
        atomic_write_json(state / STATE_FILE, record)
    deadline = time.monotonic() + args.timeout
    waiting = set(SERVERS)
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            health = urls[name].removesuffix("/api") + HEALTH[name]
            server = record["servers"][name]
            if not _alive(server["pid"], server["start_time"]):
                stop(args)
                raise ServersError(f"{name} server exited while starting; see {state / 'logs' / name}.log")
            if _healthy(health):
                waiting.discard(name)
        time.sleep(0.5)
    if waiting:
        stop(args)
        raise ServersError(f"{', '.join(sorted(waiting))} not healthy after {args.timeout:.0f} s; "
                           f"see the logs in {state / 'logs'}")
    print(f"MLFLOW_TRACKING_URI={urls['mlflow']}")
    print(f"PREFECT_API_URL={urls['prefect']}")
    return 0


def _read_state(state: Path) -> dict | None:
    path = state / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ServersError(f"{path} is not valid JSON ({err}); stop the servers by their pid files") from None


def _started(state: Path) -> dict | None:
    """The state.json of servers started from `state`; None, saying so, when there is none."""
    record = _read_state(state)
    if record is None:
        print(f"no servers started from {state}")
    return record


def status(args: argparse.Namespace) -> int:
    """One line per server: pid alive or not, health answered or not. Exit 0 only if all are up."""
    record = _started(Path(args.state))
    if record is None:
        return 3
    up = True
    for name in SERVERS:
        server = record["servers"].get(name)
        if server is None:
            print(f"{name}: not started")
            up = False
            continue
        alive = _alive(server["pid"], server["start_time"])
        health = record["urls"][name].removesuffix("/api") + HEALTH[name]
        healthy = alive and _healthy(health)
        up &= healthy
        print(f"{name}: pid {server['pid']} {'running' if alive else 'gone'}, {record['urls'][name]} "
              f"{'healthy' if healthy else 'not answering'}")
    return 0 if up else 3


def stop(args: argparse.Namespace) -> int:
    """SIGTERM each server's process group, SIGKILL after a grace period; remove the pid files."""
    state = Path(args.state)
    record = _started(state)
    if record is None:
        return 0
    for name, server in record["servers"].items():
        pid, started = server["pid"], server["start_time"]
        if _alive(pid, started):
            _terminate(pid, started)
            print(f"{name}: stopped (pid {pid})")
        (state / f"{name}.pid").unlink(missing_ok=True)
    (state / STATE_FILE).unlink(missing_ok=True)
    return 0


def _terminate(pid: int, started: str | None) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)  # the server is its session's and group's leader (start_new_session)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(pid)
            if not _alive(pid, started) and not _group_alive(pid):
                return
            time.sleep(0.2)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child when start and stop run in one process
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
