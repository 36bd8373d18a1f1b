"""A stage notices the loss of whatever started it, also through the shell DVC runs it in.

DVC runs a stage as `$SHELL -c CMD`. bash execs CMD, so `dvc repro` is the stage's parent; dash
(/bin/sh, DVC's shell where $SHELL is unset, as on most CI runners) forks it, so a `dvc repro`
killed alone orphans the shell and the stage's own parent never changes.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a stage does: install the handlers, then work; stopped, it exits with one line on stderr.
STAGE = ("import time; from alexnet.core import signals; signals.install('probe'); print('ready', flush=True); "
         "time.sleep(60)")


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash", None])
def test_the_stage_stops_when_its_launcher_dies_whatever_shell_runs_it(tmp_path, shell):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    out = tmp_path / "out"
    stage = [sys.executable, "-c", STAGE]
    inner = stage if shell is None else [shell, "-c", subprocess.list2cmdline(stage)]
    # The launcher (standing in for `dvc repro`) starts the stage and waits; then it is killed alone.
    launcher = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess; log = open({str(out)!r}, 'w'); "
                               f"subprocess.run({inner!r}, stdout=log, stderr=log)"],
        cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and "ready" in out.read_text()):
            assert time.monotonic() < deadline, "the stage never started"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 30
        while "probe: stopped by" not in out.read_text():
            assert time.monotonic() < deadline, f"{shell}: the stage did not notice its launcher's death"
            time.sleep(0.05)
        assert f"probe: stopped by the loss of its parent process (pid {launcher.pid}," in out.read_text()
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(launcher.pid)], check=False)
