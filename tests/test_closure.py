"""One definition of the code behind a result (alexnet/core/closure.py): DVC's code deps of a stage and a
member's resume fingerprint are import closures, so an edit outside the training closure (evaluation,
reports, servers, docs) neither reruns the train stage nor discards a member's or a study run's checkpoint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alexnet.core.closure import ROOT, closure_fingerprint, import_closure
from tests.tiny import EPOCH_LINE, tiny_params, train_command

TRAINING = "alexnet.training.member"  # the module that trains a member: its closure keys the checkpoints
PREDICT_SIDE = ("alexnet/evaluation/", "alexnet/tracking/", "alexnet/pipeline/", "alexnet/study/", "alexnet/team/")
OUTSIDE = "alexnet/evaluation/reports.py"  # the predict side: evaluate's report files
INSIDE = "alexnet/training/loop.py"


def dvc_deps(stage: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    return [d for d in spec["deps"] if d.endswith(".py")]


def test_the_training_closure_is_the_train_side_only_and_inside_the_train_stage():
    closure = import_closure(TRAINING)
    assert INSIDE in closure and OUTSIDE not in closure
    assert [f for f in closure if f.startswith(PREDICT_SIDE)] == []
    assert set(closure) <= set(dvc_deps("train"))


def test_the_fingerprint_is_of_the_closure_alone(tmp_path):
    copy = _copy_code(tmp_path)
    before = closure_fingerprint(TRAINING, copy)
    assert before == closure_fingerprint(TRAINING, ROOT)  # the same bytes, wherever they lie
    _edit_docstring(copy / OUTSIDE)
    assert closure_fingerprint(TRAINING, copy) == before
    _edit_docstring(copy / INSIDE)
    assert closure_fingerprint(TRAINING, copy) != before


@pytest.mark.slow
def test_a_docstring_edit_outside_the_closure_keeps_train_up_to_date_and_the_checkpoints(tmp_path, data):
    copy = _copy_code(tmp_path / "project")
    dvc = [str(Path(sys.executable).parent / "dvc")]
    _run([*dvc, "init", "--no-scm", "-q"], copy)
    _stub_outputs(copy)
    _run([*dvc, "commit", "--force", "-q"], copy)
    assert _train_status(copy, dvc) == "clean"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(epochs=2)))
    out = tmp_path / "out"
    first = _train(copy, params, data, out)
    assert first.count(EPOCH_LINE.format(2)) == 1
    checkpoints = _checkpoints(out)

    _edit_docstring(copy / OUTSIDE)
    assert _train_status(copy, dvc) == "clean"
    again = _train(copy, params, data, out)  # finds its finished checkpoint: not one epoch trained again
    assert EPOCH_LINE.format(1) not in again and _checkpoints(out) == checkpoints

    _edit_docstring(copy / INSIDE)  # the check can fail: an edit inside the closure reruns and retrains
    assert _train_status(copy, dvc) == "changed"
    retrained = _train(copy, params, data, out)
    assert EPOCH_LINE.format(1) in retrained and len(_checkpoints(out)) == len(checkpoints) + 1


def _checkpoints(out: Path) -> dict[str, int]:
    """Each checkpoint file (named by its run key) and when it was last written."""
    return {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pt")}


def _copy_code(root: Path) -> Path:
    for top in ("alexnet", "stages", "flows"):
        shutil.copytree(ROOT / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, root / name)
    return root


def _edit_docstring(path: Path) -> None:
    text = path.read_text()
    assert text.startswith('"""')
    path.write_text('"""Edited. ' + text[3:])


def _stub_outputs(root: Path) -> None:
    """Every output and dependency of dvc.yaml as a small file: enough for `dvc commit` to record a lock."""
    for rel in ("data/prepared/classes.csv", "data/shards/manifest.json", "models/member-0/model.pt",
                "reports/train/member-0.csv", "reports/eval/predictions/member-0.center.npy", "reports/metrics.json",
                "reports/eval/confusion.png", "reports/eval/ensemble.png", "reports/eval/per_class.csv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}\n" if rel.endswith(".json") else "x\n")


def _train_status(root: Path, dvc: list[str]) -> str:
    out = _run([*dvc, "status", "train", "--json"], root).stdout
    return "clean" if yaml.safe_load(out) in ({}, None) else "changed"


def _train(root: Path, params: Path, data: Path, out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's alexnet, not the installed one
    proc = subprocess.run(train_command(params, data, out), capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{root}/alexnet" in _run([sys.executable, "-c", "import alexnet; print(alexnet.__file__)"], root,
                                     env).stdout
    return proc.stdout + proc.stderr


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or {**os.environ}, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return proc
