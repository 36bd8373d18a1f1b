"""DVC stage entry points: each declares the paths dvc.yaml hands it and calls the library once.

Every stage takes `--params` (default params.yaml) plus its own required path flags, declared as
(flag, help) pairs; `run_stage` parses them, loads the params once and hands both to the stage.
The params a stage reads are declared once, in dvc.yaml (scripts/dvc_deps.py derives them from
the stage's import closure, and tests/test_dvc_yaml.py fails when they differ).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from alexnet.config.params import load_params
from alexnet.config.sections import Params
from alexnet.core.cli import exit_code, library_logs

Flags = Sequence[tuple[str, str]]  # (flag, help): the stage's required path arguments
Work = Callable[[Params, argparse.Namespace], object]


def parse_args(doc: str, flags: Flags, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`--params` and the stage's flags, each required; `--help` shows the stage's docstring."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    for flag, text in flags:
        ap.add_argument(flag, required=True, help=text)
    return ap.parse_args(argv)


def run_stage(name: str, doc: str, flags: Flags, work: Work, argv: Sequence[str] | None = None) -> int:
    """Parse the stage's arguments, load the params, run `work(params, args)` with the library's INFO logs.

    Bad params fail here, before the stage imports anything heavy (or starts Prefect's server). A
    bad input ends in one line and exit code 2 (alexnet/core/cli.py); anything else is a bug and
    keeps its traceback.
    """
    args = parse_args(doc, flags, argv)
    library_logs()
    return exit_code(name, lambda: work(load_params(args.params), args) and None)
