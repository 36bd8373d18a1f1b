"""Prefect flow: each member's val probabilities (centre, ten patches), their average (§6), reports.

Member predictions are tasks that write .npy files; the ensemble task reads those files, so the
network runs once per member and view; members predict side by side on their device groups
(ensemble.devices), on this machine also when they trained on Ray. Figures go to
reports/metrics.json and to the MLflow runs the training flow opened; the ensemble is registered
and '@champion' follows the best one.
The work is alexnet/ensemble.py's; this flow adds the task boundaries, concurrency and logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from alexnet.config import Params
from alexnet.ensemble import (
    EvalPaths,
    log_evaluation,
    member_devices,
    member_models,
    members_at_once,
    placed,
    write_reports,
)
from alexnet.layout import VIEWS
from alexnet.member import predict_member
from flows.waves import run_in_waves


@task(name="predict-member", task_run_name="predict-{name}", cache_policy=NO_CACHE)
def predict_member_task(name: str, model_path: Path, params: Params, paths: EvalPaths) -> dict[str, str]:
    return predict_member(model_path, params, shards_dir=paths.shards, out_dir=paths.predictions)


@task(name="ensemble-report", cache_policy=NO_CACHE)
def ensemble_task(member_probs: dict[str, dict[str, str]], paths: EvalPaths) -> dict[str, Any]:
    return write_reports(member_probs, paths)


@task(name="log-to-mlflow", cache_policy=NO_CACHE)
def log_task(metrics: dict[str, Any], params: Params, paths: EvalPaths) -> str:
    return log_evaluation(metrics, params, paths)


@flow(name="evaluate-ensemble")
def evaluate_ensemble(params: Params, paths: EvalPaths) -> dict[str, Any]:
    """Top-1/top-5 error of every member and of the ensemble, centre crop and ten patches."""
    logger = get_run_logger()
    models = member_models(params, paths.models)
    # Each member predicts on its training group from ensemble.devices (model.devices without a pool).
    calls = [(name, path, placed(params, devices), paths)
             for (name, path), devices in zip(models.items(), member_devices(params))]
    member_probs = dict(zip(models, run_in_waves(predict_member_task, calls, members_at_once(params))))
    metrics = ensemble_task(member_probs, paths)
    version = log_task(metrics, params, paths)
    for view in VIEWS:
        if view in metrics:
            logger.info("ensemble %s: top-1 err %.4f, top-5 err %.4f", view, metrics[view]["top1_err"],
                        metrics[view]["top5_err"])
    logger.info("registered %s version %s", params.tracking.registered_model, version)
    return metrics
