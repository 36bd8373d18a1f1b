"""A temporary Prefect API server that the stage owns, so that it dies with the stage.

Without PREFECT_API_URL a flow starts Prefect's own temporary server (SubprocessASGIServer in
prefect/server/api/server.py): a `python -m uvicorn` child that is stopped by an atexit hook, so
it outlives a stage that is killed (SIGKILL, the OOM killer) and stays, reparented to init, forever.
`own_api_server` starts the same server the same way, but with a parent-death signal set in the
child (Linux prctl PR_SET_PDEATHSIG): the kernel sends it SIGTERM the moment the stage dies,
however it dies. It then points PREFECT_API_URL at it, so Prefect never starts its own. The server
runs in a session of its own: a SIGTERM to the stage's whole process group (`timeout`, CI runners,
Slurm) must not take the server from a flow that is stopping at its next safe point and reporting so.

The server keeps its database in the project, `<project>/.prefect/prefect.db` (git- and DVC-ignored),
as MLflow's runs go to the project's mlflow.db: a Prefect server started there afterwards with
`PREFECT_HOME=.prefect prefect server start` shows what `dvc repro` ran. A PREFECT_HOME the user
set is used instead.

Call it before anything imports prefect (Prefect reads its settings once, on import). A
PREFECT_API_URL already set (a team's server, the tests' harness) is used as it is.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from alexnet.core.cli import InputError
from alexnet.core.processes import free_port, signal_on_parent_death

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0  # as flows/__init__.py gives Prefect's own: the start shares a busy machine


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server started here: SIGTERM, then SIGKILL after 10 s (idempotent: atexit calls it too)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


WATCH_UI_URL = "http://127.0.0.1:4200"  # README's `prefect server start --host 127.0.0.1 --port 4200`
PROJECT_HOME = ".prefect"  # the stage's server's home inside the project: its database, prefect.db


def server_home(project: Path | None = None) -> Path:
    """Where the stage's server keeps its database: PREFECT_HOME if the user set it, else the project's .prefect."""
    given = os.environ.get("PREFECT_HOME")
    return Path(given).expanduser() if given else (project or Path.cwd()).resolve() / PROJECT_HOME


def check_prefect_home(home: Path | None = None) -> Path:
    """The server's home (default: `server_home()`): created if need be and written to, or one line naming
    it. Else the server dies with a traceback of its own and the stage only learns its exit code."""
    home = home or server_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as err:
        raise InputError(f"PREFECT_HOME {home}: cannot be created or written to ({err.strerror or err}); "
                         "point PREFECT_HOME at a writable folder") from None
    return home


def own_api_server(timeout: float = STARTUP_TIMEOUT_S, project: Path | None = None) -> Callable[[], None]:
    """Start the stage's own Prefect API server and set PREFECT_API_URL to it; return `ready`, which
    waits until the server answers (or raises RuntimeError). A no-op `ready` if a server is configured
    already (or this is not Linux, or prefect is imported already: Prefect's own then).

    The server takes seconds to start, as do the imports of the stage's flow (Prefect, MLflow): the
    stage imports its flow between the two calls, so they overlap. `project` (default: the working
    directory, where `dvc repro` runs a stage) holds its database."""
    if os.environ.get("PREFECT_API_URL"):
        return _nothing
    if not sys.platform.startswith("linux") or "prefect" in sys.modules:
        log.warning("Prefect's temporary server is not owned by this stage (%s): a killed stage may leave it "
                    "running", "not Linux" if not sys.platform.startswith("linux") else "prefect already imported")
        return _nothing
    home = check_prefect_home(server_home(project))
    proc, url = launch_api_server(home)
    os.environ["PREFECT_API_URL"] = url  # before prefect is imported: it reads its settings once
    # The flow's "View at" link: the UI the README starts over the same database, not this server (no UI, gone soon).
    os.environ.setdefault("PREFECT_UI_URL", WATCH_UI_URL)
    log.info("Prefect API server of this stage: %s (pid %d, ends with the stage), database in %s", url, proc.pid,
             home)
    return lambda: wait_healthy(proc, url, timeout)


def _nothing() -> None:
    pass


def start_api_server(home: Path, timeout: float = STARTUP_TIMEOUT_S) -> tuple[subprocess.Popen, str]:
    """`launch_api_server`, then wait for it: (process, API URL) once it answers /health, or RuntimeError."""
    proc, url = launch_api_server(home)
    wait_healthy(proc, url, timeout)
    return proc, url


def launch_api_server(home: Path) -> tuple[subprocess.Popen, str]:
    """Prefect's API server (no UI) on a free loopback port, its database in `home`, as a child of this
    process that gets SIGTERM when this process dies and is stopped at exit: (process, API URL), at once."""
    spec = importlib.util.find_spec("prefect")
    app_dir = Path(spec.origin).parent.parent  # as SubprocessASGIServer passes prefect.__module_path__.parent
    port = free_port()
    # The home for the server only: the stage's own Prefect client keeps the user's profiles.
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env=env, preexec_fn=signal_on_parent_death(os.getpid()),  # noqa: PLW1509 - before any thread of ours starts
        start_new_session=True,  # out of the stage's process group: a group SIGTERM must leave the flow its server
    )
    atexit.register(stop_server, proc)  # a normal exit stops it at once; a kill leaves it to the kernel's signal
    return proc, f"http://127.0.0.1:{port}/api"


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Return once the server at `url` answers /health; RuntimeError (the server stopped) if it exits
    or has not answered within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect API server at {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the Prefect API server did not answer {url}/health within {timeout:.0f} s")
        time.sleep(0.1)
