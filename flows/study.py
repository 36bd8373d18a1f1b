"""Prefect flow: a study (issue 14), one retried task per (variant, seed), `concurrency` at a time.

The work is alexnet/study_runs.py's: the dataset once, one MLflow parent run for the study, and
per (variant, seed) alexnet.member.train_member in a nested run tagged with both. A failed task
is retried and resumes from its last checkpoint; a finished one is not trained again. Then the
table, Figure 1, Figures 3 and 4 of one member and REPORT.md go to reports/study/ and into the
parent run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from alexnet.study import StudySpec, variant_params
from alexnet.study_runs import (
    RunHook,
    StudyPaths,
    StudyRun,
    prepare_study_data,
    run_variant_seed,
    start_study_tracking,
)
from flows.waves import run_in_waves


@task(name="study-run", task_run_name="{variant}-seed-{seed}", cache_policy=NO_CACHE)
def study_run_task(spec: StudySpec, variant: str, seed: int, paths: StudyPaths, run: StudyRun,
                   on_epoch: RunHook | None = None) -> dict[str, Any]:
    get_run_logger().info("training %s with seed %d", variant, seed)
    return run_variant_seed(spec, variant, seed, paths, run, on_epoch)


@flow(name="study")
def study(spec: StudySpec, paths: StudyPaths, on_epoch: RunHook | None = None,
          report: bool = True) -> dict[str, Any]:
    """Train every (variant, seed) of `spec`, write reports/study/, log the study to MLflow."""
    from pathlib import Path

    from alexnet.figures import write_figures
    from alexnet.member import load_member
    from alexnet.study_report import write_study_files

    logger = get_run_logger()
    data_root = prepare_study_data(spec, paths)
    run = start_study_tracking(spec, paths, data_root)
    task_fn = study_run_task.with_options(retries=spec.retries, retry_delay_seconds=1)
    calls = [(spec, v, s, paths, run, on_epoch) for s in spec.seeds for v in spec.variants]
    try:
        rows = run_in_waves(task_fn, calls, spec.concurrency)
        summary = write_study_files(spec, rows, paths.out)
        member = next(r for r in rows if r["variant"] == spec.figures_variant)
        params = variant_params(spec, member["variant"], member["seed"])
        model = load_member(Path(member["model"]), params, devices=("cpu",))
        summary["figures"] = write_figures(model, paths.shards, paths.out / "figures",
                                           crop_size=params.model.crop_size, divisor=params.model.input_scale)
        if report:
            from alexnet.report import write_report

            write_report(paths.out, params)
        run.tracker.log_metrics(run.parent, {"figures": summary["figures"]["figure3"]["colour_specificity"]})
        run.tracker.log_artifacts(run.parent, [p for p in sorted(paths.out.iterdir())])
    except BaseException:
        run.tracker.end(run.parent, status="FAILED")
        raise
    run.tracker.end(run.parent)
    for r in rows:
        logger.info("%s seed %d: centre top-1 err %.4f", r["variant"], r["seed"], r["center_top1_err"])
    return {**summary, "parent_run": run.parent, "runs": {f"{r['variant']}/seed-{r['seed']}": r["run_id"]
                                                          for r in rows}}
