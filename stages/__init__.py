"""DVC stage entry points: each parses the paths dvc.yaml hands it and calls one library function."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from alexnet.config import ParamsError


def run_stage(name: str, work: Callable[[], object], expected: tuple[type[BaseException], ...] = ()) -> int:
    """Run a stage's work with the library's INFO logs; a bad input ends in one line and exit code 2.

    `expected` adds the stage's own error types to bad params and missing files; anything else
    is a bug and keeps its traceback.
    """
    # INFO for the library's own lines only: at the root it would print every HTTP request that
    # Prefect's and MLflow's clients make.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alexnet").setLevel(logging.INFO)
    try:
        work()
    except (ParamsError, FileNotFoundError, ValueError, *expected) as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    return 0
