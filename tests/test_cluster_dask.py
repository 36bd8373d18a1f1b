"""The preprocess stage on a Dask cluster of three network hosts: the scheduler on `head`, one
worker on each of `node1` and `node2`, `preprocess.engine: dask` with the scheduler's address
(docs/scale-out.md, "A cluster on one machine"). The shards are byte-identical to the local engine's,
also when node2 goes down while it builds a shard: the scheduler gives that shard to node1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cluster import cluster_of
from cluster.docs import command
from cluster.projects import FAULTS, wait_for_file
from test_dask import outputs

from alexnet.config.sections import PreprocessParams
from alexnet.data import preprocess as stage

pytestmark = pytest.mark.cluster
SPEC = dict(stored_size=64, format="raw", shard_size=3, workers=2)  # 6 train shards of the tiny tree


@pytest.fixture(scope="module")
def local(tiny_prepared, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("dask-local")
    stage.preprocess(tiny_prepared, out, PreprocessParams(**SPEC), progress=False)
    return outputs(out)


def _start_cluster(hosts, logs: Path, fault: dict[str, str] | None = None) -> None:
    """The documented scheduler on head and a worker on node1 and node2; returns once both workers joined."""
    head = hosts["head"]
    head.bash(command("dask-scheduler"), logs / "scheduler.log", env={"HEAD_IP": head.ip})
    for name in ("node1", "node2"):
        env = {"HEAD_IP": head.ip, "NODE_IP": hosts[name].ip}
        if fault and name in fault:
            env |= {"ALEXNET_CLUSTER_FAULT": fault[name], "PYTHONPATH": f"{FAULTS}:{hosts[name].env['PYTHONPATH']}"}
        hosts[name].bash(command("dask-worker"), logs / f"{name}.log", env=env)
    waited = head.run(["python", "-c", "import sys; from distributed import Client; "
                       "c = Client(sys.argv[1], timeout=120); c.wait_for_workers(2, timeout=120); "
                       "print(sorted(w['host'] for w in c.scheduler_info()['workers'].values()))",
                       f"tcp://{head.ip}:8786"], timeout=300)
    assert waited.stdout.strip() == str(sorted(hosts[n].ip for n in ("node1", "node2"))), waited.stdout


def _run_stage(host, project: Path, prepared: Path, head_ip: str) -> None:
    params = yaml.safe_load(command("dask-params"))
    params["preprocess"] = {**SPEC, **params["preprocess"]}
    params["model"] = {"crop_size": 64}
    (project / "params.yaml").write_text(yaml.safe_dump(params).replace("$HEAD_IP", head_ip))
    host.run(["python", "-m", "stages.preprocess", "--params", project / "params.yaml", "--prepared", prepared,
              "--out", project / "shards"], timeout=300)


def test_shards_built_on_two_remote_workers_equal_the_local_ones(tiny_prepared, local, tmp_path):
    with cluster_of("head", "node1", "node2") as hosts:
        _start_cluster(hosts, tmp_path)
        _run_stage(hosts["head"], tmp_path, tiny_prepared, hosts["head"].ip)
        built = _shards_by_host(hosts["head"])
    assert outputs(tmp_path / "shards") == local
    assert set(built) == {hosts["node1"].ip, hosts["node2"].ip} and all(built.values()), built
    assert sum(len(keys) for keys in built.values()) == sum(name.endswith(".done.json") for name in local)


def _shards_by_host(head) -> dict[str, list[str]]:
    """The shard tasks each worker ran, from the workers' own transition logs."""
    script = ("import json, sys; from distributed import Client; c = Client(sys.argv[1], timeout=60); "
              "ran = c.run(lambda dask_worker: sorted({str(t[0]) for t in dask_worker.state.log "
              "if str(t[0]).startswith('shard-') and t[2] == 'memory'})); "
              "print(json.dumps({a.split('://')[1].rsplit(':', 1)[0]: k for a, k in ran.items()}))")
    return json.loads(head.run(["python", "-c", script, f"tcp://{head.ip}:8786"]).stdout)


def test_a_worker_host_going_down_mid_shard_still_gives_the_local_bytes(tiny_prepared, local, tmp_path):
    stalls = tmp_path / "stalls"
    stalls.mkdir()
    with cluster_of("head", "node1", "node2") as hosts:
        _start_cluster(hosts, tmp_path, fault={"node2": f"shard:{stalls}"})
        import threading

        def take_node2_down() -> None:
            if wait_for_file(stalls, "stalled-*", timeout=240) is not None:
                hosts["node2"].down()

        killer = threading.Thread(target=take_node2_down, daemon=True)
        killer.start()
        _run_stage(hosts["head"], tmp_path, tiny_prepared, hosts["head"].ip)
        killer.join(timeout=10)
        assert list(stalls.iterdir()), "node2 never got a shard to build"
        assert not hosts["node2"].pids()  # it was down while the stage finished
    assert outputs(tmp_path / "shards") == local
