"""The stage entry points as DVC runs them: bad input ends in one line naming the problem, exit 2."""

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages import parse_args

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("stage, extra", [
    ("stages.prepare", ["--out", "out"]),
    ("stages.train", ["--prepared", "p", "--shards", "s", "--models", "m", "--history", "h",
                      "--checkpoints", "c", "--tracking-state", "t.json"]),
    ("stages.evaluate", ["--prepared", "p", "--shards", "s", "--models", "m", "--reports", "r",
                         "--metrics", "m.json", "--tracking-state", "t.json"]),
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


def test_every_stage_parses_the_command_dvc_yaml_gives_it():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        python, dash_m, module, *argv = shlex.split(stage["cmd"])
        assert (python, dash_m, module) == ("python", "-m", f"stages.{name}")
        entry = importlib.import_module(module)
        args = parse_args(entry.__doc__, entry.FLAGS, argv)
        assert args.params == "params.yaml"
        given = {flag.lstrip("-").replace("-", "_"): value for flag, value in zip(argv[::2], argv[1::2])}
        assert vars(args) == given, name
