"""Prefect flow: a study, one retried task per (variant, seed), `concurrency` at a time.

The sequence is alexnet/study/runs.py's `run_study`: the dataset once, one MLflow parent run, each
(variant, seed) in a nested run tagged with both, then the table, figures and REPORT.md. A failed
run is retried and resumes from its last checkpoint; a finished one is not trained again.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from alexnet.study.runs import RunHook, StudyPaths, run_study
from alexnet.study.spec import StudySpec
from flows.steps import PrefectSteps


@flow(name="study")
def study(spec: StudySpec, paths: StudyPaths, on_epoch: RunHook | None = None, report: bool = True) -> dict[str, Any]:
    """Train every (variant, seed) of `spec`, write the study's files, log the study to MLflow."""
    steps = PrefectSteps({"study-run": dict(retries=spec.retries, retry_delay_seconds=1,
                                            task_run_name="{variant}-seed-{seed}")})
    summary = run_study(spec, paths, steps, on_epoch, report)
    for run in summary["runs"]:
        get_run_logger().info("trained %s", run)
    return summary
