"""A stage told to stop stops cleanly: on SIGTERM, SIGINT or the loss of its parent, it stops at its next
safe point, keeps what it has, ends its children and exits, naming why.

`install(name, grace_s)` puts handlers on SIGTERM and SIGINT and starts a thread that watches the
parent process (`dvc repro` killed alone would otherwise leave the stage training on, orphaned, and
the next `dvc repro` could start a second trainer beside it). Any of them sets `STOP` with its reason.
A stage with safe points asks `stop_requested()` there (the training loop after every step: it
writes a checkpoint of the epoch in progress and ends); whatever the stage is doing, it exits at the
latest `grace_s` seconds after the request, with 128 + the signal's number, as a shell reports a
process a signal ended. Its children end with it: the Prefect server and pool workers by their
parent-death signal, loader workers by watching their parent.

`run_beside(work)` runs the stage's work in a thread while the main thread waits: Prefect puts its
own SIGTERM handler on the main thread while a flow runs there, which would take the signal from
these handlers. Once a stop is requested Prefect's own logs are silenced: they would only narrate,
with tracebacks, the consequences of the stop; the stage says what happened in one line.

What a SIGTERM to the whole process group (`timeout`, CI runners, Slurm, Kubernetes) does to the
children: the Prefect server is in a session of its own and does not get it (flows/server.py);
torch's DataLoader workers end at once (torch installs that handler in them), so the training loop
cannot reach its next step and the stage stops on its last epoch checkpoint instead; pool workers
take the default SIGTERM (alexnet/core/processes.py). A stop told to the stage alone (SIGTERM to
its pid, its parent gone) reaches none of them, and training stops after its current step with a
checkpoint of the epoch in progress. Members trained in processes of their own (several at once)
end with the stage: `stop_requested()`, asked there, ties them to it (the stage's pid is in
ALEXNET_STAGE_PID).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from alexnet.core.cli import Interrupted
from alexnet.core.processes import exit_with_parent, parent_pid

T = TypeVar("T")
PARENT_POLL_S = 0.5
SIGNAL_FIRST_S = 2.0
STAGE_PID_ENV = "ALEXNET_STAGE_PID"


@dataclass
class _Stop:
    event: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    code: int = 0
    stage: str = "stage"
    grace_s: float = 0.0


STOP = _Stop()


def stop_requested() -> bool:
    """Has the stage been told to stop? (What a safe point asks.) Asked first in a process the stage
    spawned (a member trained in a process pool), it ties that process's life to the stage's."""
    if not _installed_in[0] and not _tied[0]:
        _tied[0] = True
        stage = os.environ.get(STAGE_PID_ENV, "")
        if stage.isdigit() and os.getppid() == int(stage):
            exit_with_parent(int(stage))
    return STOP.event.is_set()


def request(reason: str, code: int) -> None:
    """Tell the stage to stop (the first reason wins); it exits at the latest `grace_s` seconds later."""
    if STOP.event.is_set():
        return
    STOP.reason, STOP.code = reason, code
    STOP.event.set()
    if os.getpid() == _installed_in[0]:
        logging.getLogger("prefect").setLevel(logging.CRITICAL)
        timer = threading.Timer(STOP.grace_s, _exit_now)
        timer.daemon = True
        timer.start()


_installed_in = [0]  # the stage's pid, once `install` ran
_tied = [False]  # a spawned process: tied to the stage already
_installed_once = [False]


def _default_handlers() -> None:
    """In a forked child: the default SIGTERM and SIGINT, before any of its code runs. These handlers are
    the stage's: a child that kept them would only take note of a SIGTERM, and one stuck before it
    could take its own defaults back (a pool worker blocked on a lock) would outlive its pool's end."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def install(stage: str, grace_s: float = 0.0) -> None:
    """Handle SIGTERM, SIGINT and the parent's death for this stage (call from the main thread, first)."""
    STOP.stage, STOP.grace_s, _installed_in[0] = stage, grace_s, os.getpid()
    os.environ[STAGE_PID_ENV] = str(os.getpid())
    if not _installed_once[0]:
        os.register_at_fork(after_in_child=_default_handlers)
        _installed_once[0] = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    parent = os.getppid()
    launcher = parent_pid(parent) if _is_shell(parent) else None
    threading.Thread(target=_watch_parent, args=(parent, launcher), name="parent-watch", daemon=True).start()


def _on_signal(signum: int, frame: object) -> None:
    request(signal.Signals(signum).name, 128 + signum)


def _watch_parent(parent: int, launcher: int | None) -> None:
    """Until the parent goes, or, where the parent is a shell, the shell's parent: DVC runs a stage in
    `$SHELL -c`, and dash (/bin/sh, DVC's shell where $SHELL is unset) forks the stage instead of
    exec'ing it, so `dvc repro` killed alone orphans the shell, and the stage's parent never changes."""
    while (os.getppid() == parent and (launcher is None or parent_pid(parent) == launcher)
           and not STOP.event.is_set()):
        time.sleep(PARENT_POLL_S)
    # A signal to the whole process group ends the parent in the same instant; the stage's own handler
    # runs on the main thread, later on a busy machine (seen: 'the loss of its parent' for a `timeout`
    # SIGTERM). It gets a moment to name the signal first.
    if not STOP.event.wait(SIGNAL_FIRST_S):
        gone = parent if launcher is None else launcher
        request(f"the loss of its parent process (pid {gone}, e.g. `dvc repro` stopped)", 128 + signal.SIGHUP)


SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})


def _is_shell(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in SHELLS
    except OSError:  # no /proc: the parent alone is watched
        return False


def _exit_now() -> None:
    """The grace is over: one line, and out (children end by their parent-death signal or watch)."""
    after = f" ({STOP.grace_s:.0f} s without a safe point)" if STOP.grace_s else ""
    print(f"{STOP.stage}: stopped by {STOP.reason}{after}; what was written is complete, and a rerun "
          "finishes the rest", file=sys.stderr, flush=True)
    os._exit(STOP.code)


def run_beside(work: Callable[[], T]) -> T:
    """`work()` in a thread, the main thread waiting (and so keeping the signal handlers); a stop that
    ends the work becomes Interrupted, naming its reason."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # noqa: BLE001 - carried to the main thread and raised there
            outcome["error"] = err

    thread = threading.Thread(target=target, name=f"{STOP.stage}-work", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        err = outcome["error"]
        if STOP.event.is_set():
            said = str(err) if isinstance(err, Interrupted) else (
                f"the work ended before a safe point ({_first_line(err)}); the last checkpoint is kept, and a "
                "rerun resumes from it")
            raise Interrupted(f"stopped by {STOP.reason}: {said}", STOP.code) from None
        raise err  # type: ignore[misc]
    return outcome.get("value")  # type: ignore[return-value]


def _first_line(err: object) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
