"""One writer per folder (alexnet/core/locks.py): a second holder waits, then fails in one line naming the pid;
a lock whose holder died never blocks (the kernel drops it with the process)."""

import os
import subprocess
import sys
import threading
import time

import pytest

from alexnet.core.cli import InputError
from alexnet.core.locks import exclusive


def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    with exclusive(tmp_path, "trainer"):
        with pytest.raises(InputError, match=rf"^{tmp_path}: another trainer \(pid {os.getpid()}\) is writing here"):
            with exclusive(tmp_path, "trainer", wait_s=0.3):
                pass


def test_a_second_holder_waits_for_the_first_to_let_go(tmp_path):
    held = threading.Event()

    def first() -> None:
        with exclusive(tmp_path, "trainer"):
            held.set()
            time.sleep(0.6)

    thread = threading.Thread(target=first)
    thread.start()
    held.wait()
    started = time.monotonic()
    with exclusive(tmp_path, "trainer", wait_s=30):
        waited = time.monotonic() - started
    thread.join()
    assert 0.3 < waited < 30


def test_the_lock_of_a_killed_holder_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from alexnet.core.locks import exclusive\n"
                               f"with exclusive(Path({str(tmp_path)!r}), 'trainer'):\n"
                               "    print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match=f"pid {holder.pid}"):
        with exclusive(tmp_path, "trainer"):
            pass
    holder.kill()
    holder.wait()
    with exclusive(tmp_path, "trainer"):  # the file stays, naming the dead pid; the kernel lock is gone
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
