"""Atomic file writes: a reader (or a rerun after a kill) never sees a half-written file."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# No space (ENOSPC) or over quota (EDQUOT): the same fix, free space, and retrying cannot help.
_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the file. Retrying it cannot succeed.

    Built as OSError(errno, strerror, filename), so it pickles across worker processes.
    """

    def __str__(self) -> str:
        return (f"{self.filename}: disk full ({self.strerror}); free space on that filesystem "
                f"(or point the output elsewhere) and rerun")


def disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind `err`, if any (torch.save wraps it in an 'enforce fail')."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    The temporary name starts with '.tmp-' so nothing that lists finished files picks it up.
    On any exception the temporary file is removed and `path` is left as it was.
    The rename alone protects against a killed process. durable=False skips the two fsyncs
    that protect against a power cut: only for files whose sha256 is recorded in a durable
    file written after them (a shard ledger), so a torn file is caught and rebuilt on rerun.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    # mkstemp creates 0600; a finished file gets the mode any new file would (0666 less the umask).
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = None if isinstance(err, DiskFullError) else disk_full_cause(err)
        if full is not None:
            raise DiskFullError(full.errno, os.strerror(full.errno), str(path)) from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is flushed.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], durable: bool = True) -> None:
    """Call write(f) on a binary file that replaces `path` atomically when write returns."""
    with atomic_path(path, durable) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), durable)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
