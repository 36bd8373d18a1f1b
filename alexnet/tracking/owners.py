"""Parent runs left RUNNING by a stage that was killed: who owns a run, and ending the orphans as KILLED.

A parent run carries its stage's owner (host, pid, process start time); the next parent opened in
the same experiment, and `python -m alexnet.tracking sync`, end as KILLED every parent whose owner
died on this host without closing it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from alexnet.core.processes import process_start_time

log = logging.getLogger(__name__)

OWNER_TAG = "alexnet.owner"  # "<host>:<pid>:<process start time>" of the stage that opened a parent run
PARENT_TAG = "mlflow.parentRunId"  # MLflow's tag of a nested run


def owner() -> str:
    """This process, so that a later run can tell whether it is still alive (the pid alone may be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start_time(os.getpid()) or ''}"


def owner_is_dead(tag: str) -> bool:
    """True only when sure: the owner ran on this host and no process with its pid and start time exists."""
    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid, started = parts[1], parts[2]
    now = process_start_time(int(pid))
    if now is None and not Path("/proc/self/stat").exists():  # no /proc: ask the kernel instead
        try:
            os.kill(int(pid), 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return now is None or (bool(started) and now != started)


def end_orphaned_parents(client: Any, experiment_id: str) -> list[str]:
    """End as KILLED every RUNNING parent (and its RUNNING members) whose stage died on this host."""
    ended: list[str] = []
    parents = client.search_runs([experiment_id], "attributes.status = 'RUNNING' AND tags.role = 'ensemble'",
                                 max_results=1000)
    for parent in parents:
        tag = parent.data.tags.get(OWNER_TAG)
        if not tag or not owner_is_dead(tag):
            continue
        members = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' AND "
                                     f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'", max_results=1000)
        for member in members:
            client.set_terminated(member.info.run_id, status="KILLED")
        client.set_terminated(parent.info.run_id, status="KILLED")
        ended.append(parent.info.run_id)
        log.warning("MLflow: parent run %s (%s) was left RUNNING by a stage that died (%s); marked KILLED with "
                    "%d running member run(s)", parent.info.run_id, parent.info.run_name, tag, len(members))
    return ended
