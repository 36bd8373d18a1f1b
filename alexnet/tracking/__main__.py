"""`python -m alexnet.tracking sync`: re-log what the store missed during an outage (alexnet/tracking/sync.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alexnet.core.cli import exit_code
from alexnet.tracking.sync import __doc__ as sync_doc
from alexnet.tracking.sync import sync


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.tracking", description=sync_doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("sync", help="re-log histories and metrics from the reports; close runs left RUNNING")
    sp.add_argument("--models", required=True, help="the train stage's models folder")
    sp.add_argument("--history", required=True, help="the per-epoch CSVs (reports/train)")
    sp.add_argument("--tracking-state", required=True, help="models/tracking.json")
    sp.add_argument("--metrics", help="evaluate's metrics.json, to re-log its figures too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    done: dict[str, Any] = {}

    def work() -> None:
        done.update(sync(Path(args.models), Path(args.history), Path(args.tracking_state),
                         Path(args.metrics) if args.metrics else None))

    if code := exit_code("sync", work):
        return code
    for name, d in [*done["members"].items(), ("parent", done["parent"])]:
        print(f"{name}: {d['logged']} metric value(s) logged{', run closed FINISHED' if d['finished'] else ''}")
    for run_id in done["killed"]:
        print(f"parent run {run_id}: left RUNNING by a killed stage, marked KILLED")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
