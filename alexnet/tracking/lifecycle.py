"""A run's life as the pipeline's sequences live it, written once for the ensemble and the study.

Opened with the provenance every run carries; when the work inside raises, closed FAILED on a
best-effort basis (the work's own error is the one that matters); when the work's files are
complete, their logging and the close are best-effort too: a store that fails then only warns,
and `python -m alexnet.tracking sync` catches up later (the failure policy of alexnet/tracking/runs.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from alexnet.config.sections import DataParams, TrackingParams
from alexnet.core.layout import DVC_LOCK_FILE
from alexnet.tracking.runs import Tracker

log = logging.getLogger(__name__)

# How often a member's CPU, memory (and GPU) use is sampled; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides.
SYSTEM_METRICS_INTERVAL_S = 10.0
SYSTEM_METRICS_STOP_S = 30.0  # the longest a member's end waits for its last system metrics


def dataset_name(data: DataParams) -> str:
    """The source the shards were made from: "synthetic", or "imagenet:<root>"."""
    return data.source if data.root is None else f"{data.source}:{data.root}"


def dataset_slug(data: DataParams) -> str:
    """A short name of the dataset, for the names keyed to it: "synthetic-<its settings' hash>", or the
    root folder's name ("imagenette-224")."""
    if data.root is None:  # the synthetic source: its generator's settings are the dataset
        from alexnet.core.provenance import fingerprint

        return f"{data.source}-{fingerprint(data.synthetic.model_dump(mode='json'))[:6]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data.root).resolve().name).strip("-").lower() or data.source


def experiment_name(tracking: TrackingParams, data: DataParams) -> str:
    """The MLflow experiment of runs on this dataset: tracking.experiment, dot, the dataset."""
    return f"{tracking.experiment}.{dataset_slug(data)}"


def registered_name(tracking: TrackingParams, data: DataParams) -> str:
    """The registered model of ensembles of this dataset: one '@champion' per dataset."""
    return f"{tracking.registered_model}.{dataset_slug(data)}"


def entry_point(root: Path) -> str:
    """The program that started this process (MLflow's source name), relative to the project if inside it."""
    program = Path(sys.argv[0]).resolve()
    return program.relative_to(root.resolve()).as_posix() if program.is_relative_to(root.resolve()) else program.name


@contextlib.contextmanager
def failed_on_error(tracker: Tracker, run_id: str) -> Iterator[str]:
    """The block's exception ends `run_id` as FAILED (best-effort) and goes on up unchanged."""
    try:
        yield run_id
    except BaseException:
        tracker.best_effort("closing the run as FAILED", run_id, tracker.end, run_id, "FAILED")
        raise


def finish(tracker: Tracker, run_id: str, files: Sequence[Path] = ()) -> None:
    """The work is complete on disk: log its files and close the run FINISHED, each best-effort."""
    if not files or tracker.best_effort("logging the run's files", run_id, tracker.log_artifacts, run_id, list(files)):
        tracker.best_effort("closing the run", run_id, tracker.end, run_id)


def pipeline_outputs(root: Path) -> list[str]:
    """The tracked files `dvc repro` itself rewrites: dvc.lock and the outputs, metrics and plots dvc.yaml
    names (relative to the project); only dvc.lock when dvc.yaml cannot be read."""
    import yaml

    found = [DVC_LOCK_FILE]
    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return found
    entries = [e for stage in (spec.get("stages") or {}).values() if isinstance(stage, dict)
               for key in ("outs", "metrics", "plots") for e in stage.get(key) or []]
    for entry in [*entries, *(spec.get("plots") or [])]:
        found.extend([entry] if isinstance(entry, str) else list(entry) if isinstance(entry, dict) else [])
    return found


def source_commit(root: Path) -> str:
    """HEAD's commit, '-dirty' when a tracked file differs from it, as provenance.git_commit says, but
    not counting what the pipeline itself writes (`pipeline_outputs`): a `dvc repro` that rewrote its
    dvc.lock before the training started ran the committed code. 'unknown' outside a git checkout."""
    excluded = [f":(exclude){path}" for path in pipeline_outputs(root)]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


@contextlib.contextmanager
def system_metrics(tracker: Tracker, run_id: str, interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> Iterator[None]:
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network; the GPU's with
    nvidia-ml-py installed) logged into `run_id` while the block runs, best-effort.

    MLflow's monitor drops the samples of its last, unfinished interval; they are logged here at the end,
    so a run shorter than one interval has its sample too. A retried run's steps go on from its last one.
    """
    monitor = None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per member
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True,
                                       tracking_uri=tracker.uri)
        monitor.start()
    except Exception as err:  # noqa: BLE001 - what the machine did is worth a warning, never the training
        log.warning("MLflow system metrics for run %s are off (%s: %s)", run_id, type(err).__name__, err)
        monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            tracker.best_effort("logging system metrics", run_id, _stop_monitor, monitor)


def _stop_monitor(monitor, timeout_s: float = SYSTEM_METRICS_STOP_S) -> None:
    """Stop the monitor and log its last samples, within `timeout_s`: a store that stopped answering
    (MLflow retries for minutes) must not hold the member's end; the thread is left to its retries."""
    failed: list[BaseException] = []

    def stop() -> None:
        try:
            monitor.finish()  # stops its thread and flushes what it published
            if any(m.metrics for m in monitor.monitors):
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        except Exception as err:  # noqa: BLE001 - raised below, in the caller's thread
            failed.append(err)

    stopper = threading.Thread(target=stop, name="stop-system-metrics", daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if stopper.is_alive():
        raise TimeoutError(f"the store did not take the last system metrics within {timeout_s:.0f} s")
    if failed:
        raise failed[0]
