"""The stage entry points as DVC runs them: bad input ends in one line naming the problem, exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("stage, extra", [
    ("stages.prepare", ["--out", "out"]),
    ("stages.train", ["--prepared", "p", "--shards", "s", "--models", "m", "--history", "h",
                      "--checkpoints", "c", "--tracking-state", "t.json"]),
])
def test_bad_params_end_in_one_line_naming_the_key(tmp_path, stage, extra):
    (tmp_path / "params.yaml").write_text("train:\n  lr: -0.5\n")
    proc = _run(stage, "--params", "params.yaml", *extra, cwd=tmp_path)
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "greater than 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()


def test_a_missing_input_folder_is_named(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = _run("stages.preprocess", "--params", "params.yaml", "--prepared", "nowhere", "--out", "shards",
                cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "shards" / "manifest.json").exists()
