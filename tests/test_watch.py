"""Runs you can watch, and runs that leave git clean (issue 23, items 4 and 5).

The project as a user runs it: this checkout copied into a throwaway git repository, the demo
params.yaml with tiny values, `dvc repro` with its output going to a file, no PREFECT_API_URL and no
PREFECT_HOME (HOME is a temporary folder, so nothing lands in this machine's ~/.prefect). Then a
Prefect server started there as the README says, and the project's mlflow.db, are read back. The
failure notification runs on a real Prefect server with a real webhook receiver. All slow.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from alexnet.core.processes import free_port
from tests.tiny import prefect_home, tiny_params

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT = ("git", "-c", "user.name=test", "-c", "user.email=test@example.com")


def copy_checkout(dst: Path) -> Path:
    """This checkout's files (tracked, and new ones git does not ignore) in a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    subprocess.run([*GIT, "init", "-q"], cwd=dst, check=True)
    return dst


def tiny_demo_params(path: Path) -> None:
    """params.yaml with the tiny data, model and training of tests/tiny.py (2 epochs, 2 members) over it."""
    params = yaml.safe_load(path.read_text())
    for section, values in tiny_params(epochs=2).items():
        for key, value in values.items():
            params[section][key] = value
    params["ensemble"]["members"] = 2
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI")}
    return {**env, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def repro(project: Path, env: dict, *args: str, log: str = "repro.log") -> str:
    with open(project.parent / log, "wb") as out:  # a file: no terminal for any progress bar
        code = subprocess.run([str(BIN / "dvc"), "repro", *args], cwd=project, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=1200).returncode
    text = (project.parent / log).read_bytes().decode(errors="replace")  # as written: no newline translation
    assert code == 0, text[-6000:]
    return text


def tracked_files(project: Path) -> dict[str, str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=project, check=True, capture_output=True).stdout.decode()
    return {name: hashlib.sha256((project / name).read_bytes()).hexdigest() if (project / name).exists() else ""
            for name in filter(None, names.split("\0"))}


def git_status(project: Path) -> list[str]:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project, check=True,
                          capture_output=True, text=True).stdout.splitlines()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("watch")
    (base / "home").mkdir()
    root = copy_checkout(base / "project")
    tiny_demo_params(root / "params.yaml")
    prefect_home(root / ".prefect")  # git-ignored: the stages' own servers' home, its database migrated
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "tiny params"], cwd=root, check=True)
    env = user_env(base / "home")
    log = repro(root, env)
    return {"root": root, "env": env, "log": log, "tracked": tracked_files(root), "status": git_status(root),
            "lock": (root / "dvc.lock").read_text()}


@pytest.fixture(scope="module")
def prefect_api(project):
    """`prefect server start` in the project with the README's PREFECT_HOME=.prefect (UI off: not needed here)."""
    port = free_port()
    env = {**project["env"], "PREFECT_HOME": ".prefect", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=project["root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "prefect server start did not come up"
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


def api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_log_has_epoch_lines_with_an_eta_and_no_progress_bar_redraws(project):
    log = project["log"]
    assert "\r" not in log
    assert "member-0 epoch 1/2:" in log and "ETA " in log and "member-1 epoch 2/2:" in log


def test_the_runs_of_dvc_repro_are_listed_by_a_prefect_server_started_on_the_project(project, prefect_api):
    runs = api(prefect_api, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
    flows = {f["id"]: f["name"] for f in api(prefect_api, "/flows/filter")}
    assert [(flows[r["flow_id"]], r["state_type"]) for r in runs] == [
        ("train-ensemble", "COMPLETED"), ("evaluate-ensemble", "COMPLETED")]
    assert not (Path(project["env"]["HOME"]) / ".prefect" / "prefect.db").exists()  # not the user's database


def test_a_finished_run_shows_progress_tables_and_a_link_to_mlflow(project, prefect_api):
    artifacts = api(prefect_api, "/artifacts/filter")
    progress = {a["key"]: a for a in artifacts if a["type"] == "progress"}
    assert set(progress) == {"member-0-progress", "member-1-progress"}
    for key, artifact in progress.items():
        member = key.removesuffix("-progress")
        assert artifact["data"] == 100.0 and artifact["description"] == f"{member} epoch 2/2, done"
    tables = {a["key"]: json.loads(a["data"]) for a in artifacts if a["type"] == "table"}
    assert [row["member"] for row in tables["training"]] == ["member-0", "member-1"]
    assert {"seed", "epoch", "val_top1_err", "images_per_s"} <= set(tables["training"][0])
    metrics = json.loads((project["root"] / "reports" / "metrics.json").read_text())
    ensemble = next(row for row in tables["evaluation"] if row["model"] == "ensemble")
    assert ensemble["ten_crop.top1_err"] == pytest.approx(metrics["ten_crop"]["top1_err"], abs=1e-4)
    state = json.loads((project["root"] / "models" / "tracking.json").read_text())
    links = {a["key"]: a["data"] for a in artifacts if a["key"] in ("training-mlflow", "evaluation-mlflow")}
    assert len(links) == 2 and all(f"/runs/{state['parent_run']}?workflowType=machine_learning)" in link
                                   for link in links.values())


def test_member_runs_carry_seed_placement_and_system_metrics(project):
    client = MlflowClient(f"sqlite:///{project['root'] / 'mlflow.db'}")
    state = json.loads((project["root"] / "models" / "tracking.json").read_text())
    for index, (name, run_id) in enumerate(sorted(state["member_runs"].items())):
        run = client.get_run(run_id)
        assert run.data.params["seed"] == str(1000 * index) and run.data.params["placement"] == "cpu", name
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)


def test_the_mlflow_runs_are_not_dirty_because_of_the_run_itself(project):
    # dvc repro rewrote dvc.lock (new params) before training started: the code was the commit's.
    client = MlflowClient(f"sqlite:///{project['root'] / 'mlflow.db'}")
    state = json.loads((project["root"] / "models" / "tracking.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project["root"], capture_output=True, text=True).stdout
    for run_id in (state["parent_run"], *state["member_runs"].values()):
        tags = client.get_run(run_id).data.tags
        assert (tags["mlflow.source.git.commit"], tags["mlflow.source.git.dirty"]) == (head.strip(), "false")


def models_listing(project: Path, lock: dict) -> dict[str, str]:
    """{file: md5} of the train stage's `models` output, from DVC's cache."""
    md5 = next(out["md5"] for out in lock["stages"]["train"]["outs"] if out["path"] == "models")
    listing = json.loads((project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).read_text())
    return {entry["relpath"]: entry["md5"] for entry in listing}


def without_models_hash(lock: dict) -> dict:
    lock = copy.deepcopy(lock)
    for stage in lock["stages"].values():
        for entry in (*stage.get("outs", []), *stage.get("deps", [])):
            if entry["path"] == "models":
                entry["md5"] = "..."
    return lock


def test_a_rerun_from_scratch_rewrites_every_tracked_file_byte_for_byte(project):
    """What `make run` leaves in git is the same each time: no timing in a tracked file or a DVC output.

    One exception, the run's own identity: models/tracking.json names the MLflow runs the training
    opened, new ones each time, and it lies in the `models` output, so that output's hash in dvc.lock
    differs. Both runs at one commit: the exported weights record the commit they were trained at.
    """
    assert not [line for line in project["status"] if line.startswith("??")], project["status"]  # .prefect ignored
    root = project["root"]
    first_lock = yaml.safe_load(project["lock"])
    shutil.rmtree(root / "checkpoints")  # no resume: every member trains again
    repro(root, project["env"], "--force", log="rerun.log")
    again = tracked_files(root)
    assert {k: v for k, v in again.items() if k != "dvc.lock"} == {
        k: v for k, v in project["tracked"].items() if k != "dvc.lock"}
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert without_models_hash(lock) == without_models_hash(first_lock)
    before, after = models_listing(root, first_lock), models_listing(root, lock)
    assert [name for name in before if before[name] != after.get(name)] == ["tracking.json"]


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        Receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failed_run_of_the_nightly_deployment_posts_to_the_webhook(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.states import Failed, Running
    from prefect.testing.utilities import prefect_test_harness

    from flows import automations
    from flows.deploy import deployments

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{receiver.server_port}/hook"
    with prefect_test_harness(server_startup_timeout=180):
        deployment_id = deployments(str(tmp_path))[0].apply()
        automations.main(["create", "--webhook", webhook])
        automations.main(["create", "--webhook", webhook])  # again: replaced, not doubled
        with get_client(sync_client=True) as client:
            assert len(client.read_automations_by_name("alexnet: pipeline/nightly failed")) == 1
            run = client.create_flow_run_from_deployment(deployment_id)
            client.set_flow_run_state(run.id, Running(), force=True)
            client.set_flow_run_state(run.id, Failed(message="dvc repro train failed with exit code 1"), force=True)
        deadline = time.monotonic() + 120
        while not Receiver.received and time.monotonic() < deadline:
            time.sleep(0.5)
    receiver.shutdown()
    assert Receiver.received, "no notification within 120 s"
    text = Receiver.received[0]["text"]
    assert f"run {run.name} Failed" in text and "dvc repro train failed with exit code 1" in text
    assert "pipeline/nightly" in text
