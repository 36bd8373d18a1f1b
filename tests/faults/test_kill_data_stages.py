"""Kill -9 of a data stage mid-work, then a rerun: the outputs are byte-identical to an unbroken
run's, and no process of the killed stage outlives it (issue 11, the standing suite and item 5's
pool workers).

Each stage runs as `python -m stages.<name>` in its own process group, with 2 pool workers. The test
waits for the work to be under way (a generated image, the decode-check log line, a shard ledger:
events, not a delay) and for the workers to exist, then SIGKILLs the stage process alone, as the
OOM killer or `kill -9 <pid>` does: nothing then tells its workers, which is what used to leave
them behind. Killing the whole group (as a CI runner may) is also run, and a preprocess on a local
Dask cluster (preprocess.engine: dask), whose worker processes must go too.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from alexnet.core.layout import DATASET_FILE, IMAGES_DIR, MANIFEST_FILE
from tests.procs import command_line, group, stat_fields

pytestmark = pytest.mark.slow  # each test starts several stage processes

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
PARAMS = {
    # 200 images in 50 shards: enough work that a kill lands mid-stage, seconds on 2 cores.
    "data": {"synthetic": {"classes": 4, "train_per_class": 40, "val_per_class": 10, "min_side": 64,
                           "max_side": 160, "seed": 3}},
    "preprocess": {"stored_size": 64, "shard_size": 4, "workers": WORKERS},
    "model": {"crop_size": 64},
    "train": {"batch_size": 8},
}


def stage(name: str, params: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", f"stages.{name}", "--params", str(params), *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code in the stage processes


def run_to_end(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def live_group(pgid: int) -> list[str]:
    """'pid state command' of each process in group `pgid` that is not a zombie."""
    out = []
    for pid in sorted(group(pgid)):
        try:
            state = stat_fields(pid)[0]
        except OSError:  # gone meanwhile
            continue
        if state != "Z":  # a zombie is dead, waiting for init to reap it
            out.append(f"{pid} {state} {command_line(pid)[:120]}")
    return out


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def kill_mid_work(cmd: list[str], under_way: Callable[[], bool], log: Path, group: bool = False) -> None:
    """Start `cmd` in its own process group; once `under_way()` and its workers run, SIGKILL it
    (the stage process, or the whole group); then require every process of the group to be gone."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    pgid = proc.pid
    try:
        wait_for(lambda: proc.poll() is not None or (under_way() and len(live_group(pgid)) > WORKERS),
                 "the stage to start its work and its workers")
        assert proc.poll() is None, f"the stage ended before the kill:\n{log.read_text()[-2000:]}"
        if group:
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10  # the kernel signals orphans at once; allow a loaded machine
        while live_group(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        survivors = live_group(pgid)
        assert not survivors, "processes of the killed stage outlived it:\n" + "\n".join(survivors)
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)  # never leave a test's processes behind, even on failure
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden and temporary ones too) by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> Path:
    """params.yaml, and an unbroken run of both stages: prepared/ and shards/."""
    base = tmp_path_factory.mktemp("unbroken")
    (base / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    run_to_end(stage("prepare", base / "params.yaml", "--out", str(base / "prepared")))
    run_to_end(stage("preprocess", base / "params.yaml", "--prepared", str(base / "prepared"),
                     "--out", str(base / "shards")))
    return base


def generated(out: Path) -> bool:
    return any((out / IMAGES_DIR / "train").glob("*/*.*"))


def decode_check(log: Path) -> bool:
    return "indexing" in log.read_text()


@pytest.mark.parametrize("moment", ["generating", "decode check"])
def test_prepare_killed_mid_work_then_rerun(unbroken, tmp_path, moment):
    out, log = tmp_path / "prepared", tmp_path / "stderr.log"
    cmd = stage("prepare", unbroken / "params.yaml", "--out", str(out))
    kill_mid_work(cmd, (lambda: generated(out)) if moment == "generating" else (lambda: decode_check(log)), log)
    assert not (out / DATASET_FILE).exists()  # killed mid-work: not complete
    run_to_end(cmd)
    assert files(out) == files(unbroken / "prepared")


@pytest.mark.parametrize(("target", "engine"), [("stage", "local"), ("group", "local"), ("stage", "dask")])
def test_preprocess_killed_mid_work_then_rerun(unbroken, tmp_path, target, engine):
    out, params = tmp_path / "shards", unbroken / "params.yaml"
    if engine != "local":  # the same params but the engine: the outputs are the same bytes
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({**PARAMS, "preprocess": {**PARAMS["preprocess"], "engine": engine}}))
    cmd = stage("preprocess", params, "--prepared", str(unbroken / "prepared"), "--out", str(out))
    kill_mid_work(cmd, lambda: any(out.glob("*.done.json")), tmp_path / "stderr.log", group=target == "group")
    assert not (out / MANIFEST_FILE).exists()
    run_to_end(cmd)
    assert files(out) == files(unbroken / "shards")
