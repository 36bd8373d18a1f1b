"""Where MLflow runs go, and whether that store can be used before any work starts.

Where runs go (`resolve_tracking_uri`): params' tracking.uri, else $MLFLOW_TRACKING_URI, else
`sqlite:///<project root>/mlflow.db`. Relative sqlite/file paths are resolved against the project
root, never the cwd; `portable_uri` turns a store inside the project back into that relative form,
so a record of it (models/tracking.json) still means the copy's own store in a copied project.
`check_tracking` fails fast, naming the store: a dead server, refused credentials, an unwritable
folder, a locked database. Credentials in a server URI leave it here (alexnet/tracking/credentials.py):
every URI past `resolve_tracking_uri` is bare.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlparse

from alexnet.core.cli import InputError
from alexnet.core.layout import ARTIFACTS_DIR
from alexnet.tracking.credentials import ENV_PASSWORD, ENV_USER, auth_header, take_credentials

ENV_URI = "MLFLOW_TRACKING_URI"
DB_NAME = "mlflow.db"
PROBE_TIMEOUT_S = 3.0  # /health: a dead server fails fast
AUTH_PROBE_TIMEOUT_S = 30.0  # an authenticated request: the server hashes the password (PBKDF2), slow when busy


class TrackingUnavailable(InputError):
    """The tracking store cannot be used; the message names the URI and how to fix it."""


def resolve_tracking_uri(param_uri: str | None, project_root: Path) -> str:
    """$MLFLOW_TRACKING_URI if set, else tracking.uri, else sqlite:///<root>/mlflow.db (absolute).

    The environment wins, as in MLflow itself: a team points every run at its server, a sweep's
    temporary copy at the project's store, without editing params.yaml (and where runs are logged
    is no training param: changing it reruns nothing).
    """
    root = home_project(project_root)
    if os.environ.get(ENV_URI):
        os.environ[ENV_URI] = take_credentials(os.environ[ENV_URI])  # MLflow reads it too: bare there as well
    uri = os.environ.get(ENV_URI) or param_uri or f"sqlite:///{DB_NAME}"
    return _absolute(take_credentials(uri), root)


# Where `dvc exp run --temp/--queue` copies the project: <project>/.dvc/tmp/exps/<copy>.
EXP_COPIES = (".dvc", "tmp", "exps")


def home_project(project_root: Path) -> Path:
    """The project itself, or for a copy `dvc exp run --temp` made (<project>/.dvc/tmp/exps/<copy>) the
    project it copies: a store inside the copy would go when DVC deletes it, and every run and
    registered version with it. Local stores, their artifacts and their records resolve against this."""
    return in_home_project(project_root)[0]


def in_home_project(path: Path) -> tuple[Path, Path]:
    """(the home project, `path` moved into it): a path inside a copy of the project (`home_project`)
    becomes the same path in the project itself; any other path is returned as given."""
    resolved = Path(path).resolve()
    parts, n = resolved.parts, len(EXP_COPIES)
    for i in range(len(parts) - n):
        if parts[i:i + n] == EXP_COPIES:
            home = Path(*parts[:i])
            return home, home.joinpath(*parts[i + n + 1:])  # past .dvc/tmp/exps/<copy>
    return resolved, Path(path)


def _absolute(uri: str, root: Path) -> str:
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")  # "sqlite:////abs" leaves "/abs"
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{root / path}"
        return uri
    scheme = urlparse(uri).scheme
    if scheme == "file":
        path = Path(urlparse(uri).path)
        return (path if path.is_absolute() else root / path).as_uri()
    if scheme == "" and not Path(uri).is_absolute():
        return str(root / uri)
    return uri


def local_artifact_root(uri: str, project_root: Path) -> Path | None:
    """<root>/mlartifacts for a local store (sqlite, file); None for a server, which has its own."""
    if _is_local(uri):
        return home_project(project_root) / ARTIFACTS_DIR
    return None


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


# MLflow's own defaults retry a call to a server that has gone for about four minutes (7 retries,
# the backoff doubling up to 120 s, each try up to 120 s), and a stage's best-effort logging would
# stall that long per call while its host is down. These bound a call to about half a minute on an
# unreachable host; a user's own settings of the same variables win.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def bound_http_retries(env: MutableMapping[str, str] = os.environ) -> None:
    """MLflow's HTTP retries bounded for this process and its children (HTTP_RETRIES), unless set."""
    for key, value in HTTP_RETRIES.items():
        env.setdefault(key, value)


def check_tracking(uri: str) -> None:
    """Fail fast, before any training, if runs cannot be logged to `uri`.

    http(s): probes the server's /health with a short timeout. sqlite/file: the database's folder
    (or the store folder) must be creatable and writable. Other schemes are not checked.
    """
    scheme = urlparse(uri).scheme
    fix_server = (f"start the server (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db "
                  f"--port {urlparse(uri).port or 5000}`), or unset {ENV_URI} and tracking.uri in params.yaml "
                  f"to log to the project's sqlite:///{DB_NAME}")
    if scheme in ("http", "https"):
        _check_server(uri, fix_server)
        bound_http_retries()
        return
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if path in ("", ":memory:"):
            return
        _check_writable(Path(path).parent, uri, "database folder")
        if Path(path).exists() and not os.access(path, os.W_OK):
            raise TrackingUnavailable(f"tracking database {path} ({uri}) is not writable")
        _check_not_locked(Path(path), uri)
        return
    if scheme in ("file", ""):
        _check_writable(Path(urlparse(uri).path if scheme else uri), uri, "store folder")


def _check_server(uri: str, fix_server: str) -> None:
    """The server answers /health, and an authenticated request with the credentials MLflow will send."""
    base = take_credentials(uri).rstrip("/")
    status = _status(f"{base}/health", {}, f"MLflow tracking server {base} is not reachable", fix_server,
                     PROBE_TIMEOUT_S)
    if status != 200:
        raise TrackingUnavailable(f"MLflow tracking server {base} answered /health with HTTP {status}; {fix_server}")
    status = _status(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", auth_header(),
                     f"MLflow tracking server {base} stopped answering", fix_server, AUTH_PROBE_TIMEOUT_S)
    if status in (401, 403):
        user = os.environ.get(ENV_USER)
        who = f"the credentials of user {user!r}" if user else "a request without credentials"
        raise TrackingUnavailable(f"MLflow tracking server {base} refused {who} (HTTP {status}); set {ENV_USER} and "
                                  f"{ENV_PASSWORD} (or user:password@ in the URI) to an account it knows")


def _status(url: str, headers: dict[str, str], what: str, fix: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError) as err:
        raise TrackingUnavailable(f"{what} ({getattr(err, 'reason', err)}); {fix}") from None


def _check_not_locked(path: Path, uri: str) -> None:
    """Take SQLite's write lock for a moment: another process holding it would stall every MLflow call."""
    import sqlite3

    if not path.exists():
        return
    try:
        con = sqlite3.connect(path, timeout=PROBE_TIMEOUT_S)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.Error as err:
        raise TrackingUnavailable(f"tracking database {path} ({uri}) cannot be written ({err}): another "
                                  f"process holds its lock; end that process (an open sqlite3 shell, a "
                                  f"stuck run) and rerun") from None


def _check_writable(folder: Path, uri: str, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingUnavailable(f"cannot create the tracking {what} {folder} for {uri}: {err}") from None
    if not os.access(folder, os.W_OK):
        raise TrackingUnavailable(f"the tracking {what} {folder} for {uri} is not writable")


def portable_uri(uri: str, project_root: Path) -> str:
    """`uri` relative to the project if it is a local store inside it (sqlite:///mlflow.db), else as is."""
    root = home_project(project_root)
    scheme = urlparse(uri).scheme
    if scheme == "sqlite" and uri.startswith("sqlite:////"):
        path = Path(uri.removeprefix("sqlite:///"))
        return f"sqlite:///{path.relative_to(root).as_posix()}" if path.is_relative_to(root) else uri
    if scheme == "file":
        path = Path(urlparse(uri).path)
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else uri
    return uri


def uri_in_project(uri: str, project_root: Path) -> str:
    """A recorded URI made absolute against `project_root` (the inverse of portable_uri)."""
    return _absolute(uri, home_project(project_root))

