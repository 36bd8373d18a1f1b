"""Where MLflow runs go, and whether that store can be used before any work starts.

Where runs go (`resolve_tracking_uri`): params' tracking.uri, else $MLFLOW_TRACKING_URI, else
`sqlite:///<project root>/mlflow.db`. Relative sqlite/file paths are resolved against the project
root, never the cwd; `portable_uri` turns a store inside the project back into that relative form,
so a record of it (models/tracking.json) still means the copy's own store in a copied project.
`check_tracking` fails fast, naming the store: a dead server, an unwritable folder, a locked database.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from alexnet.core.cli import InputError
from alexnet.core.layout import ARTIFACTS_DIR

ENV_URI = "MLFLOW_TRACKING_URI"
DB_NAME = "mlflow.db"
PROBE_TIMEOUT_S = 3.0


class TrackingUnavailable(InputError):
    """The tracking store cannot be used; the message names the URI and how to fix it."""


def resolve_tracking_uri(param_uri: str | None, project_root: Path) -> str:
    """$MLFLOW_TRACKING_URI if set, else tracking.uri, else sqlite:///<root>/mlflow.db (absolute).

    The environment wins, as in MLflow itself: a team points every run at its server, a sweep's
    temporary copy at the project's store, without editing params.yaml (and where runs are logged
    is no training param: changing it reruns nothing).
    """
    root = Path(project_root).resolve()
    uri = os.environ.get(ENV_URI) or param_uri or f"sqlite:///{DB_NAME}"
    return _absolute(uri, root)


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
        return Path(project_root).resolve() / ARTIFACTS_DIR
    return None


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


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
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S) as response:
                status = response.status
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is not reachable ({reason}); {fix_server}") from None
        if status != 200:
            raise TrackingUnavailable(f"MLflow tracking server {uri} answered {health} with HTTP {status}; "
                                      f"{fix_server}")
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
    root = Path(project_root).resolve()
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
    return _absolute(uri, Path(project_root).resolve())

