"""Data the train stage can check before it starts is checked before it starts: once, in one line, with no
Prefect server started, no task retried and no traceback (a damaged shard, mean.npy or pca.json; a crop
larger than the stored images). The preprocess stage refuses shards that cannot fit its disk."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alexnet.config.params import parse_params
from alexnet.core.cli import InputError
from alexnet.data.budget import check_disk_for_shards
from tests.tiny import build_tiny_data, sqlite_store, tiny_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("preflight") / "data")


def train(data: Path, tmp_path: Path, stored_size: int = 72, **model) -> subprocess.CompletedProcess:
    raw = tiny_params(epochs=1)
    raw["model"].update(model)
    raw["preprocess"]["stored_size"] = stored_size
    raw["tracking"] = {"uri": sqlite_store(tmp_path)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "stages.train", "--params", str(tmp_path / "params.yaml"), "--prepared",
           str(data / "prepared"), "--shards", str(data / "shards"), "--models", str(tmp_path / "models"), "--history",
           str(tmp_path / "history"), "--checkpoints", str(tmp_path / "ckpt"), "--tracking-state",
           str(tmp_path / "tracking.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def refused_before_work(done: subprocess.CompletedProcess, line: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == line, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Prefect API server" not in done.stderr and "retry" not in done.stderr


@pytest.mark.parametrize("victim", ["train-00000.npy", "mean.npy", "pca.json"])
def test_a_damaged_file_of_the_shards_is_refused_before_training(data, tmp_path, victim):
    path = data / "shards" / victim
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF  # same size: only the sha256 can tell
    path.write_bytes(bytes(damaged))
    try:
        done = train(data, tmp_path)
    finally:
        path.write_bytes(original)
    assert f"{path}: sha256" in done.stderr.strip().splitlines()[-1], done.stderr[-3000:]
    refused_before_work(done, done.stderr.strip().splitlines()[-1])


def test_a_crop_larger_than_the_stored_images_is_refused_naming_the_key(data, tmp_path):
    # The params say 96 px; the shards, built earlier (the stage run outside DVC), store 72.
    done = train(data, tmp_path, stored_size=96, crop_size=80)
    refused_before_work(done, f"train: {tmp_path / 'params.yaml'}: model.crop_size: 80 is larger than the 72 px the "
                              f"shards store ({data / 'shards' / 'manifest.json'}); lower it, or preprocess with "
                              "preprocess.stored_size >= 80")


def test_shards_that_cannot_fit_the_disk_are_refused_before_any_image_is_read(data, tmp_path):
    params = parse_params(tiny_params())  # 72 px raw: 15.6 KB an image
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs a small filesystem (mount -t tmpfs): {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(InputError, match=rf"^{small / 'shards'}: the shards need about 0\.0 GiB \(\d+ images of "
                                             r"72x72, raw\) but its disk has 0\.0 GiB free; free space or point "):
            check_disk_for_shards(params.preprocess, data / "prepared", small / "shards")
        assert not (small / "shards").exists()
        check_disk_for_shards(params.preprocess, data / "prepared", tmp_path / "shards")  # room: no complaint
    finally:
        subprocess.run(["umount", str(small)], check=True)
