"""Ensemble members on device groups and on Ray (issue 12, item 2).

Device-group assignment is pure (no GPU needed); bad pools and unreachable Ray addresses must fail
before any work, in one line naming the key. The slow tests train a 2-member ensemble one member at a
time on the threads runner, then side by side on a local Ray (2 CPUs) and in two processes of the
threads runner, and compare the weights tensor by tensor; no Ray process may outlive a run.
"""

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from alexnet.config.params import parse_params
from alexnet.core.processes import free_port
from alexnet.pipeline.paths import TrainPaths
from alexnet.pipeline.placement import member_devices, members_at_once, ray_resources
from tests.tiny import build_tiny_data, sqlite_store, tiny_params

ROOT = Path(__file__).resolve().parents[1]
EIGHT_GPUS = [f"cuda:{i}" for i in range(8)]
RAY_DAEMONS = ("raylet", "gcs_server")


def ensemble_params(devices, pool=None, members=5, concurrency=4, **ensemble):
    raw = tiny_params()
    raw["model"]["devices"] = devices
    raw["ensemble"] = {"members": members, "concurrency": concurrency, "devices": pool, **ensemble}
    return parse_params(raw)


def train_paths(root: Path, data: Path | None = None) -> TrainPaths:
    data = data or root
    return TrainPaths(root=root, prepared=data / "prepared", shards=data / "shards", models=root / "models",
                      history=root / "history", checkpoints=root / "ckpt", tracking_state=root / "tracking.json")


def test_eight_gpus_two_per_member_run_four_members_on_disjoint_pairs():
    params = ensemble_params(["cuda:0", "cuda:1"], EIGHT_GPUS)
    pairs = [("cuda:0", "cuda:1"), ("cuda:2", "cuda:3"), ("cuda:4", "cuda:5"), ("cuda:6", "cuda:7")]
    assert members_at_once(params) == 4
    # the fifth member takes the first pair again, after the first four: the same group on every rerun
    assert member_devices(params) == [*pairs, pairs[0]]


def test_the_pool_and_the_concurrency_both_bound_the_members_at_once():
    assert members_at_once(ensemble_params(["cuda:0", "cuda:1"], EIGHT_GPUS, concurrency=2)) == 2
    assert members_at_once(ensemble_params(["cuda:0"], EIGHT_GPUS, members=8, concurrency=8)) == 8
    assert members_at_once(ensemble_params(["cuda:0", "cuda:1"], EIGHT_GPUS[:7], concurrency=8)) == 3
    # no pool: every member on model.devices, as before ensemble.devices existed
    params = ensemble_params(["cpu"], None, members=3, concurrency=2)
    assert member_devices(params) == [("cpu",)] * 3 and members_at_once(params) == 2


def test_both_towers_on_one_gpu_take_one_gpu_of_the_pool():
    params = ensemble_params(["cuda:0", "cuda:0"], EIGHT_GPUS[:3], members=3)
    assert member_devices(params) == [("cuda:0", "cuda:0"), ("cuda:1", "cuda:1"), ("cuda:2", "cuda:2")]


def test_cpu_slots_repeat_one_per_tower():
    params = ensemble_params(["cpu", "cpu"], ["cpu"] * 4, members=2, concurrency=2)
    assert member_devices(params) == [("cpu", "cpu")] * 2 and members_at_once(params) == 2


def test_a_member_asks_ray_for_the_distinct_gpus_of_its_placement():
    assert ray_resources(ensemble_params(["cuda:0", "cuda:1"], runner="ray", pool=None)) == {
        "num_cpus": 1, "num_gpus": 2}
    assert ray_resources(ensemble_params(["cuda:0", "cuda:0"], runner="ray", pool=None))["num_gpus"] == 1
    assert ray_resources(ensemble_params(["cpu", "cpu"], runner="ray", pool=None))["num_gpus"] == 0


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def test_a_pool_too_small_for_one_member_fails_before_any_work(tmp_path):
    from flows.train_ensemble import run_train_flow

    params = ensemble_params(["cuda:0", "cuda:1"], ["cuda:0"], members=2)
    with pytest.raises(ValueError) as err:
        run_train_flow(params, train_paths(tmp_path))
    assert one_line(err.value).startswith("ensemble.devices:")
    assert "= 2" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no tracking store, no checkpoint, no model


@pytest.mark.slow
def test_the_train_stage_names_a_too_small_pool_in_one_line(tmp_path):
    data = build_tiny_data(tmp_path / "data")
    raw = tiny_params()
    raw["model"]["devices"] = ["cpu", "cpu"]
    raw["ensemble"] = {"members": 2, "devices": ["cpu"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    flags = [f"--{k}={v}" for k, v in {"prepared": data / "prepared", "shards": data / "shards",
                                       "models": tmp_path / "models", "history": tmp_path / "history",
                                       "checkpoints": tmp_path / "ckpt",
                                       "tracking-state": tmp_path / "tracking.json"}.items()]
    proc = subprocess.run([sys.executable, "-m", "stages.train", "--params", str(tmp_path / "params.yaml"), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("train: ensemble.devices: 1 device(s) cannot hold one member"), line
    assert not (tmp_path / "models").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("address", [f"127.0.0.1:{free_port()}", f"ray://127.0.0.1:{free_port()}",
                                     "192.0.2.1:6379"],  # TEST-NET-1: nothing answers there
                         ids=["refused", "ray-client-refused", "unroutable"])
def test_an_unreachable_ray_address_fails_fast_naming_it(tmp_path, address):
    from flows.train_ensemble import run_train_flow

    params = ensemble_params(["cpu"], None, members=2, runner="ray", ray_address=address)
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        run_train_flow(params, train_paths(tmp_path))
    assert time.monotonic() - start < 15
    assert one_line(err.value).startswith(f"ensemble.ray_address: cannot reach {address} ("), err.value
    assert list(tmp_path.iterdir()) == []
    import ray

    assert not ray.is_initialized()


def ray_daemons() -> set[int]:
    """Ray's daemons started from this process: their session folder ends in this process's pid."""
    found = set()
    for proc in psutil.process_iter(["name", "pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            ours = any(f"_{os.getpid()}/" in arg for arg in proc.info["cmdline"] or [])
            if ours and any((proc.info["name"] or "").startswith(d) for d in RAY_DAEMONS):
                found.add(proc.info["pid"])
    return found


@contextlib.contextmanager
def watching(sample):
    """Everything `sample()` returned while the block ran, sampled every second."""
    seen: set = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(sample())
            stop.wait(1.0)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def record_process(out: Path):
    """An on_epoch hook leaving (member, pid) behind: which process trained which member."""

    def hook(index: int, row: dict[str, float]) -> None:
        (out / f"member-{index}.pid-{os.getpid()}").touch()

    return hook


def train_two_members(root: Path, data: Path, runner: str, concurrency: int) -> tuple[list[dict], set[int], set[int]]:
    """A 2-member ensemble's weights, the processes that trained it, the Ray daemons seen meanwhile."""
    from alexnet.core.layout import MODEL_FILE, member_name
    from flows.train_ensemble import run_train_flow

    raw = tiny_params(epochs=1)
    raw["ensemble"] = {"members": 2, "concurrency": concurrency, "runner": runner}
    raw["tracking"] = {"uri": sqlite_store(root), "experiment": f"{runner}-{concurrency}"}
    (root / "seen").mkdir(parents=True)
    with watching(ray_daemons) as daemons:
        run_train_flow(parse_params(raw), train_paths(root, data), on_epoch=record_process(root / "seen"))
    weights = [torch.load(root / "models" / member_name(i) / MODEL_FILE, weights_only=True)["model"] for i in range(2)]
    seen = sorted(p.name for p in (root / "seen").iterdir())
    assert {name.split(".")[0] for name in seen} == {"member-0", "member-1"}
    return weights, {int(name.split("pid-")[1]) for name in seen}, daemons


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Data, and the weights of the members trained one at a time in this process (threads runner)."""
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("ray-ensemble")
    data = build_tiny_data(root / "data")
    with prefect_test_harness(server_startup_timeout=180):
        weights, pids, daemons = train_two_members(root / "threads-1", data, "threads", 1)
        assert pids == {os.getpid()} and not daemons
        yield {"root": root, "data": data, "weights": weights}


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["ray", "threads"])
def test_two_members_side_by_side_keep_their_weights_bit_for_bit(alone, runner):
    """Side by side on a local Ray (2 CPUs), or in two processes on the threads runner: the solo weights."""
    weights, pids, daemons = train_two_members(alone["root"] / f"{runner}-2", alone["data"], runner, 2)
    assert len(pids) == 2 and os.getpid() not in pids  # each member in a process of its own
    assert bool(daemons) == (runner == "ray"), daemons  # the check below can see Ray's daemons
    for i, (solo, beside) in enumerate(zip(alone["weights"], weights)):
        assert solo.keys() == beside.keys()
        for key in solo:
            assert torch.equal(solo[key], beside[key]), (i, key)
    first, second = weights
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the members' seeds differ

    import ray

    assert not ray.is_initialized()
    deadline = time.monotonic() + 30  # ray.shutdown() stops its daemons; give them time to exit
    while (left := ray_daemons()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes outlived the run: {left}"
