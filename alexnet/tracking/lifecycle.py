"""A run's life as the pipeline's sequences live it, written once for the ensemble and the study.

Opened with the provenance every run carries; when the work inside raises, closed FAILED on a
best-effort basis (the work's own error is the one that matters); when the work's files are
complete, their logging and the close are best-effort too: a store that fails then only warns,
and `python -m alexnet.tracking sync` catches up later (the failure policy of alexnet/tracking/runs.py).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from alexnet.config.sections import DataParams, TrackingParams
from alexnet.tracking.runs import Tracker


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
