"""Damaged weights are refused by name; a damaged checkpoint is set aside and training resumes exactly."""

import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml

from alexnet.config.params import parse_params
from alexnet.evaluation.members import load_member
from alexnet.training.checkpoint import IntegrityError, load_checkpoint, save_checkpoint, sidecar
from alexnet.training.member import train_member
from tests.tiny import tiny_params


def _train(data: Path, out: Path) -> dict:
    return train_member(0, parse_params(tiny_params()), prepared_dir=data / "prepared", shards_dir=data / "shards",
                        models_dir=out / "models", history_dir=out / "history", checkpoints_dir=out / "checkpoints",
                        progress=False)


def _flip(path: Path, at: float = 0.6) -> None:
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * at)
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def unbroken(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken")
    _train(data, out)
    return out


def _checkpoint(out: Path) -> Path:
    (ckpt,) = (out / "checkpoints").glob("member-0-*.pt")
    return ckpt


def test_flipped_model_is_refused_by_name(unbroken, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes((unbroken / "models/member-0/model.pt").read_bytes())
    sidecar(model).write_bytes(sidecar(unbroken / "models/member-0/model.pt").read_bytes())
    load_member(model, parse_params(tiny_params()))  # intact: loads
    _flip(model)
    with pytest.raises(IntegrityError, match=f"{model}: sha256 .* does not match"):
        load_member(model, parse_params(tiny_params()))


def test_model_without_recorded_sha256_is_refused(unbroken, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes((unbroken / "models/member-0/model.pt").read_bytes())
    with pytest.raises(IntegrityError, match=f"{model}: no recorded sha256"):
        load_member(model, parse_params(tiny_params()))


def test_evaluate_stage_refuses_a_damaged_model_in_one_line(data, unbroken, tmp_path, capsys):
    from stages.evaluate import main

    models = tmp_path / "models"
    (models / "member-0").mkdir(parents=True)
    for name in ("model.pt", "model.pt.sha256"):
        (models / "member-0" / name).write_bytes((unbroken / "models/member-0" / name).read_bytes())
    _flip(models / "member-0" / "model.pt")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params()))
    rc = main(["--params", str(params), "--prepared", str(data / "prepared"), "--shards", str(data / "shards"),
               "--models", str(models), "--reports", str(tmp_path / "reports"), "--metrics",
               str(tmp_path / "metrics.json"), "--tracking-state", str(models / "tracking.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(models / "member-0" / "model.pt") in err[0] and "does not match" in err[0]
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["last", "last-and-previous"])
def test_damaged_finished_checkpoint_is_set_aside_and_the_weights_equal_an_unbroken_run(
        data, unbroken, tmp_path, caplog, damage):
    out = tmp_path / "out"
    for sub in ("checkpoints",):
        (out / sub).mkdir(parents=True)
        for f in (unbroken / sub).iterdir():
            (out / sub / f.name).write_bytes(f.read_bytes())
    ckpt = _checkpoint(out)
    _flip(ckpt)
    if damage == "last-and-previous":
        _flip(ckpt.with_name(ckpt.name + ".prev"))
    with caplog.at_level(logging.WARNING, logger="alexnet"):
        _train(data, out)
    lines = [r.getMessage() for r in caplog.records if "checkpoint refused" in r.getMessage()]
    assert len(lines) == 1 and str(ckpt) in lines[0]
    assert ("resuming from the previous epoch's checkpoint" in lines[0]) == (damage == "last")
    assert ("training starts over" in lines[0]) == (damage != "last")
    assert (out / "checkpoints" / f"{ckpt.name}.corrupt-1").exists()
    assert _same(_weights(out / "models/member-0/model.pt"), _weights(unbroken / "models/member-0/model.pt"))
    assert _same(load_checkpoint(ckpt)["model"], load_checkpoint(_checkpoint(unbroken))["model"])


def test_a_kill_between_a_checkpoint_and_its_sidecar_falls_back_to_the_previous(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(path.with_name("c.pt.prev"))["epoch"] == 1
    # As if killed after the new file took the name and before its sha256 was recorded:
    sidecar(path).write_text(sidecar(path.with_name("c.pt.prev")).read_text())
    from alexnet.training.checkpoint import load_resumable

    assert load_resumable(path)["epoch"] == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))


class _RunsCode:
    """A pickle that, loaded without weights_only, would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_code_running_pickle_with_a_matching_sidecar_runs_nothing_and_says_what_it_is(tmp_path):
    import hashlib

    path, marker = tmp_path / "model.pt", tmp_path / "code-ran"
    torch.save({"model": _RunsCode(marker)}, path)
    sidecar(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  model.pt\n")  # as if ours
    with pytest.raises(ValueError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: not a weights file this project wrote")
    assert "weights_only=False" not in message and not marker.exists()
