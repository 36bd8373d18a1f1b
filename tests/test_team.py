"""A team's setup: MLflow and Prefect on a real PostgreSQL, a DVC remote, the work-pool deployment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from pg import free_port, postgres_cluster

from alexnet.config.params import parse_params
from alexnet.tracking.lifecycle import registered_name
from tests.procs import command_line, group
from tests.tiny import build_tiny_data, tiny_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def own_tmp():
    """A temporary folder of this test's own: these tests run for minutes, and another pytest session on
    the machine may prune old pytest-of-<user>/pytest-N folders (tmp_path) meanwhile."""
    with tempfile.TemporaryDirectory(prefix="alexnet-team-") as tmp:
        yield Path(tmp)


def _run(argv: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _gone(pid: int, wait: float = 30.0) -> bool:
    """Has `pid` exited (within `wait` seconds: a stopped server may still be finishing its exit)?"""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _flow_names(prefect_api: str) -> set[str]:
    request = urllib.request.Request(f"{prefect_api}/flows/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return {flow["name"] for flow in json.loads(response.read())}


@pytest.mark.slow
def test_servers_on_postgres_track_two_ensembles_and_move_champion(own_tmp):
    """MLflow and Prefect on one PostgreSQL: the train and evaluate stages log there, compare reads it
    back, @champion moves to the better ensemble, artifacts land in the served folder, stop leaves no process."""
    from mlflow import MlflowClient

    tmp_path = own_tmp
    data = build_tiny_data(tmp_path / "data")
    with postgres_cluster(tmp_path) as pg:
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        state, artifacts = tmp_path / "servers", tmp_path / "served-artifacts"
        mlflow_port, prefect_port = free_port(), free_port()
        servers = [sys.executable, "-m", "alexnet.servers"]
        common = ["--state", str(state)]
        started = subprocess.run([*servers, "start", *common, "--db", pg.url, "--mlflow-port", str(mlflow_port),
                                  "--prefect-port", str(prefect_port), "--mlflow-workers", "1", "--artifacts",
                                  str(artifacts), "--timeout", "150"], capture_output=True, text=True, timeout=200)
        record = json.loads((state / "state.json").read_text()) if (state / "state.json").exists() else None
        try:
            logs = "\n".join(p.read_text()[-3000:] for p in (state / "logs").glob("*.log"))
            assert started.returncode == 0, f"{started.stderr}\n{logs}"
            uri, prefect_api = record["urls"]["mlflow"], record["urls"]["prefect"]
            assert uri == f"http://127.0.0.1:{mlflow_port}"
            assert f"MLFLOW_TRACKING_URI={uri}" in started.stdout
            assert _run([*servers, "status", *common]).stdout.count("healthy") == 2
            # MLflow's job consumers (GenAI jobs, unused here) are not started beside the server.
            assert not [c for c in map(command_line, group(record["servers"]["mlflow"]["pid"])) if "huey" in c]

            # The stages' flows report to the team's Prefect server, not an ephemeral one.
            env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
            errors = {}
            # A near-untrained ensemble first, then a trained one: @champion must move to the second.
            for name, train, members in (("untrained", dict(epochs=1, lr=1e-7), 1), ("trained", {}, 2)):
                raw = tiny_params(**train)
                raw["ensemble"] = {"members": members}
                raw["tracking"] = {"uri": uri, "experiment": "team", "registered_model": "team-ensemble"}
                out = tmp_path / name
                out.mkdir()
                (out / "params.yaml").write_text(yaml.safe_dump(raw))
                paths = ["--params", str(out / "params.yaml"), "--prepared", str(data / "prepared"),
                         "--shards", str(data / "shards"), "--models", str(out / "models"),
                         "--tracking-state", str(out / "models" / "tracking.json")]
                _run([sys.executable, "-m", "stages.train", *paths, "--history", str(out / "history"),
                      "--checkpoints", str(out / "checkpoints")], env=env)
                _run([sys.executable, "-m", "stages.evaluate", *paths, "--reports", str(out / "reports"),
                      "--metrics", str(out / "metrics.json")], env=env)
                errors[name] = json.loads((out / "metrics.json").read_text())["ten_crop"]["top1_err"]
                client = MlflowClient(uri)
                params = parse_params(raw)
                champion = client.get_model_version_by_alias(registered_name(params.tracking, params.data), "champion")
                if name == "untrained":
                    assert champion.version == "1"
            assert errors["trained"] < errors["untrained"], f"training did not help on the tiny set: {errors}"
            assert champion.version == "2"
            assert float(champion.tags["metric_value"]) == pytest.approx(errors["trained"])

            table = _run([sys.executable, "-m", "alexnet.compare", "--uri", uri, "--experiment", "team",
                          "--params", str(tmp_path / "trained" / "params.yaml")], env=env).stdout
            assert table.count("member-0") == 2 and table.count("member-1") == 1, table
            assert f"{errors['trained']:.4f}" in table and f"{errors['untrained']:.4f}" in table, table
            # Served artifacts: the server wrote them into its --artifacts-destination.
            assert list(artifacts.rglob("metrics.json")), sorted(p.name for p in artifacts.rglob("*"))
            assert {"train-ensemble", "evaluate-ensemble"} <= _flow_names(prefect_api)
        finally:
            stopped = subprocess.run([*servers, "stop", *common], capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert not (state / "state.json").exists() and not list(state.glob("*.pid"))
        pids = [s["pid"] for s in record["servers"].values()]
        assert all(_gone(pid) for pid in pids), pids
        for pid in pids:  # each server led its own process group: its workers are gone too
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
    assert _gone(postmaster)


def test_servers_refuse_a_bad_database_url_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "alexnet.servers", "start", "--state", str(tmp_path),
                           "--db", "mysql://u@h"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "servers: --db/ALEXNET_DB_URL must look like postgresql://USER:PASSWORD@HOST:PORT, got scheme 'mysql', "
        "host 'h'"]
    assert not (tmp_path / "state.json").exists()


def test_prefect_yaml_deployment_resolves_to_the_pipeline_flow():
    """prefect.yaml passes Prefect's own schema, and its entrypoint loads flows/pipeline.py's flow."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    from flows.deploy import NIGHTLY_CRON

    model = PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    (deployment,) = model.deployments
    assert deployment.work_pool.name == "gpu"
    assert deployment.entrypoint == "flows/pipeline.py:pipeline"
    assert [s.cron for s in deployment.schedules] == [NIGHTLY_CRON]
    flow = load_flow_from_entrypoint(str(ROOT / deployment.entrypoint))
    assert flow.name == "pipeline"
    assert set(deployment.parameters) <= set(flow.parameters.properties)


@pytest.mark.slow
def test_dvc_remote_push_then_pull_on_a_fresh_clone_recomputes_nothing(own_tmp):
    """Run the pipeline in a clone, `dvc push` to a local remote; a second clone `dvc pull`s and
    `dvc repro` finds every stage up to date (no stage runs)."""
    tmp_path = own_tmp
    git = shutil.which("git")
    dvc = str(Path(sys.executable).parent / "dvc")
    first, second, remote = tmp_path / "first", tmp_path / "second", tmp_path / "remote"
    _run([git, "clone", "-q", "--no-hardlinks", str(ROOT), str(first)])
    # The stages run `python` from PATH: this interpreter's, as under `make test`.
    env = {**os.environ, "PYTHONPATH": str(first),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    # Every key written out: dvc.yaml's params name keys that must be in the file.
    (first / "params.yaml").write_text(yaml.safe_dump(parse_params(tiny_params()).model_dump(mode="json")))
    _run([dvc, "remote", "add", "-d", "local", str(remote)], cwd=first, env=env)
    _run([dvc, "repro"], cwd=first, env=env, timeout=600)
    _run([dvc, "push"], cwd=first, env=env)
    _run([git, "add", "-A"], cwd=first)
    _run([git, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "-m", "tiny run"],
         cwd=first)

    _run([git, "clone", "-q", str(first), str(second)])
    env = {**env, "PYTHONPATH": str(second)}
    _run([dvc, "pull"], cwd=second, env=env)
    for out in ("data/prepared", "data/shards", "models", "reports/eval/predictions"):
        assert any((second / out).iterdir()), out
    assert _digest(first / "models") == _digest(second / "models")
    status = _run([dvc, "status", "dvc.yaml"], cwd=second, env=env).stdout  # the pipeline (not study/)
    assert "Data and pipelines are up to date." in status, status
    repro = _run([dvc, "repro"], cwd=second, env=env).stdout
    assert "Running stage" not in repro, repro
    for stage in ("prepare", "preprocess", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in repro, repro


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
