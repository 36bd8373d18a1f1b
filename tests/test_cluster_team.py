"""The team's servers on a host of their own (docs/scale-out.md, "A cluster on one machine").

`head` runs PostgreSQL, then MLflow (artifacts served) and Prefect with `python -m alexnet.servers
start --host`; `node1` runs the pipeline in a clone of the repository, logging to them, and pushes
its DVC outputs to a remote on the head over HTTP (MLflow's served artifact store, with PUT);
`node2` clones that repository, `dvc pull`s, and DVC finds everything up to date. When the head
drops off the network in the middle of training, training goes on, and `python -m alexnet.tracking
sync` afterwards logs every epoch the server missed, once.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cluster import cluster_of
from cluster.docs import command
from cluster.team import postgres_on

from alexnet.config.params import parse_params
from alexnet.tracking.runs import EPOCH_METRICS
from tests.tiny import tiny_params

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[1]
STAGE = ["python", "-m", "stages.train", "--params", "params.yaml", "--prepared", "data/prepared", "--shards",
         "data/shards", "--models", "models", "--history", "reports/train", "--checkpoints", "checkpoints",
         "--tracking-state", "models/tracking.json"]


def _bash(script: str, *argv: str) -> list[str]:
    return ["bash", "-euo", "pipefail", "-c", script, "bash", *argv]


def _client_env(head_ip: str) -> str:
    """The documented client environment, then the command given as arguments."""
    return command("team-client") + 'exec "$@"\n'


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The three hosts, the head running PostgreSQL and the team's servers."""
    tmp = tmp_path_factory.mktemp("team")
    with cluster_of("head", "node1", "node2") as hosts:
        head = hosts["head"]
        with postgres_on(head, tmp / "pg") as db_url:
            (tmp / "servers").mkdir()
            started = head.run(_bash(command("team-servers")), env={"HEAD_IP": head.ip, "ALEXNET_DB_URL": db_url},
                               cwd=tmp / "servers", timeout=300, check=False)
            logs = "\n".join(p.read_text()[-2000:] for p in (tmp / "servers" / ".servers" / "logs").glob("*.log"))
            assert started.returncode == 0, f"{started.stderr}\n{logs}"
            assert f"MLFLOW_TRACKING_URI=http://{head.ip}:5000" in started.stdout
            for host in hosts.values():
                host.env = {**host.env, "HEAD_IP": head.ip, "DVC_NO_ANALYTICS": "1"}
            yield hosts, tmp


def _on_client(host, cmd: list[str], cwd: Path, timeout: float = 400, env: dict | None = None):
    return host.run(_bash(_client_env(host.env["HEAD_IP"]), *cmd), cwd=cwd, timeout=timeout, env=env)


def test_a_clone_on_another_host_pulls_the_pipeline_from_the_head_and_finds_it_up_to_date(team):
    hosts, tmp = team
    node1, node2, head = hosts["node1"], hosts["node2"], hosts["head"]
    first, second = tmp / "first", tmp / "second"
    node1.run(["git", "clone", "-q", "--no-hardlinks", ROOT, first])
    env = {"PYTHONPATH": str(first)}  # the clone's code, which dvc.yaml hashes
    (first / "params.yaml").write_text(yaml.safe_dump(parse_params(tiny_params(epochs=2)).model_dump(mode="json")))
    _on_client(node1, ["dvc", "repro"], first, env=env)
    node1.run(_bash(command("dvc-remote")), cwd=first, env=env)
    node1.run(["git", "add", "-A"], cwd=first)
    node1.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "-m", "run"],
              cwd=first)
    # The DVC objects are on the head, in MLflow's served artifact folder.
    assert list((tmp / "servers" / ".servers" / "mlartifacts" / "dvc" / "files" / "md5").rglob("*.dir"))
    # The run logged to the head: its member run has every epoch, and Prefect knows the flow.
    runs = _read_runs(head, "train_loss")
    assert any(steps == [1, 2] for steps in runs.values()), runs
    assert "train-ensemble" in _flow_names(head)

    pulled = node2.run(_bash(command("team-client") + command("dvc-clone")), cwd=tmp,
                       env={"PYTHONPATH": str(second), "REPO": str(first), "CLONE": str(second)}).stdout
    assert "Data and pipelines are up to date" in pulled, pulled
    assert (second / "models" / "member-0" / "model.pt").exists()
    repro = node2.run(["dvc", "repro"], cwd=second, env={"PYTHONPATH": str(second)}).stdout
    assert "Running stage" not in repro, repro
    for stage in ("prepare", "preprocess", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in repro, repro


def test_training_through_a_server_outage_loses_no_metric_after_sync(team, data):
    hosts, tmp = team
    node1, head = hosts["node1"], hosts["head"]
    project = tmp / "outage"
    project.mkdir()
    (project / "data").symlink_to(data, target_is_directory=True)
    raw = tiny_params(epochs=4)
    raw["tracking"] = {"experiment": "outage"}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    # MLflow on the head; Prefect is the stage's own here (see docs/scale-out.md: with Prefect's API
    # on the fallen host, every Prefect call retries for minutes).
    own_prefect = command("team-client") + 'unset PREFECT_API_URL\nexec "$@"\n'
    proc = node1.popen(_bash(own_prefect, *STAGE), project / "train.log", cwd=project)
    deadline = time.monotonic() + 300
    while "epoch 1/4" not in (project / "train.log").read_text() and proc.poll() is None:
        assert time.monotonic() < deadline, (project / "train.log").read_text()[-3000:]
        time.sleep(0.2)
    subprocess.run(["ip", "-n", head.ns, "link", "set", "eth0", "down"], check=True)  # the head drops off
    try:
        assert proc.wait(timeout=300) == 0, (project / "train.log").read_text()[-4000:]
    finally:
        head.up()
    log = (project / "train.log").read_text()
    assert "per-epoch logging to" in log and "failed" in log  # the outage was seen, and only warned about
    missing = _read_runs(head, "train_loss", experiment="outage")
    assert missing and all(steps != [1, 2, 3, 4] for steps in missing.values()), missing
    synced = _on_client(node1, ["bash", "-c", command("tracking-sync")], project).stdout
    assert "metric value(s) logged" in synced, synced
    for key in set(EPOCH_METRICS) - {"images_per_s"}:  # a timing: logged live, not kept in the files
        runs = _read_runs(head, key, experiment="outage")
        assert [steps for steps in runs.values() if steps] == [[1, 2, 3, 4]], (key, runs)
    again = _on_client(node1, ["bash", "-c", command("tracking-sync")], project).stdout
    assert "member-0: 0 metric value(s) logged" in again, again


READ_RUNS = """
import json, sys
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1])
found = {}
for experiment in client.search_experiments():
    if sys.argv[3] and experiment.name.split(".")[0] != sys.argv[3]:  # <experiment>.<dataset>
        continue
    for run in client.search_runs([experiment.experiment_id]):
        found[run.info.run_name + "/" + run.info.run_id[:6]] = sorted(
            m.step for m in client.get_metric_history(run.info.run_id, sys.argv[2]))
print(json.dumps(found))
"""


def _read_runs(head, key: str, experiment: str = "") -> dict[str, list[int]]:
    """Each run's steps of metric `key`, read from the head (where the server listens)."""
    import json

    done = head.run(["python", "-c", READ_RUNS, f"http://{head.ip}:5000", key, experiment])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _flow_names(head) -> set[str]:
    script = ("import json, sys, urllib.request; r = urllib.request.Request(sys.argv[1] + '/flows/filter', "
              "data=b'{}', method='POST', headers={'Content-Type': 'application/json'}); "
              "print(json.dumps([f['name'] for f in json.load(urllib.request.urlopen(r, timeout=10))]))")
    import json

    return set(json.loads(head.run(["python", "-c", script, f"http://{head.ip}:4200/api"]).stdout))

