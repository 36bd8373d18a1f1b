"""A full disk is one line naming the file, on a real full filesystem (a small tmpfs), never retried.

Mounting a tmpfs needs root (CAP_SYS_ADMIN); without it these tests skip and say so.
"""

import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from alexnet.config.params import parse_params
from alexnet.core.atomic import DiskFullError
from alexnet.training.checkpoint import load_checkpoint, save_checkpoint
from tests.tiny import sqlite_store, tiny_params


def _mount(folder: Path, size: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs to fill (needs root): {done.stderr.strip()}")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem at tmp_path/full, unmounted afterwards."""
    folder = _mount(tmp_path / "full", "1m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_checkpoint_save_on_a_full_disk_names_the_path_and_keeps_the_old_one(small_disk):
    path = small_disk / "member-0-key.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.zeros(1000)})
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1_000_000)})  # 4 MB into 1 MiB
    assert str(err.value).startswith(f"{path}: disk full")
    assert "enforce fail" not in str(err.value)
    assert not [p for p in small_disk.iterdir() if p.name.startswith(".tmp-")]
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact and verifies


def test_preprocess_stage_on_a_full_disk_ends_in_one_line_naming_the_file(data, small_disk, tmp_path, capsys):
    from stages.preprocess import main

    params = tmp_path / "params.yaml"
    raw = tiny_params()
    raw["preprocess"]["workers"] = 2  # the error crosses the worker pool back to the stage
    params.write_text(yaml.safe_dump(raw))
    out = small_disk / "shards"
    rc = main(["--params", str(params), "--prepared", str(data / "prepared"), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "img/s" not in line]  # not tqdm's
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"preprocess: {out}/") and "disk full" in err[0], err


@pytest.mark.slow
def test_a_full_disk_fails_the_member_task_without_a_retry(data, small_disk, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.testing.utilities import prefect_test_harness

    from alexnet.pipeline.paths import TrainPaths
    from flows.train_ensemble import run_train_flow

    raw = tiny_params(epochs=1)
    raw["ensemble"] = {"members": 1, "retries": 2}
    raw["tracking"] = {"uri": sqlite_store(tmp_path), "experiment": "disk-full"}
    paths = TrainPaths(root=tmp_path, prepared=data / "prepared", shards=data / "shards", models=tmp_path / "models",
                       history=tmp_path / "history", checkpoints=small_disk / "ckpt",
                       tracking_state=tmp_path / "models" / "tracking.json")
    with prefect_test_harness(server_startup_timeout=180):
        state = run_train_flow(parse_params(raw), paths, return_state=True)
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    err = state.result(raise_on_failure=False)
    assert isinstance(err, DiskFullError) and str(err).startswith(f"{small_disk / 'ckpt'}/member-0-")
    # With retries: 2, a retried full disk would have run the member's task three times.
    assert [(r.name, r.run_count) for r in runs if r.name.startswith("train-member")] == [("train-member-0", 1)]
