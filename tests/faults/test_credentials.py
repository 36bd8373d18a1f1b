"""An MLflow server with basic auth: credentials in tracking.uri are used, and never shown or written.

A real `mlflow server --app-name basic-auth` on loopback. The train and evaluate stages log to it
with `http://admin:<password>@127.0.0.1:<port>` in params.yaml; then every file the stages wrote,
their output, and every MLflow param and tag of the runs and the registered model are searched for
the password. A wrong password fails before any work, in one line, without it.
"""

import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from werkzeug.security import generate_password_hash

from alexnet.core.processes import free_port
from alexnet.tracking.credentials import ENV_PASSWORD, ENV_USER, redact, take_credentials
from alexnet.tracking.store import resolve_tracking_uri
from tests.tiny import build_tiny_data, sqlite_store, tiny_params

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "Zq7-wrt9-secret-Kx2"  # what must appear nowhere


def test_take_credentials_moves_them_to_mlflows_environment(monkeypatch):
    monkeypatch.delenv(ENV_USER, raising=False)
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    assert take_credentials("http://team:p%40ss@host:5000/") == "http://host:5000/"
    assert os.environ[ENV_USER] == "team" and os.environ[ENV_PASSWORD] == "p@ss"
    assert take_credentials("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert redact("a http://team:p@ss@host:5000 b https://x@y") == "a http://team:***@host:5000 b https://x:***@y"


def test_a_uri_with_credentials_in_the_environment_is_bare_for_mlflow_too(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://team:{PASSWORD}@127.0.0.1:5999")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5999"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999" and os.environ[ENV_PASSWORD] == PASSWORD


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-server")
    config = root / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{root / 'users.db'}\nadmin_username = admin\n"
                      f"admin_password = {PASSWORD}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    # As alexnet/team/servers.py starts it: without MLflow's job consumers (processes nothing here uses).
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in ("MLFLOW_TRACKING_URI", ENV_USER, ENV_PASSWORD):
        env.pop(name, None)
    log = open(root / "server.log", "wb")
    server = subprocess.Popen([BIN / "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri",
                               sqlite_store(root), "--artifacts-destination", str(root / "artifacts")],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    # MLflow checks the password on every request against a scrypt hash (0.1 s of CPU each, hundreds
    # of requests per stage); a one-round hash of the same password checks the same, at once.
    with sqlite3.connect(root / "users.db") as users:
        changed = users.execute("UPDATE users SET password_hash = ? WHERE username = 'admin'",
                                (generate_password_hash(PASSWORD, method="pbkdf2:sha256:1"),)).rowcount
    assert changed == 1
    yield url, root
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("credentials") / "data")


def stage(name: str, project: Path, data: Path, env: dict) -> subprocess.CompletedProcess:
    paths = ["--params", str(project / "params.yaml"), "--prepared", str(data / "prepared"), "--shards",
             str(data / "shards"), "--models", str(project / "models"), "--tracking-state",
             str(project / "models" / "tracking.json")]
    extra = (["--history", str(project / "history"), "--checkpoints", str(project / "ckpt")] if name == "train"
             else ["--reports", str(project / "reports"), "--metrics", str(project / "metrics.json")])
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *paths, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def project_with(root: Path, uri: str) -> Path:
    root.mkdir()
    raw = tiny_params(epochs=1)
    raw["tracking"] = {"uri": uri, "experiment": "auth"}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


@pytest.mark.slow
def test_credentials_in_the_uri_log_the_runs_and_appear_nowhere(auth_server, data, tmp_path):
    from mlflow import MlflowClient

    url, server_root = auth_server
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ENV_USER, ENV_PASSWORD)}
    env["PYTHONPATH"] = str(REPO)
    project = project_with(tmp_path / "project", url.replace("://", f"://admin:{PASSWORD}@"))
    said = []
    for name in ("train", "evaluate"):
        done = stage(name, project, data, env)
        said.append(done.stdout + done.stderr)
        assert done.returncode == 0, said[-1][-4000:]

    leaks = [str(p) for p in project.rglob("*") if p.is_file() and p.name != "params.yaml"
             and PASSWORD.encode() in p.read_bytes()]
    leaks += [str(p) for p in server_root.rglob("*") if p.is_file() and p.suffix != ".ini" and p.name != "users.db"
              and PASSWORD.encode() in p.read_bytes()]
    assert not leaks, f"the password was written into {leaks}"
    assert not any(PASSWORD in text for text in said), "a stage printed the password"

    os.environ[ENV_USER], os.environ[ENV_PASSWORD] = "admin", PASSWORD
    try:
        client = MlflowClient(url)
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert len(runs) == 2  # the ensemble's parent and its one member
        shown = [str(r.data.params) + str(r.data.tags) for r in runs]
        shown += [str(v.tags) + str(v.source) for m in client.search_registered_models()
                  for v in client.search_model_versions(f"name='{m.name}'")]
        assert len(shown) == 3, "the ensemble was not registered"
        assert not any(PASSWORD in text for text in shown)
        assert {r.data.params.get("tracking.uri") for r in runs} >= {url}  # the param is there, bare
    finally:
        del os.environ[ENV_USER], os.environ[ENV_PASSWORD]


@pytest.mark.slow
def test_a_wrong_password_fails_in_one_line_without_it(auth_server, data, tmp_path):
    url, _ = auth_server
    wrong = "not-the-password-9"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ENV_USER, ENV_PASSWORD)}
    env["PYTHONPATH"] = str(REPO)
    project = project_with(tmp_path / "project", url.replace("://", f"://admin:{wrong}@"))
    done = stage("train", project, data, env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"train: MLflow tracking server {url} refused the credentials of user 'admin' (HTTP 401)"), done.stderr
    assert wrong not in done.stdout + done.stderr and "Traceback" not in done.stderr
