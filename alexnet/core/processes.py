"""Child processes that die with the stage that started them, and a free loopback port for a child server.

A pool's workers wait on their task queue. When the stage process is killed outright (SIGKILL,
the OOM killer, a CI timeout) nothing tells them: each still holds both ends of the queue's
pipe, so no end-of-file ever comes, and they live on, reparented to init, forever. So each
worker, first thing, asks the kernel to send it SIGKILL when its parent dies (Linux's
prctl(PR_SET_PDEATHSIG)), then checks that its parent is still the process that started it, in
case that one died before the request was made. On other systems this is a no-op.

The kernel sends the signal when the parent *thread* that forked the worker ends, so a pool must be
created by a thread that outlives it: the stages create theirs on the main thread. The loader's
workers are forked by whichever thread first iterates it (a Prefect task's thread, say), so they
watch their parent's pid from a thread of their own instead (`exit_with_parent`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Pool initializer: this process gets `sig` when `parent_pid` (the pool's creator) dies.

    It also takes the default SIGTERM and SIGINT back: a pool ends its workers with SIGTERM, and a
    handler inherited from the parent (Prefect installs one in a flow's process) would keep a worker
    blocked on the pool's queue alive, and the pool's exit waiting on it, forever. Then it unblocks
    them (`fork_pool` forks with them blocked): one that came before this is now obeyed.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:  # the parent died before the request: nothing would signal us
        os._exit(1)


@contextmanager
def fork_pool(workers: int) -> Iterator[Pool]:
    """A fork Pool of `workers` whose workers die with this process (`die_with_parent`); closed on exit.

    The pool's exit ends its workers with SIGTERM, and a worker still starting then (a loaded machine)
    would meet the handler inherited from this process, not yet the default its initializer sets, and
    wait on the queue forever, the exit joining it (seen under the test suite). So the workers are
    forked with SIGTERM and SIGINT blocked, and the initializer unblocks them after taking the default
    back. Create it on a thread that outlives it (see the module's docstring).
    """
    from multiprocessing import get_context

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        pool = get_context("fork").Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    with pool:
        yield pool


def signal_on_parent_death(parent_pid: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A subprocess.Popen preexec_fn: the child gets `sig` when `parent_pid` dies (a server child stops
    cleanly on SIGTERM). Only async-signal-safe calls run in the child: prctl is looked up here, before the fork."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_parent_death_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    return set_parent_death_signal


def exit_with_parent(parent_pid: int, every: float = 0.1) -> None:
    """This process exits within `every` seconds of `parent_pid` dying, whichever of its threads forked it.

    A daemon thread polls the parent pid: once the parent is gone this process is reparented, so its
    ppid changes. (torch's DataLoader workers make the same check, but only between batches and
    every 5 s, long enough for a test or a user to find them outliving a killed stage.)
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(1)  # not sys.exit: a worker's queue threads could block an orderly exit forever

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, for a server this process starts next (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first); None if the
    process is gone. The name may hold spaces and ')', so the fields start after its last ')'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone.

    With the pid it names one process for good: a pid alone may be reused by another process later.
    """
    fields = _stat(pid)
    return fields[19] if fields else None


def parent_pid(pid: int) -> int | None:
    """The parent of process `pid` (/proc/<pid>/stat field 4); None if it is gone."""
    fields = _stat(pid)
    return int(fields[1]) if fields else None
