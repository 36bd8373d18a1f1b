"""Prefect flow: each member's val probabilities (centre, ten patches), their average (§6), reports.

Member predictions are tasks that write .npy files; the ensemble task reads those files, so the
network runs once per member and view. Figures go to reports/metrics.json and to the MLflow runs
the training flow opened; the ensemble is registered and '@champion' follows the best one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from alexnet.config import Params, load_params
from alexnet.evaluate import evaluate_ensemble as write_ensemble_reports
from alexnet.evaluate import read_class_names
from alexnet.member import load_member, member_name, predict_member
from alexnet.shards import ShardSet
from alexnet.tracking import Tracker, flatten_metrics
from flows.waves import run_in_waves


@task(name="predict-member", cache_policy=NO_CACHE)
def predict_member_task(model_path: str, params: Params, shards: str, predictions: str) -> dict[str, str]:
    return predict_member(Path(model_path), params, shards_dir=Path(shards), out_dir=Path(predictions))


@task(name="ensemble-report", cache_policy=NO_CACHE)
def ensemble_task(member_probs: dict[str, dict[str, str]], prepared: str, shards: str, reports: str,
                  metrics_path: str) -> dict:
    labels = torch.from_numpy(ShardSet(shards, "val").labels)
    names = read_class_names(Path(prepared) / "classes.csv")
    return write_ensemble_reports(member_probs, labels, names, reports_dir=reports, metrics_path=metrics_path)


@task(name="log-to-mlflow", cache_policy=NO_CACHE)
def log_task(metrics: dict, params: Params, models: str, reports: str, metrics_path: str,
             tracking_state: str) -> str | None:
    """Figures, report files and models into the training flow's MLflow runs; register the ensemble."""
    state = json.loads(Path(tracking_state).read_text())
    tracker = Tracker(state["uri"], state["experiment"])
    parent = state["parent_run"]
    tracker.log_metrics(parent, flatten_metrics({k: v for k, v in metrics.items() if k != "members"}))
    report_files = [Path(metrics_path), *(Path(reports) / f for f in ("confusion.png", "ensemble.png",
                                                                       "per_class.csv"))]
    tracker.log_artifacts(parent, [p for p in report_files if p.exists()])
    members = []
    for name, run_id in state["member_runs"].items():
        tracker.log_metrics(run_id, flatten_metrics(metrics["members"][name]))
        model = load_member(Path(models) / name / "model.pt", params, devices=("cpu",))
        members.append(model)
        tracker.log_model(run_id, model, _example(params), name="model")
    # The registered ensemble takes the view its headline figure was measured on.
    view = "ten_crop" if "ten_crop" in metrics else "center"
    ten = view == "ten_crop"
    ensemble_uri = tracker.log_ensemble(parent, members, _example(params, views=10 if ten else 0), ten_crop=ten)
    return tracker.register(ensemble_uri, params.tracking.registered_model, metrics[view]["top1_err"],
                            metric_name=f"{view}.top1_err")


def _example(params: Params, views: int = 0) -> torch.Tensor:
    """An input batch of two (torch.export needs a batch of at least 2 to keep it dynamic)."""
    c = params.model.crop_size
    return torch.zeros(2, *((views,) if views else ()), 3, c, c)


@flow(name="evaluate-ensemble")
def evaluate_ensemble(
    params_path: str,
    prepared: str,
    shards: str,
    models: str,
    reports: str,
    metrics_path: str,
    tracking_state: str,
) -> dict:
    """Top-1/top-5 error of every member and of the ensemble, centre crop and ten patches."""
    logger = get_run_logger()
    params = load_params(params_path)
    names = [member_name(i) for i in range(params.ensemble.members)]
    predictions = str(Path(reports) / "predictions")
    calls = [(str(Path(models) / n / "model.pt"), params, shards, predictions) for n in names]
    member_probs = dict(zip(names, run_in_waves(predict_member_task, calls, params.ensemble.concurrency)))
    metrics = ensemble_task(member_probs, prepared, shards, reports, metrics_path)
    version = log_task(metrics, params, models, reports, metrics_path, tracking_state)
    for view in ("center", "ten_crop"):
        if view in metrics:
            logger.info("ensemble %s: top-1 err %.4f, top-5 err %.4f", view, metrics[view]["top1_err"],
                        metrics[view]["top5_err"])
    logger.info("registered %s version %s", params.tracking.registered_model, version)
    return metrics
