"""DVC stage entry points: each declares the paths dvc.yaml hands it and calls the library once.

Every stage takes `--params` (default params.yaml) plus its own required path flags, declared as
(flag, help) pairs; `run_stage` parses them, loads the params once and hands both to the stage.
The params a stage reads are declared once, in dvc.yaml (scripts/dvc_deps.py derives them from
the stage's import closure, and tests/test_dvc_yaml.py fails when they differ).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from alexnet.config.params import load_params
from alexnet.config.sections import Params
from alexnet.core import signals
from alexnet.core.cli import InputError, exit_code, library_logs

Flags = Sequence[tuple[str, str]]  # (flag, help): the stage's required path arguments
Work = Callable[[Params, argparse.Namespace], object]


def parse_args(doc: str, flags: Flags, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`--params` and the stage's flags, each required; `--help` shows the stage's docstring."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    for flag, text in flags:
        ap.add_argument(flag, required=True, help=text)
    return ap.parse_args(argv)


def run_stage(name: str, doc: str, flags: Flags, work: Work, argv: Sequence[str] | None = None,
              grace_s: float = 0.0) -> int:
    """Parse the stage's arguments, load the params, run `work(params, args)` with the library's INFO logs.

    Bad params fail here, before the stage imports anything heavy (or starts Prefect's server). A
    bad input ends in one line and exit code 2 (alexnet/core/cli.py); anything else is a bug and
    keeps its traceback. Run as a command (`argv` None), the stage stops on SIGTERM, SIGINT or the
    loss of its parent (alexnet/core/signals.py): at its next safe point, or `grace_s` seconds
    later at the latest. Called in-process (a test, other code) it leaves the caller's handlers be.
    """
    args = parse_args(doc, flags, argv)
    if argv is None:
        signals.install(name, grace_s)
    library_logs()
    return exit_code(name, lambda: _paths_in_one_line(lambda: work(_bare(load_params(args.params)), args)))


def _bare(params: Params) -> Params:
    """The params with tracking.uri's credentials moved to MLflow's environment variables: from here on
    nothing (Prefect's flow parameters, MLflow params, messages) can show them."""
    from alexnet.tracking.credentials import take_credentials

    uri = params.tracking.uri
    bare = uri if uri is None else take_credentials(uri)
    if bare == uri:
        return params
    return params.model_copy(update={"tracking": params.tracking.model_copy(update={"uri": bare})})


# OSErrors of a path that exit_code (alexnet/core/cli.py) would leave as a traceback: it reads a
# PermissionError as one line, but permissions do not stop root, and a read-only mount or a file
# where a folder belongs (mkdir of it: EEXIST; of a path below it: ENOTDIR) fail with these instead.
_NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST)
_ATOMIC_TEMP = re.compile(r"\.tmp-(.+)\.[^.]+")  # alexnet/core/atomic.py's temporary name: .tmp-<name>.<random>


def _shown(filename: str | bytes) -> Path:
    """The path to name: the file being written rather than its temporary name."""
    path = Path(os.fsdecode(filename))
    match = _ATOMIC_TEMP.fullmatch(path.name)
    return path.with_name(match.group(1)) if match else path


def _paths_in_one_line(work: Callable[[], object]) -> None:
    """Run `work`; a path that cannot be written ends in one line naming it (exit code 2 through exit_code)."""
    try:
        work()
    except PermissionError as err:
        if err.filename is None:
            raise
        raise PermissionError(err.errno, err.strerror, str(_shown(err.filename))) from None
    except OSError as err:
        if err.filename is None or err.errno not in (errno.EROFS, *_NOT_A_FOLDER):
            raise
        path = _shown(err.filename)
        if err.errno == errno.EROFS:
            raise InputError(f"{path}: a read-only file system; point the output at a writable folder") from None
        # The file in the way: the path itself or a folder above it.
        blocker = next((p for p in (*reversed(path.parents), path) if os.path.lexists(p) and not p.is_dir()), None)
        if blocker is None:
            raise
        which = "" if blocker == path else f"{blocker} is "
        raise InputError(f"{path}: {which}a file, not a folder; move it or point the output elsewhere") from None
