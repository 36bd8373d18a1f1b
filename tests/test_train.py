"""Training end to end on a tiny synthetic set: the loss falls, and a killed run resumes exactly."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny import build_tiny_data, tiny_params, train_command

from alexnet.checkpoint import load_checkpoint
from alexnet.config import parse_params
from alexnet.member import MemberPaths, run_key, train_member

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("train-data"))


def _dirs(data, out):
    return {"prepared_dir": data / "prepared", "shards_dir": data / "shards", "models_dir": out / "models",
            "history_dir": out / "history", "checkpoints_dir": out / "checkpoints"}


def test_tiny_run_learns_and_writes_its_outputs(data, tmp_path):
    params = parse_params(tiny_params(epochs=6))
    result = train_member(0, params, progress=False, **_dirs(data, tmp_path))
    losses = [row["train_loss"] for row in load_checkpoint(
        MemberPaths.of(0, tmp_path / "models", tmp_path / "history", tmp_path / "checkpoints",
                       result["run_key"]).checkpoint)["history"]]
    assert len(losses) == 6
    assert min(losses[-2:]) < 0.8 * losses[0], losses
    history = (tmp_path / "history" / "member-0.csv").read_text().splitlines()
    assert history[0].startswith("epoch,lr,train_loss") and len(history) == 7
    exported = load_checkpoint(result["model"])
    assert exported["meta"]["num_classes"] == 3
    assert exported["meta"]["params"]["train.epochs"] == 6
    assert len(exported["meta"]["data_version"]) >= 8


def test_a_finished_member_is_not_trained_again(data, tmp_path):
    params = parse_params(tiny_params(epochs=1))
    train_member(0, params, progress=False, **_dirs(data, tmp_path))
    model = tmp_path / "models" / "member-0" / "model.pt"
    first = load_checkpoint(model)["model"]
    seen = []
    train_member(0, params, progress=False, on_epoch=seen.append, **_dirs(data, tmp_path))
    assert seen == []  # no epoch ran
    second = load_checkpoint(model)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def _train_process(params_file, data, out):
    return subprocess.Popen(train_command(params_file, data, out),
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_bit_identical_to_an_uninterrupted_one(data, tmp_path):
    raw = tiny_params(epochs=4)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    key = run_key(params, 0, data / "shards")

    whole = tmp_path / "whole"
    proc = _train_process(params_file, data, whole)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    broken = tmp_path / "broken"
    checkpoint = MemberPaths.of(0, broken / "models", broken / "history", broken / "checkpoints", key).checkpoint
    proc = _train_process(params_file, data, broken)
    deadline = time.monotonic() + 600
    # Kill it (SIGKILL: no cleanup) once epoch 2 is checkpointed, i.e. inside epoch 3.
    while not (checkpoint.exists() and load_checkpoint(checkpoint)["epoch"] >= 2):
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "models" / "member-0" / "model.pt").exists()
    assert load_checkpoint(checkpoint)["epoch"] in (2, 3)

    proc = _train_process(params_file, data, broken)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    a = load_checkpoint(whole / "models" / "member-0" / "model.pt")["model"]
    b = load_checkpoint(broken / "models" / "member-0" / "model.pt")["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    # Same curves too (all but the timing column).
    assert _curves(whole / "history" / "member-0.csv") == _curves(broken / "history" / "member-0.csv")


def _curves(path):
    import csv

    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader(f)]
