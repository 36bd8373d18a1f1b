"""DDP replicas of one member under torchrun (gloo, [cpu, cpu] replicas, the tiny network and data).

The ranks run as torchrun starts them, in real processes; nothing is mocked.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from alexnet.config.params import ParamsError, parse_params
from alexnet.core.layout import MODEL_FILE, member_name
from alexnet.tracking.lifecycle import experiment_name
from alexnet.training.checkpoint import load_checkpoint
from alexnet.training.distributed import check_fits, torchrun_command
from alexnet.training.member import MemberPaths, run_key, train_member
from tests.tiny import sqlite_store, tiny_params

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
# One process and two ranks compute the same sums in another order (half batches through the
# convolutions, two partial gradients averaged): after EPOCHS x 6 steps the weights (|w| < 0.5)
# must agree to this; a wrong slice, draw or average moves them by orders of magnitude more.
ATOL, RTOL = 1e-6, 1e-5

# A rank: trains member 0 in the process group torchrun set up. With kill_after=N, rank 1 of the
# first attempt SIGKILLs itself at its first training forward after epoch N's checkpoint.
_RANK_SCRIPT = """
import logging, os, signal, sys, yaml
from pathlib import Path
import torch
logging.basicConfig(level=logging.WARNING)
logging.getLogger("alexnet").setLevel(logging.INFO)
from alexnet.config.params import parse_params
from alexnet.training.distributed import process_group
from alexnet.training.member import train_member
raw = yaml.safe_load(Path(sys.argv[1]).read_text())
data, out, kill_after = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
params = parse_params(raw)
armed = []

def on_epoch(row):
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if ranks.rank == 1 and first_attempt and int(row["epoch"]) == kill_after:
        armed.append(True)

def kill_in_next_epoch(module, args, output):
    if armed and module.training:
        print(f"rank 1 killing itself inside epoch {kill_after + 1}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

torch.nn.modules.module.register_module_forward_hook(kill_in_next_epoch)
with process_group(params.model.devices, params.train.replicas, params.train.rendezvous_timeout) as ranks:
    train_member(0, params, prepared_dir=data / "prepared", shards_dir=data / "shards", models_dir=out / "models",
                 history_dir=out / "history", checkpoints_dir=out / "checkpoints", on_epoch=on_epoch, progress=False)
"""


def _raw(**train):
    raw = tiny_params(**{"epochs": EPOCHS, **train})
    raw["model"] = {**raw["model"], "dropout": 0.0, "devices": ["cpu", "cpu"]}
    return raw


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _torchrun(tmp: Path, data: Path, out: Path, raw: dict, *, restarts: int = 0, kill_after: int = 0):
    params_file, script = tmp / f"{out.name}.yaml", tmp / "rank.py"
    params_file.write_text(yaml.safe_dump(raw))
    script.write_text(_RANK_SCRIPT)
    cmd = torchrun_command(2, restarts, "x", [])[:-2] + [str(script), str(params_file), str(data), str(out),
                                                         str(kill_after)]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    (tmp / f"{out.name}.log").write_text(done.stdout + done.stderr)
    return done


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "models" / member_name(0) / MODEL_FILE)["model"]


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory):
    """An unbroken 2-rank run of member 0."""
    tmp = tmp_path_factory.mktemp("ddp-whole")
    done = _torchrun(tmp, data, tmp / "whole", _raw(replicas=2))
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp / "whole"


def _history(out: Path) -> list[dict]:
    key = load_checkpoint(out / "models" / member_name(0) / MODEL_FILE)["meta"]["run_key"]
    return load_checkpoint(MemberPaths.of(0, out / "models", out / "history", out / "checkpoints",
                                          key).checkpoint)["history"]


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(data, two_ranks, tmp_path):
    one = tmp_path / "one"
    train_member(0, parse_params(_raw(replicas=1)), prepared_dir=data / "prepared", shards_dir=data / "shards",
                 models_dir=one / "models", history_dir=one / "history", checkpoints_dir=one / "checkpoints",
                 progress=False)
    a, b = _weights(one), _weights(two_ranks)
    assert a.keys() == b.keys()  # the state_dict's names, not DDP's "module." ones
    worst = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert all(torch.allclose(a[k], b[k], atol=ATOL, rtol=RTOL) for k in a), worst
    h1, h2 = _history(one), _history(two_ranks)
    assert len(h1) == len(h2) == EPOCHS
    for r1, r2 in zip(h1, h2, strict=True):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["train_top1_err"] == pytest.approx(r1["train_top1_err"])
        assert r2["val_top1_err"] == pytest.approx(r1["val_top1_err"])  # the val shares gathered in order
        assert r2["grad_bytes_per_step"] == 4 * sum(t.numel() for t in a.values())


@pytest.mark.slow
def test_a_killed_rank_restarts_and_ends_bit_identical_to_an_unbroken_run(data, two_ranks, tmp_path):
    out = tmp_path / "broken"
    done = _torchrun(tmp_path, data, out, _raw(replicas=2), restarts=1, kill_after=1)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rank 1 killing itself inside epoch 2" in done.stdout + done.stderr  # the fault did fire
    assert "resuming from" in done.stderr  # and the restarted ranks took the checkpoint
    a, b = _weights(two_ranks), _weights(out)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    strip = [{k: v for k, v in row.items() if k != "images_per_s"} for row in _history(two_ranks)]
    assert strip == [{k: v for k, v in row.items() if k != "images_per_s"} for row in _history(out)]


@pytest.fixture(scope="module")
def stage_run(data, tmp_path_factory):
    """The train stage with train.replicas: 2: it launches torchrun itself; MLflow on SQLite."""
    root = tmp_path_factory.mktemp("ddp-stage")
    raw = _raw(replicas=2, epochs=2)
    raw["tracking"] = {"uri": sqlite_store(root), "experiment": "test-ddp"}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "stages.train", "--params", str(root / "params.yaml"),
           "--prepared", str(data / "prepared"), "--shards", str(data / "shards"), "--models", str(root / "models"),
           "--history", str(root / "history"), "--checkpoints", str(root / "checkpoints"),
           "--tracking-state", str(root / "models" / "tracking.json")]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return root, raw, done


@pytest.mark.slow
def test_a_two_rank_member_has_one_mlflow_run_and_one_checkpoint_writer(stage_run):
    root, raw, done = stage_run
    client = MlflowClient(raw["tracking"]["uri"])
    params = parse_params(raw)
    experiment = client.get_experiment_by_name(experiment_name(params.tracking, params.data))
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["ensemble-1", member_name(0)], names  # the parent and one run for the member
    member = next(r for r in runs if r.info.run_name == member_name(0))
    steps = client.get_metric_history(member.info.run_id, "train_loss")
    assert [m.step for m in steps] == [1, 2]  # each epoch logged once, not once per rank
    writes = [line for line in done.stderr.splitlines() if "wrote checkpoint" in line]
    assert len(writes) == 2 and all("rank 0 of 2" in line for line in writes), writes
    assert (root / "models" / member_name(0) / MODEL_FILE).exists()


@pytest.mark.slow
def test_resuming_with_another_world_size_is_refused(data, stage_run):
    root, raw, _ = stage_run
    params = parse_params({**raw, "train": {**raw["train"], "replicas": 1}})
    assert run_key(params, 0, data / "shards") == run_key(parse_params(raw), 0, data / "shards")
    with pytest.raises(ValueError, match="world size 2, this job has world size 1.*another world size is refused"):
        train_member(0, params, prepared_dir=data / "prepared", shards_dir=data / "shards",
                     models_dir=root / "models", history_dir=root / "history", checkpoints_dir=root / "checkpoints",
                     progress=False)


@pytest.mark.slow
def test_a_rank_that_cannot_reach_the_rendezvous_fails_fast_naming_the_setting(data, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = _raw(replicas=2, rendezvous_timeout=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**_env(), "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    cmd = [sys.executable, "-m", "stages.train", "--params", str(tmp_path / "params.yaml"),
           "--prepared", str(data / "prepared"), "--shards", str(data / "shards"), "--models", str(tmp_path / "m"),
           "--history", str(tmp_path / "h"), "--checkpoints", str(tmp_path / "c"),
           "--tracking-state", str(tmp_path / "t.json")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "train.rendezvous_timeout=3" in lines[0], lines[0]


def test_torchrun_with_other_ranks_per_node_than_train_replicas_is_refused(data, tmp_path):
    raw = _raw(replicas=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**_env(), "RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}
    cmd = [sys.executable, "-m", "stages.train", "--params", str(tmp_path / "params.yaml"),
           "--prepared", str(data / "prepared"), "--shards", str(data / "shards"), "--models", str(tmp_path / "m"),
           "--history", str(tmp_path / "h"), "--checkpoints", str(tmp_path / "c"),
           "--tracking-state", str(tmp_path / "t.json")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("train: train.replicas: 2, but torchrun started 4 rank(s) on this node "
                                   "(--nproc-per-node); make them equal")


def test_more_replicas_than_gpus_is_refused_naming_train_replicas():
    with pytest.raises(ValueError, match=r"^train\.replicas: 3 replicas x 2 device\(s\) each need 6 CUDA devices, "
                                         r"this node sees 4$"):
        check_fits(3, ("cuda:0", "cuda:1"), 4)
    check_fits(2, ("cuda:0", "cuda:1"), 4)
    check_fits(64, ("cpu", "cpu"), 0)  # CPU replicas share the cores


def test_a_global_batch_the_ranks_cannot_split_evenly_is_refused():
    with pytest.raises(ParamsError, match=r"train\.batch_size: 9 is not divisible by train\.replicas=2"):
        parse_params(tiny_params(batch_size=9, replicas=2))


def test_the_stage_launches_torchrun_with_an_argument_list():
    cmd = torchrun_command(2, 1, "stages.train", ["--params", "p y.yaml"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       "--max-restarts", "1", "-m", "stages.train", "--params", "p y.yaml"]


def test_bf16_compression_halves_the_bytes_each_rank_all_reduces():
    from alexnet.training.distributed import grad_bytes_per_step

    layer = torch.nn.Linear(10, 3)  # 33 parameters
    assert grad_bytes_per_step(layer, "none") == 4 * 33
    assert grad_bytes_per_step(layer, "bf16") == 2 * 33
