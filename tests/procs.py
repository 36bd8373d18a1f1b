"""What the process-leak tests read from Linux's /proc."""

from pathlib import Path


def stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses): state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int | str) -> bool:
    """Still running: in /proc and not a zombie (one that has exited and waits only for its parent's wait)."""
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> set[int]:
    """The pids whose parent is `pid`."""
    return _where(1, pid)


def group(pgid: int) -> set[int]:
    """The pids in process group `pgid`."""
    return _where(2, pgid)


def command_line(pid: int) -> str:
    """The process's command line, its arguments joined by spaces ("" once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _where(field: int, value: int) -> set[int]:
    """The pids whose stat field `field` (after the command name: 1 ppid, 2 pgrp) is `value`."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(stat_fields(proc.name)[field]) == value:
                found.add(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
