"""Prefect flow: a study, one retried task per run, `concurrency` at a time.

The sequence is alexnet/study/runs.py's `run_study`: the datasets once, one MLflow parent run, the
tuning runs, the pilot, every (variant, seed) in a nested run tagged with both, the figures'
measurements and the runs' files. A failed run is retried and resumes from its last checkpoint; a
finished one is read back, not trained again.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from alexnet.study.runs import RunHook, StudyPaths, run_study
from alexnet.study.spec import StudySpec
from flows import retry_unless_hopeless
from flows.steps import PrefectSteps


@flow(name="study")
def study(spec: StudySpec, paths: StudyPaths, on_epoch: RunHook | None = None) -> dict[str, Any]:
    """Train and measure every run of `spec`; write the runs' files; log the study to MLflow."""
    retried = dict(retries=spec.retries, retry_delay_seconds=1, retry_condition_fn=retry_unless_hopeless,
                   task_run_name="{call.label}")
    steps = PrefectSteps({"study-run": retried, "tune-run": retried})
    summary = run_study(spec, paths, steps, on_epoch)
    for label in summary["runs"]:
        get_run_logger().info("finished %s", label)
    return summary
