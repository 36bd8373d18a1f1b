"""What a failed stage leaves in its output folder, and what it says when it cannot write there.

The real stages run as `python -m stages.<name>` subprocesses, outside DVC (which would remove
a stage's outputs before running it). Tests run as root here, and permissions do not stop root:
`chmod 0o555` changes nothing. What does fail for root, as for anyone: a file where the output
folder belongs (or above it), a folder on a read-only mount (EROFS), an immutable folder
(`chattr +i`: EPERM, a PermissionError). The last two need root's mount and chattr; without
them those cases skip and say so.
"""

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from alexnet.core.layout import CLASSES_FILE, DATASET_FILE, INDEX_FILE, QUALITY_REPORT_FILE
from tests.tiny import build_tiny_data, sqlite_store, tiny_params

REPO = Path(__file__).resolve().parents[2]


def stage(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("PREFECT_API_URL", None)  # as a user runs it: the stage starts its own Prefect server
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def one_line(result: subprocess.CompletedProcess, name: str) -> str:
    """The stage's single error line (its log lines aside), after checking there is exactly one."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{name}: ")]
    assert len(lines) == 1 and result.stderr.rstrip().endswith(lines[0]), result.stderr[-3000:]
    return lines[0]


def png(size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def folder_tree(root: Path) -> Path:
    for split, wnid in (("train", "a"), ("train", "b"), ("val", "a"), ("val", "b")):
        (root / split / wnid).mkdir(parents=True)
        (root / split / wnid / "0.png").write_bytes(png())
    return root


def params_file(path: Path, root: Path, on_bad_image: str = "skip") -> Path:
    path.write_text(yaml.safe_dump({"data": {"source": "folder", "root": str(root), "on_bad_image": on_bad_image},
                                    "preprocess": {"workers": 1}}))
    return path


def test_a_failed_prepare_leaves_no_index_of_the_previous_run(tmp_path):
    root, out = folder_tree(tmp_path / "data"), tmp_path / "prepared"
    good = stage("prepare", "--params", str(params_file(tmp_path / "skip.yaml", root)), "--out", str(out))
    assert good.returncode == 0, good.stderr[-3000:]
    assert all((out / name).is_file() for name in (INDEX_FILE, DATASET_FILE, CLASSES_FILE))

    (root / "train" / "b" / "cut.png").write_bytes(png()[:40])  # the header and no pixels
    failed = stage("prepare", "--params", str(params_file(tmp_path / "fail.yaml", root, "fail")), "--out", str(out))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert "prepare: 1 unusable file(s)" in failed.stderr and "  train/b/cut.png: " in failed.stderr
    for name in (INDEX_FILE, DATASET_FILE, CLASSES_FILE):
        assert not (out / name).exists(), f"{name} of the previous run left beside this run's report"
    assert list(pd.read_csv(out / QUALITY_REPORT_FILE)["path"]) == ["train/b/cut.png"]


def _or_skip(cmd: list[str], what: str) -> None:
    """Run `cmd`, or skip the test saying it cannot `what` here (its stderr)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot {what}: {done.stderr.strip()}")


@contextmanager
def unwritable(kind: str, tmp_path: Path) -> Iterator[Path]:
    """An output path that root cannot write: `kind` says how."""
    if kind == "a file in the way":
        (tmp_path / "taken").write_text("a file, not a folder\n")
        yield tmp_path / "taken"
    elif kind == "a file above it":
        (tmp_path / "taken").write_text("a file, not a folder\n")
        yield tmp_path / "taken" / "below"
    elif kind == "a read-only mount":
        folder = tmp_path / "readonly"
        folder.mkdir()
        _or_skip(["mount", "--bind", "-o", "ro", str(folder), str(folder)], "make a read-only bind mount (needs root)")
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
    else:  # an immutable folder
        folder = tmp_path / "immutable"
        folder.mkdir()
        _or_skip(["chattr", "+i", str(folder)], "make a folder immutable (needs root and ext4-like support)")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=False)


KINDS = ["a file in the way", "a file above it", "a read-only mount", "an immutable folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_output_that_cannot_be_written_is_one_line_naming_it(tmp_path, kind):
    params = params_file(tmp_path / "params.yaml", folder_tree(tmp_path / "data"))
    with unwritable(kind, tmp_path) as out:
        line = one_line(stage("prepare", "--params", str(params), "--out", str(out)), "prepare")
    assert line.startswith(f"prepare: {out}"), line
    assert ".tmp-" not in line, line  # the file being written, not its temporary name
    if kind.startswith("a file"):
        assert f"{tmp_path / 'taken'}" in line and "a file, not a folder" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["a file above it", "an immutable folder"])
def test_a_prefect_home_that_cannot_be_written_is_one_line_naming_it(tmp_path, kind):
    data = build_tiny_data(tmp_path / "data")
    raw = tiny_params(epochs=1)
    raw["tracking"] = {"uri": sqlite_store(tmp_path), "experiment": "home"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    args = ["--params", str(tmp_path / "params.yaml"), "--prepared", str(data / "prepared"), "--shards",
            str(data / "shards"), "--models", str(tmp_path / "models"), "--history", str(tmp_path / "history"),
            "--checkpoints", str(tmp_path / "ckpt"), "--tracking-state", str(tmp_path / "models" / "tracking.json")]
    with unwritable(kind, tmp_path) as home:
        result = stage("train", *args, env={"PREFECT_HOME": str(home)})
    line = one_line(result, "train")
    assert line.startswith(f"train: PREFECT_HOME {home}: cannot be created or written to"), line
    assert not list((tmp_path / "models").glob("member-*/model.pt"))  # stopped before any training
