"""Training end to end on a tiny synthetic set: the loss falls, and a killed run resumes exactly."""

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from alexnet.config.params import parse_params
from alexnet.config.sections import TrainParams
from alexnet.training.checkpoint import load_checkpoint
from alexnet.training.loop import RunSpec, TrainData, TrainingStopped, fit
from alexnet.training.member import MemberPaths, run_key, train_member
from alexnet.training.optim import StepSchedule, warmup_factor
from tests.tiny import EPOCH_LINE, tiny_params, train_command

ROOT = Path(__file__).resolve().parents[1]


def _dirs(data, out):
    return {"prepared_dir": data / "prepared", "shards_dir": data / "shards", "models_dir": out / "models",
            "history_dir": out / "history", "checkpoints_dir": out / "checkpoints"}


@pytest.mark.slow
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


@pytest.mark.slow
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


class _Epochs:
    """In-memory training batches by epoch: what fit needs of a TrainLoader."""

    def __init__(self, seed):
        gen = torch.Generator().manual_seed(seed)
        self.batches = [(torch.randn(4, 3, 2, 2, generator=gen), torch.randint(0, 3, (4,), generator=gen))
                        for _ in range(3)]  # fmt: skip

    def epoch(self, epoch, start_batch=0):
        return iter((self.batches[epoch % 3 :] + self.batches[: epoch % 3])[start_batch:])

    def __len__(self):
        return len(self.batches)


class _Stop(Exception):
    pass


def _fit_small(checkpoint, epochs=6, on_epoch=None, should_stop=None, **train):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(12, 3))
    data = TrainData(train=_Epochs(1), val=_Epochs(2).batches)
    train = TrainParams(**{"epochs": epochs, "lr": 0.1, "lr_patience": 0, "lr_drops": 5, **train})
    run = RunSpec(checkpoint, "cpu", "fp32", progress=False, should_stop=should_stop)
    history = fit(model, data, train, run, on_epoch=on_epoch)
    return model.state_dict(), history


def test_fit_on_built_objects_resumes_exactly_after_a_crash(tmp_path):
    # fit takes any batches shaped like the loaders; a run stopped after an epoch's checkpoint and
    # started again continues with the same velocity, schedule and dropout draws as an unbroken one.
    whole, whole_history = _fit_small(tmp_path / "whole.pt")

    def crash(row):
        if row["epoch"] == 3:
            raise _Stop

    with pytest.raises(_Stop):
        _fit_small(tmp_path / "broken.pt", on_epoch=crash)
    resumed, resumed_history = _fit_small(tmp_path / "broken.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    strip = [{k: v for k, v in row.items() if k != "images_per_s"} for row in whole_history]
    assert strip == [{k: v for k, v in row.items() if k != "images_per_s"} for row in resumed_history]
    assert len({row["lr"] for row in whole_history}) > 1  # the schedule dropped the rate on the way


@pytest.mark.parametrize("train", [{}, {"schedule": "step", "lr_steps": (2, 4), "warmup_epochs": 3.0}],
                         ids=["plateau", "step-with-warmup"])
def test_a_stop_request_checkpoints_mid_epoch_and_the_rerun_ends_as_an_unbroken_run(tmp_path, train):
    # A stop (SIGTERM, say) lands after batch 2 of epoch 3 (3 batches an epoch): the checkpoint holds the
    # epoch in progress, so the rerun starts with batch 3 of epoch 3, with the same velocity, rates,
    # dropout draws and running sums as the unbroken run: the same weights and the same history.
    whole, whole_history = _fit_small(tmp_path / "whole.pt", **train)
    steps = iter(range(100))
    with pytest.raises(TrainingStopped, match="stopped at batch 2 of epoch 3") as stopped:
        _fit_small(tmp_path / "stopped.pt", should_stop=lambda: next(steps) == 7, **train)
    assert (stopped.value.epoch, stopped.value.batch) == (3, 2)
    saved = load_checkpoint(tmp_path / "stopped.pt")
    assert (saved["epoch"], saved["partial"]["batches"], len(saved["history"])) == (2, 2, 2)
    resumed, resumed_history = _fit_small(tmp_path / "stopped.pt", **train)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    strip = [{k: v for k, v in row.items() if k != "images_per_s"} for row in whole_history]
    assert strip == [{k: v for k, v in row.items() if k != "images_per_s"} for row in resumed_history]
    if train:  # the stop lands inside the warm-up (9 steps); the step schedule's drops ran too
        assert [row["lr"] for row in whole_history] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
        no_warmup, _ = _fit_small(tmp_path / "no-warmup.pt", **{**train, "warmup_epochs": 0.0})
        assert not all(torch.equal(whole[k], no_warmup[k]) for k in whole)


def test_val_every_skips_the_val_pass_but_not_the_last_and_changes_nothing_else(tmp_path):
    step = {"schedule": "step", "lr_steps": (3,)}
    every, every_history = _fit_small(tmp_path / "every.pt", **step)
    third, third_history = _fit_small(tmp_path / "third.pt", val_every=4, **step)
    assert all(torch.equal(every[k], third[k]) for k in every)
    assert [("val_top1_err" in row) for row in third_history] == [False, False, False, True, False, True]
    assert [row["train_loss"] for row in third_history] == [row["train_loss"] for row in every_history]
    with pytest.raises(ValueError, match="val_every: 2 needs schedule: step"):
        TrainParams(val_every=2)


def test_a_warm_up_raises_the_rate_step_by_step_to_the_scheduled_one():
    rates = [warmup_factor(step, 6) * 0.1 for step in range(8)]
    assert rates == pytest.approx([0.1 * (i + 1) / 6 for i in range(6)] + [0.1, 0.1])
    schedule = StepSchedule(0.1, factor=0.1, milestones=(2,))
    assert [schedule.step(val_err=0.5) for _ in range(3)] == ["keep", "drop", "keep"] and schedule.lr == 0.1 * 0.1


def _train_process(params_file, data, out, stdout=subprocess.DEVNULL):
    return subprocess.Popen(train_command(params_file, data, out),
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc, line, timeout):
    """Read proc's stdout until `line` (the process's own word that it got there), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {line!r} from the training process within {timeout} s"
            if sel.select(left):
                got = proc.stdout.readline()
                assert got, f"training ended before {line!r}: {proc.stderr.read()}"
                if got.strip() == line:
                    return


@pytest.mark.slow
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
    proc = _train_process(params_file, data, broken, stdout=subprocess.PIPE)
    # Kill it (SIGKILL: no cleanup) once it says epoch 2 is checkpointed, i.e. inside epoch 3.
    _wait_for_line(proc, EPOCH_LINE.format(2), timeout=600)
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


_DETERMINISM_PROBE = """
import sys, torch
from alexnet.training.precision import configure_determinism
configure_determinism(True, 1, compiled=sys.argv[1] == "compiled")
import torch._inductor.config as inductor
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      inductor.deterministic)
"""


@pytest.mark.parametrize("compiled", ["eager", "compiled"])
def test_deterministic_mode_is_on_without_inductor_and_inductor_follows_when_compiling(compiled):
    # A fresh process: the eager path must set torch's switch without importing inductor (a second of
    # every training process's start); a compiled model gets inductor's switch too.
    code = _DETERMINISM_PROBE if compiled == "compiled" else _DETERMINISM_PROBE.replace(
        "import torch._inductor.config as inductor",
        "assert 'torch._inductor.config' not in sys.modules, 'inductor imported'\n"
        "inductor = type('unset', (), {'deterministic': None})")
    out = subprocess.run([sys.executable, "-c", code, compiled], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == (["True", "False", "True"] if compiled == "compiled" else ["True", "False", "None"])
