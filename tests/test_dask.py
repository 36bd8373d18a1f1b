"""preprocess.engine=dask: the local engine's bytes, shards retried when a task or its worker fails,
and an address with no scheduler named in one line."""

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml

from alexnet.config.sections import PreprocessParams
from alexnet.core.layout import MANIFEST_FILE
from alexnet.core.processes import free_port
from alexnet.data import preprocess as stage

# dask[distributed] is in the dev extra (make install): a missing one is an error here, not a skip.
pytestmark = pytest.mark.slow  # each test starts worker processes or a stage: tens of seconds on 2 cores

# Workers unpickle the failing builds below by value: they cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPEC = dict(stored_size=32, format="raw", shard_size=3, workers=2)
BUILD = stage.build_shard  # the real one, to put back after a failing run


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file the stage leaves (shards, labels, stats partials, ledgers, mean, PCA, manifest)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def local(tiny_prepared, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local")
    stage.preprocess(tiny_prepared, out, PreprocessParams(**SPEC), progress=False)
    return outputs(out)


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as c:
        yield c


def test_local_dask_cluster_gives_the_local_bytes(tiny_prepared, local, tmp_path):
    # dask_address null: the stage starts (and closes) its own cluster of `workers` processes
    stage.preprocess(tiny_prepared, tmp_path, PreprocessParams(**SPEC, engine="dask"), progress=False)
    got = outputs(tmp_path)
    assert MANIFEST_FILE in got and len(got) > 10
    assert got == local


def fail_once(task):
    """A build that fails on its first attempt at two shards: raising, and killing its worker.
    (On a worker, `stage` is the real module: stage.build_shard is the real build.)"""
    marker = task.out_dir / f".attempted-{task.name}"
    if task.name in ("train-00000", "train-00001") and not marker.exists():
        marker.touch()
        if task.name == "train-00000":
            raise OSError("disk on fire")
        os._exit(1)  # the worker process dies mid-shard
    return stage.build_shard(task)


def test_failed_task_and_dead_worker_are_retried(tiny_prepared, local, cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "build_shard", fail_once)
    spec = PreprocessParams(**SPEC, engine="dask", dask_address=cluster.scheduler_address)
    stage.preprocess(tiny_prepared, tmp_path, spec, progress=False)
    attempted = sorted(p.name for p in tmp_path.glob(".attempted-*"))
    assert attempted == [".attempted-train-00000", ".attempted-train-00001"]
    for p in tmp_path.glob(".attempted-*"):
        p.unlink()
    assert outputs(tmp_path) == local


def fail_always(task):
    if task.name == "train-00002":
        raise OSError("disk on fire")
    return stage.build_shard(task)


def test_finished_shards_are_kept_after_a_failed_run(tiny_prepared, local, cluster, tmp_path, monkeypatch):
    spec = PreprocessParams(**SPEC, engine="dask", dask_address=cluster.scheduler_address)
    monkeypatch.setattr(stage, "build_shard", fail_always)
    with pytest.raises(OSError, match="disk on fire"):
        stage.preprocess(tiny_prepared, tmp_path, spec, progress=False)
    assert not (tmp_path / MANIFEST_FILE).exists()
    ledgers = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.done.json")}
    assert "train-00000.done.json" in ledgers and "train-00002.done.json" not in ledgers
    monkeypatch.setattr(stage, "build_shard", BUILD)
    stage.preprocess(tiny_prepared, tmp_path, spec, progress=False)
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in ledgers} == ledgers  # kept, not rebuilt
    assert outputs(tmp_path) == local


def test_unreachable_address_fails_fast_in_one_line(tiny_prepared, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    params = tmp_path / "params.yaml"
    # Valid params but the address: the crop must fit the stored size and be one the network can pool.
    params.write_text(yaml.safe_dump({"preprocess": {**SPEC, "stored_size": 64, "engine": "dask",
                                                     "dask_address": address}, "model": {"crop_size": 64}}))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stages.preprocess", "--params", str(params), "--prepared",
                           str(tiny_prepared), "--out", str(tmp_path / "shards")], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # The stage's INFO log lines, then the error: one line, naming the key, no traceback.
    errors = [line for line in proc.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and errors[0].startswith(f"preprocess: preprocess.dask_address={address!r}: "), errors
    assert time.monotonic() - start < 60
    assert not (tmp_path / "shards" / MANIFEST_FILE).exists()
