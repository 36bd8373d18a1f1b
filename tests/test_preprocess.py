"""preprocess: deterministic shards, and a run stopped at any moment never looks complete."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alexnet.config.params import ParamsError, parse_params
from alexnet.config.sections import PreprocessParams
from alexnet.core.layout import MANIFEST_FILE as MANIFEST
from alexnet.data import preprocess as stage
from alexnet.data.shards import ShardsError, ShardSet, data_version
from stages.preprocess import main as preprocess_main

S = 32
OPTIONS = dict(stored_size=S, format="raw", shard_size=2)


def preprocess(prepared, out, **options):
    return stage.preprocess(prepared, out, PreprocessParams(**options), progress=False)


@pytest.fixture(scope="module")
def reference(tiny_prepared, tmp_path_factory) -> Path:
    """One clean run: what every interrupted-then-resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    preprocess(tiny_prepared, out, workers=1, **OPTIONS)
    return out


def shard_files(d: Path) -> dict[str, tuple[int, str]]:
    """Each shard file's inode and sha256. Every write is a new file renamed over the old one, so a
    rewritten file has a new inode even when its bytes are the same (mtimes can tie within a tick)."""
    return {p.name: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.iterdir()) if p.name.startswith(("train-", "val-"))}


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Return as soon as condition() holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.01)


def test_layout_counts_and_determinism(tiny_prepared, reference, tmp_path):
    manifest = json.loads((reference / MANIFEST).read_text())
    assert manifest["splits"]["train"]["count"] == 11 and manifest["splits"]["val"]["count"] == 6
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [2, 2, 2, 2, 2, 1]
    assert manifest["num_classes"] == 3 and manifest["stored_size"] == S
    # Two workers, same bytes: the manifest (with every sha256) is identical.
    preprocess(tiny_prepared, tmp_path, workers=2, **OPTIONS)
    assert (tmp_path / MANIFEST).read_bytes() == (reference / MANIFEST).read_bytes()
    assert data_version(tmp_path) == data_version(reference)


def test_rerun_keeps_verified_shards_and_rebuilds_damaged_ones(tiny_prepared, tmp_path):
    preprocess(tiny_prepared, tmp_path, workers=1, **OPTIONS)
    before = shard_files(tmp_path)
    damaged = tmp_path / "train-00001.npy"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    preprocess(tiny_prepared, tmp_path, workers=1, **OPTIONS)
    after = shard_files(tmp_path)
    rewritten = {n for n in before if before[n][0] != after[n][0]}
    assert damaged.name in rewritten and all(n.startswith("train-00001.") for n in rewritten)
    assert after == {n: (after[n][0], before[n][1]) for n in before}  # the same bytes as before the damage
    ShardSet(tmp_path, "train")  # verifies every sha256


def test_new_settings_replace_old_shards(tiny_prepared, tmp_path):
    preprocess(tiny_prepared, tmp_path, workers=1, **OPTIONS)
    preprocess(tiny_prepared, tmp_path, workers=1, **{**OPTIONS, "shard_size": 100, "format": "jpeg"})
    names = {p.name for p in tmp_path.iterdir()}
    assert not any(n.startswith("train-00001") for n in names)  # no stale shards left behind
    assert ShardSet(tmp_path, "train").format == "jpeg" and len(ShardSet(tmp_path, "train")) == 11


def test_resize_mode_is_part_of_what_a_shard_is_built_from(tiny_prepared, reference, tmp_path):
    preprocess(tiny_prepared, tmp_path, workers=1, **OPTIONS, resize="central_square")
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["resize"] == "central_square"
    assert json.loads((reference / MANIFEST).read_text())["resize"] == "torchvision"
    # Other pixels (the tiny tree has no square image), so no shard of the default run is kept.
    assert data_version(tmp_path) != data_version(reference)
    before = shard_files(tmp_path)
    preprocess(tiny_prepared, tmp_path, workers=1, **OPTIONS)  # back to the default: every shard rebuilt
    after = shard_files(tmp_path)
    assert all(before[n][0] != after[n][0] for n in before)  # every file of every shard written anew
    images = [n for n in before if n.endswith(".npy") and not n.endswith(".labels.npy")]
    assert images and all(before[n][1] != after[n][1] for n in images)  # with other pixels
    assert (tmp_path / MANIFEST).read_bytes() == (reference / MANIFEST).read_bytes()
    with pytest.raises(ParamsError, match="preprocess.resize: Input should be 'torchvision' or 'central_square'"):
        parse_params({"preprocess": {"resize": "box"}})


def test_injected_failure_leaves_nothing_complete_and_rerun_finishes(tiny_prepared, reference, tmp_path,
                                                                    monkeypatch):
    calls = {"n": 0}
    real = stage.load_patch

    def failing(path, size, resize, *limit):
        calls["n"] += 1
        if calls["n"] == 6:  # third shard, second image: between its writes and its rename
            raise OSError("disk on fire")
        return real(path, size, resize, *limit)

    monkeypatch.setattr(stage, "load_patch", failing)
    with pytest.raises(OSError, match="disk on fire"):
        preprocess(tiny_prepared, tmp_path, workers=1, **OPTIONS)
    names = {p.name for p in tmp_path.iterdir()}
    assert MANIFEST not in names and not any(n.startswith(".tmp-") for n in names)
    with pytest.raises(ShardsError, match="no manifest.json"):
        ShardSet(tmp_path, "train")
    monkeypatch.setattr(stage, "load_patch", real)
    manifest = preprocess(tiny_prepared, tmp_path, workers=1, **OPTIONS)
    assert (tmp_path / MANIFEST).read_bytes() == (reference / MANIFEST).read_bytes()
    assert manifest["splits"]["train"]["count"] == 11


# Once a shard's ledger exists, the next image any worker loads holds it there, mid-shard, and says
# so in a file: the test kills at a known point instead of after a guessed delay.
KILLABLE = """
import os, sys, threading
from pathlib import Path
from alexnet.data import preprocess as stage
from alexnet.config.sections import PreprocessParams
real, out, held = stage.load_patch, Path(sys.argv[2]), Path(sys.argv[3])
def gated(path, size, resize, *limit):
    if any(out.glob("*.done.json")):
        (held / str(os.getpid())).touch()
        threading.Event().wait()  # until the test kills the process group
    return real(path, size, resize, *limit)
stage.load_patch = gated
stage.preprocess(sys.argv[1], out, PreprocessParams(stored_size=32, shard_size=2, workers=2), progress=False)
"""


def test_sigkill_mid_run_then_rerun_completes(tiny_prepared, reference, tmp_path):
    out, held = tmp_path / "shards", tmp_path / "held"
    held.mkdir()
    root = Path(__file__).parents[1]
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tiny_prepared), str(out), str(held)], cwd=root,
                            start_new_session=True)
    try:
        wait_for(lambda: any(held.iterdir()) or proc.poll() is not None, "worker held mid-shard")
        assert proc.poll() is None, f"the stage ended (exit {proc.returncode}) before it could be killed"
        assert list(out.glob(".tmp-*")), "the held worker has no shard file half-written"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and its worker processes
        proc.wait()
    finished = {p.name for p in out.glob("*.done.json")}
    assert not (out / MANIFEST).exists() and len(finished) < 9
    with pytest.raises(ShardsError):
        ShardSet(out, "train")
    manifest = preprocess(tiny_prepared, out, workers=2, **OPTIONS)
    assert (out / MANIFEST).read_bytes() == (reference / MANIFEST).read_bytes()
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert sum(s["count"] for s in manifest["splits"]["val"]["shards"]) == 6


def test_stage_entry_point(tiny_prepared, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    # crop 64: the smallest the network pools is 63 (config refuses less)
    params.write_text("preprocess:\n  stored_size: 64\n  shard_size: 8\n  workers: 1\nmodel:\n  crop_size: 64\n")
    assert preprocess_main(["--params", str(params), "--prepared", str(tiny_prepared),
                            "--out", str(tmp_path / "s")]) == 0
    assert ShardSet(tmp_path / "s", "val").read(np.arange(2)).shape == (2, 64, 64, 3)
    assert preprocess_main(["--params", str(params), "--prepared", str(tmp_path / "nothing"),
                            "--out", str(tmp_path / "s2")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
