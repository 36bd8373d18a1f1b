"""Putting the store right after an outage, from the files on disk.

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

import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.core.layout import HISTORY_SUFFIX, MEMBER_SUMMARY_FILE
from alexnet.tracking.owners import end_orphaned_parents
from alexnet.tracking.runs import EPOCH_METRICS, Tracker, flatten_metrics
from alexnet.tracking.state import read_tracking_state
from alexnet.tracking.store import check_tracking

log = logging.getLogger(__name__)


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
        finished = (Path(models) / name / MEMBER_SUMMARY_FILE).exists() and _finish_if_running(tracker, run_id)
        done["members"][name] = {"logged": logged, "finished": finished}
    parent = state["parent_run"]
    done["parent"] = {"logged": 0 if figures is None else
                      log_missing_metrics(tracker, parent, {k: v for k, v in figures.items() if k != "members"}),
                      "finished": _finish_if_running(tracker, parent)}
    done["killed"] = end_orphaned_parents(tracker.client, tracker.experiment_id)
    return done
