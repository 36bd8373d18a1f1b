"""One writer per folder: an advisory lock that is the stage's own, not DVC's.

DVC's repo lock is taken and released by `dvc repro`, so a `dvc repro` killed alone leaves its
stage running with no lock held, and the next `dvc repro` starts a second trainer beside it, both
writing the same checkpoints. The train and study stages therefore hold `exclusive(folder)` while
they work: a kernel lock (flock) on `<folder>/.lock`, which goes with the process however it ends
(kill -9 included), so a stale lock file never blocks anyone. The file names the holder's pid.

A second stage waits up to `wait_s` (a stopped predecessor is still writing its last checkpoint),
then fails in one line naming the folder and the pid that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from alexnet.core.cli import InputError

LOCK_FILE = ".lock"
POLL_S = 0.2
log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(folder: Path, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold `folder`'s lock for the block; InputError (one line) if another process keeps it past `wait_s`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, what, wait_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (removing it would race a waiting process)


def _acquire(fd: int, path: Path, what: str, wait_s: float) -> None:
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _holder(path)
            if time.monotonic() >= deadline:
                raise InputError(f"{path.parent}: another {what} (pid {holder}) is writing here; wait for it to "
                                 f"end or stop it (kill {holder}), then rerun") from None
            if not told:
                log.info("%s: waiting up to %.0f s for pid %s to stop", path.parent, wait_s, holder)
                told = True
            time.sleep(POLL_S)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
