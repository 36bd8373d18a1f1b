"""DVC stage entry points: each declares the paths dvc.yaml hands it and calls the library once.

Every stage takes `--params` (default params.yaml) plus its own required path flags, declared as
(flag, help) pairs; `run_stage` parses them, loads the params once and hands both to the stage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from alexnet.atomic import DiskFullError, disk_full_cause
from alexnet.config import Params, ParamsError, load_params

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
              expected: tuple[type[BaseException], ...] = ()) -> int:
    """Parse the stage's arguments, load the params, run `work(params, args)` with the library's INFO logs.

    Bad params fail here, before the stage imports anything heavy (or starts Prefect's server).
    A bad input ends in one line and exit code 2: bad params, missing files, ValueError (damaged
    weights among them), a full disk (naming the file) and the stage's own `expected` error types;
    anything else is a bug and keeps its traceback.
    """
    args = parse_args(doc, flags, argv)
    # INFO for the library's own lines only: at the root it would print every HTTP request that
    # Prefect's and MLflow's clients make.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alexnet").setLevel(logging.INFO)
    try:
        work(load_params(args.params), args)
    except (ParamsError, FileNotFoundError, ValueError, DiskFullError, *expected) as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk that no atomic write saw (a library writing on its own)
        full = disk_full_cause(err)
        if full is None:
            raise
        print(f"{name}: {full.filename or 'a write'}: disk full ({full.strerror}); free space and rerun",
              file=sys.stderr)
        return 2
    return 0
