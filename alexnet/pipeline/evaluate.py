"""Evaluate an ensemble (§4.1, §6): the evaluate stage's sequence, written once for the stage and the flow.

Each member predicts the val images (centre crop and the ten patches) on its training device
group, side by side as the training ran; its probabilities go to files. Then the ensemble's
average, metrics.json and the report files; then figures, report files and models into the
training's MLflow runs, and the ensemble registered, '@champion' following the best one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from alexnet.config.sections import Params
from alexnet.core.layout import CLASSES_FILE, MODEL_FILE, REPORT_FILES, TEN_CROP, VAL, member_name
from alexnet.data.shards import ShardSet, data_version
from alexnet.evaluation.members import load_member, predict_member
from alexnet.evaluation.reports import evaluate_ensemble as ensemble_reports
from alexnet.evaluation.reports import headline_view, read_class_names
from alexnet.pipeline.paths import EvalPaths
from alexnet.pipeline.placement import member_devices, members_at_once, placed
from alexnet.pipeline.steps import InOrder, Steps
from alexnet.serving.bundle import classifier_from_training, describe, log_classifier, val_digest
from alexnet.tracking.lifecycle import dataset_name, registered_name
from alexnet.tracking.registry import example_batch, log_model, register
from alexnet.tracking.runs import Tracker
from alexnet.tracking.state import read_tracking_state


def evaluate_ensemble(params: Params, paths: EvalPaths, steps: Steps | None = None) -> tuple[dict[str, Any], str]:
    """Top-1/top-5 error of every member and of the ensemble, centre crop and ten patches; the registered version."""
    steps = steps or InOrder()
    models = member_models(params, paths.models)
    calls = [(path, placed(params, devices), paths) for path, devices in zip(models.values(), member_devices(params))]
    probs = steps.each("predict-member", predict_member_files, calls, members_at_once(params))
    metrics = steps.one("ensemble-report", write_reports, dict(zip(models, probs)), paths)
    version = steps.one("log-to-mlflow", log_evaluation, metrics, params, paths)
    return metrics, version


def predict_member_files(model_path: Path, params: Params, paths: EvalPaths) -> dict[str, str]:
    """One member's val probabilities, saved under the report folder; {view: file}."""
    return predict_member(model_path, params, shards_dir=paths.shards, out_dir=paths.predictions)


def member_models(params: Params, models: Path) -> dict[str, Path]:
    """{member name: its exported model file}, in member order."""
    return {member_name(i): models / member_name(i) / MODEL_FILE for i in range(params.ensemble.members)}


def write_reports(member_probs: Mapping[str, Mapping[str, str]], paths: EvalPaths) -> dict[str, Any]:
    """The members' saved val probabilities -> the ensemble's, metrics.json and the report files."""
    labels = torch.from_numpy(ShardSet(paths.shards, VAL).labels)
    names = read_class_names(paths.prepared / CLASSES_FILE)
    return ensemble_reports(member_probs, labels, names, reports_dir=paths.reports, metrics_path=paths.metrics)


def log_evaluation(metrics: Mapping[str, Any], params: Params, paths: EvalPaths) -> str:
    """Figures, report files and models into the training's runs; register the ensemble; its version.

    The registered ensemble takes the view its headline figure was measured on, and '@champion'
    moves to it if that figure beats the holder's.
    """
    state = read_tracking_state(paths.tracking_state)  # the store of the project it lies in now
    tracker, parent = Tracker(state["uri"], state["experiment"]), state["parent_run"]
    tracker.log_metrics(parent, {k: v for k, v in metrics.items() if k != "members"})
    reports = [paths.metrics, *(paths.reports / name for name in REPORT_FILES)]
    tracker.log_artifacts(parent, [p for p in reports if p.exists()])
    crop = params.model.crop_size
    for name, run_id in state["member_runs"].items():
        tracker.log_metrics(run_id, metrics["members"][name])
        model = load_member(paths.models / name / MODEL_FILE, params, devices=("cpu",))
        log_model(tracker, run_id, model, example_batch(crop), name="model")
    view = headline_view(metrics)
    classifier = classifier_from_training(params, paths.models, paths.shards, paths.prepared / CLASSES_FILE)
    uri = log_classifier(tracker, parent, classifier, views="ten" if view == TEN_CROP else "center")
    data = {"data_version": data_version(paths.shards), "val_digest": val_digest(paths.shards),
            "dataset": dataset_name(params.data)}
    return register(tracker, uri, registered_name(params.tracking, params.data), metrics[view]["top1_err"],
                    metric_name=f"{view}.top1_err", data=data,
                    description=describe(classifier, metrics, view, data, len(state["member_runs"])))
