"""Prefect flow for scheduled runs: the DVC pipeline, one visible task per stage.

Each task is `dvc repro --single-item <stage>`: DVC still decides what is up to date (a stage
whose inputs did not change is skipped in seconds), and the Prefect UI shows which stage ran,
how long it took and where it failed. A scheduled run (flows/deploy.py, prefect.yaml) also brings
its checkout to the team's code first (`update`) and, once every stage succeeded, pushes the outputs
to the DVC remote and its dvc.lock and metrics to a results branch (`publish_to`): flows/checkout.py.
One run at a time per checkout: the flow holds the checkout's lock from first step to last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.checkout import publish_results, run_lock, update_checkout
from flows.watch import stream_lines


def stage_order(dvc_yaml: Path) -> list[str]:
    """Stage names in the order dvc.yaml declares them (each depends only on earlier ones)."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    if not stages:
        raise ValueError(f"{dvc_yaml}: no stages defined")
    return list(stages)


@task(name="dvc-stage", cache_policy=NO_CACHE, task_run_name="dvc repro {stage}")
def repro_stage(stage: str, project: str, force: bool = False) -> None:
    logger = get_run_logger()
    # An argument list, never a shell string: the stage name comes from dvc.yaml.
    cmd = [str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", stage, *(["--force"] if force else [])]
    logger.info("running %s in %s", " ".join(cmd), project)
    code = stream_lines(cmd, project, logger.info)  # the stage's log in this task run as it is written
    if code != 0:
        raise RuntimeError(f"dvc repro {stage} failed with exit code {code}")


@task(name="update-checkout", cache_policy=NO_CACHE)
def update_task(project: str, remote: str) -> str:
    head = update_checkout(Path(project), remote)
    get_run_logger().info("checkout %s at %s, fast-forwarded to its upstream at %s", project, head[:12], remote)
    return head


@task(name="publish-results", cache_policy=NO_CACHE)
def publish_task(project: str, branch: str, remote: str) -> str | None:
    logger = get_run_logger()
    commit = publish_results(Path(project), branch, f"pipeline run {flow_run.get_name() or 'by hand'}: dvc.lock, "
                             "metrics and tracked outputs", remote)
    if commit is None:
        logger.info("outputs pushed to the DVC remote; %s at %s holds these results already", branch, remote)
    else:
        logger.info("outputs pushed to the DVC remote; results commit %s pushed to %s at %s", commit[:12], branch,
                    remote)
    return commit


@flow(name="pipeline")
def pipeline(project: str = ".", force: bool = False, update: bool = False, publish_to: str | None = None,
             remote: str = "origin") -> list[str]:
    """`dvc repro` of every stage in order, each as its own task; with `update`, the checkout fast-forwarded
    to its upstream at `remote` first; with `publish_to`, the results pushed (DVC remote, that git branch) after."""
    project_dir = Path(project).resolve()
    with run_lock(project_dir):
        if update:
            update_task(str(project_dir), remote)
        stages = stage_order(project_dir / "dvc.yaml")
        for stage in stages:
            repro_stage(stage, str(project_dir), force)
        if publish_to:
            publish_task(str(project_dir), publish_to, remote)
    return stages


if __name__ == "__main__":
    pipeline()
