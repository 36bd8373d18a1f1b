"""Prefect flow for scheduled runs: the DVC pipeline, one visible task per stage.

Each task is `dvc repro --single-item <stage>`: DVC still decides what is up to date (a stage
whose inputs did not change is skipped in seconds), and the Prefect UI shows which stage ran,
how long it took and where it failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE


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
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines()[-40:]:
        logger.info(line)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} failed with exit code {proc.returncode}")


@flow(name="pipeline")
def pipeline(project: str = ".", force: bool = False) -> list[str]:
    """`dvc repro` of every stage in order, each as its own task."""
    project_dir = Path(project).resolve()
    stages = stage_order(project_dir / "dvc.yaml")
    for stage in stages:
        repro_stage(stage, str(project_dir), force)
    return stages


if __name__ == "__main__":
    pipeline()
