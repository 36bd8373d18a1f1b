"""The training's tracking record (models/tracking.json), and putting the store right afterwards.

tracking.json names the store relative to the project when the store lies inside it
(`sqlite:///mlflow.db`, with `project_root` giving the project relative to the file itself), so
a copied project logs into its own copy of the store, whatever the current directory.

After an outage, `python -m alexnet.tracking sync` re-logs from the files on disk what the store
missed: each member's per-epoch history (reports/train/<member>.csv) and, given --metrics, the
evaluation's figures; only steps and keys the store lacks, so a second sync adds nothing. It also
closes runs left RUNNING: a member whose summary is written and a parent whose tracking.json is
written are FINISHED; parents whose stage was killed are KILLED (`end_orphaned_parents`, which
every new parent run also calls).

    python -m alexnet.tracking sync --models models --history reports/train \
        --tracking-state models/tracking.json [--metrics reports/metrics.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.atomic import atomic_write_json
from alexnet.layout import HISTORY_SUFFIX, SUMMARY_FILE
from alexnet.tracking import EPOCH_METRICS, PARENT_TAG, Tracker, flatten_metrics
from alexnet.tracking_store import TrackingUnavailable, check_tracking, portable_uri, uri_in_project

log = logging.getLogger(__name__)

OWNER_TAG = "alexnet.owner"  # "<host>:<pid>:<process start time>" of the stage that opened a parent run


# --- tracking.json ------------------------------------------------------------------------------

def write_tracking_state(path: Path, *, uri: str, experiment: str, parent: str, member_runs: Mapping[str, str],
                         root: Path | None) -> None:
    """The run ids for the evaluate stage; the store relative to the project when it lies inside it."""
    state: dict[str, Any] = {"uri": uri, "experiment": experiment, "parent_run": parent,
                             "member_runs": dict(member_runs)}
    if root is not None and (relative := portable_uri(uri, root)) != uri:
        state["uri"] = relative
        state["project_root"] = Path(os.path.relpath(Path(root).resolve(), Path(path).parent.resolve())).as_posix()
    atomic_write_json(path, state)


def read_tracking_state(path: Path) -> dict[str, Any]:
    """tracking.json with "uri" made absolute against the project it lies in now."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        uri = state["uri"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no tracking state (run the train stage first)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tracking state written by the train stage ({err})") from None
    if "project_root" in state:
        state["uri"] = uri_in_project(uri, (path.parent / state["project_root"]).resolve())
    return state


# --- runs left RUNNING by a killed stage --------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc/<pid>/stat field 22); None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def owner() -> str:
    """This process, so that a later run can tell whether it is still alive (the pid alone may be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def owner_is_dead(tag: str) -> bool:
    """True only when sure: the owner ran on this host and no process with its pid and start time exists."""
    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid, started = parts[1], parts[2]
    now = _start_time(int(pid))
    if now is None and not Path("/proc/self/stat").exists():  # no /proc: ask the kernel instead
        try:
            os.kill(int(pid), 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return now is None or (bool(started) and now != started)


def end_orphaned_parents(tracker: Tracker) -> list[str]:
    """End as KILLED every RUNNING parent (and its RUNNING members) whose stage died on this host."""
    client, ended = tracker.client, []
    parents = client.search_runs([tracker.experiment_id], "attributes.status = 'RUNNING' AND tags.role = 'ensemble'",
                                 max_results=1000)
    for parent in parents:
        tag = parent.data.tags.get(OWNER_TAG)
        if not tag or not owner_is_dead(tag):
            continue
        members = client.search_runs([tracker.experiment_id], f"attributes.status = 'RUNNING' AND "
                                     f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'", max_results=1000)
        for member in members:
            client.set_terminated(member.info.run_id, status="KILLED")
        client.set_terminated(parent.info.run_id, status="KILLED")
        ended.append(parent.info.run_id)
        log.warning("MLflow: parent run %s (%s) was left RUNNING by a stage that died (%s); marked KILLED with "
                    "%d running member run(s)", parent.info.run_id, parent.info.run_name, tag, len(members))
    return ended


# --- sync ---------------------------------------------------------------------------------------

def read_history(path: Path) -> list[dict[str, float]]:
    """A member's per-epoch CSV (member.write_history) as rows of floats."""
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no history (was the member trained?)") from None
    except ValueError as err:
        raise ValueError(f"{path}: not a history written by the train stage ({err})") from None


def log_missing_history(tracker: Tracker, run_id: str, history: Sequence[Mapping[str, float]]) -> int:
    """Log the (metric, epoch) points of `history` that the run lacks; how many were logged."""
    from mlflow.entities import Metric

    now, missing = int(time.time() * 1000), []
    for key in EPOCH_METRICS:
        have = {m.step for m in tracker.client.get_metric_history(run_id, key)}
        missing += [Metric(key, float(row[key]), now, int(row["epoch"]))
                    for row in history if key in row and int(row["epoch"]) not in have]
    if missing:
        tracker.client.log_batch(run_id, metrics=missing)
    return len(missing)


def log_missing_metrics(tracker: Tracker, run_id: str, metrics: Mapping[str, Any]) -> int:
    """Log the flattened figures (evaluate's metrics.json layout) that the run lacks; how many."""
    from mlflow.entities import Metric

    have = tracker.client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    missing = [Metric(k, v, now, 0) for k, v in sorted(flatten_metrics(metrics).items()) if k not in have]
    if missing:
        tracker.client.log_batch(run_id, metrics=missing)
    return len(missing)


def _finish_if_running(tracker: Tracker, run_id: str) -> bool:
    if tracker.client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
        tracker.end(run_id)
        return True
    return False


def sync(models: Path, history: Path, tracking_state: Path, metrics: Path | None = None) -> dict[str, Any]:
    """Re-log what the store missed from the files on disk; close runs the files show finished."""
    state = read_tracking_state(tracking_state)
    check_tracking(state["uri"])
    tracker = Tracker(state["uri"], state["experiment"])
    figures = json.loads(Path(metrics).read_text()) if metrics is not None else None
    done: dict[str, Any] = {"members": {}}
    for name, run_id in state["member_runs"].items():
        logged = log_missing_history(tracker, run_id, read_history(Path(history) / f"{name}{HISTORY_SUFFIX}"))
        if figures is not None and name in figures.get("members", {}):
            logged += log_missing_metrics(tracker, run_id, figures["members"][name])
        finished = (Path(models) / name / SUMMARY_FILE).exists() and _finish_if_running(tracker, run_id)
        done["members"][name] = {"logged": logged, "finished": finished}
    parent = state["parent_run"]
    done["parent"] = {"logged": 0 if figures is None else
                      log_missing_metrics(tracker, parent, {k: v for k, v in figures.items() if k != "members"}),
                      "finished": _finish_if_running(tracker, parent)}
    done["killed"] = end_orphaned_parents(tracker)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.tracking", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("sync", help="re-log histories and metrics from the reports; close runs left RUNNING")
    sp.add_argument("--models", required=True, help="the train stage's models folder")
    sp.add_argument("--history", required=True, help="the per-epoch CSVs (reports/train)")
    sp.add_argument("--tracking-state", required=True, help="models/tracking.json")
    sp.add_argument("--metrics", help="evaluate's metrics.json, to re-log its figures too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        done = sync(Path(args.models), Path(args.history), Path(args.tracking_state),
                    Path(args.metrics) if args.metrics else None)
    except (TrackingUnavailable, FileNotFoundError, ValueError) as err:
        print(f"sync: {err}", file=sys.stderr)
        return 2
    for name, d in [*done["members"].items(), ("parent", done["parent"])]:
        print(f"{name}: {d['logged']} metric value(s) logged{', run closed FINISHED' if d['finished'] else ''}")
    for run_id in done["killed"]:
        print(f"parent run {run_id}: left RUNNING by a killed stage, marked KILLED")
    return 0
