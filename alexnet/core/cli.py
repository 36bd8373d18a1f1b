"""How every command and stage ends: a bad input is one line naming it and exit code 2, a bug a traceback.

The stages (stages/), the commands (`python -m alexnet.<name>`) and `python -m alexnet.tracking`
all run their work through `exit_code`, so the same failures read the same way everywhere.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from alexnet.core.atomic import DiskFullError, disk_full_cause


class InputError(RuntimeError):
    """Something a command was given or needs cannot be used (damaged shards, a store that is down).

    Its message names the file, key or address and says what to do; the command prints it alone.
    """


class Interrupted(Exception):
    """The work was told to stop (a signal) and stopped at a safe point with its state saved: a rerun resumes.

    `code` is the exit code: 128 + the signal's number, as a shell reports a process the signal ended.
    """

    def __init__(self, message: str, code: int = 128 + 15):
        super().__init__(message)
        self.code = code


# ValueError covers bad params (ParamsError), damaged weights (IntegrityError) and unusable images.
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, DiskFullError, InputError)


def exit_code(name: str, work: Callable[[], int | None]) -> int:
    """Run `work`; its return value (None: 0), or 2 after one line `name: message` for a bad input."""
    try:
        return int(work() or 0)
    except Interrupted as err:
        print(f"{name}: {err}", file=sys.stderr)
        return err.code
    except BAD_INPUT as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:  # a read-only output folder, a PREFECT_HOME it may not write
        where = err.filename or "a file"
        print(f"{name}: {where}: permission denied ({err.strerror}); make it writable or point the output "
              "elsewhere", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk that no atomic write saw (a library writing on its own)
        full = disk_full_cause(err)
        if full is None:
            raise
        print(f"{name}: {full.filename or 'a write'}: disk full ({full.strerror}); free space and rerun",
              file=sys.stderr)
        return 2


def library_logs() -> None:
    """INFO lines from the library, WARNING from everything else (HTTP clients would flood INFO)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alexnet").setLevel(logging.INFO)
