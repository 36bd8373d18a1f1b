"""Prefect flow: each member's val probabilities (centre, ten patches), their average (§6), reports.

The sequence is alexnet/pipeline/evaluate.py's `evaluate_ensemble`; this flow runs its steps as
tasks. Member predictions are tasks that write .npy files; the ensemble task reads those files, so
the network runs once per member and view; members predict side by side on their device groups
(ensemble.devices), on this machine also when they trained on Ray.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from alexnet.config.sections import Params
from alexnet.core.layout import VIEWS
from alexnet.pipeline.evaluate import evaluate_ensemble
from alexnet.pipeline.paths import EvalPaths
from alexnet.tracking.lifecycle import registered_name
from alexnet.tracking.state import read_tracking_state
from flows import watch
from flows.steps import PrefectSteps


@flow(name="evaluate-ensemble")
def evaluate_ensemble_flow(params: Params, paths: EvalPaths) -> dict[str, Any]:
    """Top-1/top-5 error of every member and of the ensemble, centre crop and ten patches; a table of
    them and a link to the MLflow run as artifacts of the flow run."""
    watch.bars_on_terminal_only()
    logger = get_run_logger()
    steps = PrefectSteps({"predict-member": dict(task_run_name="predict-{model_path.parent.name}")})
    metrics, version = evaluate_ensemble(params, paths, steps)
    for view in VIEWS:
        if view in metrics:
            logger.info("ensemble %s: top-1 err %.4f, top-5 err %.4f", view, metrics[view]["top1_err"],
                        metrics[view]["top5_err"])
    logger.info("registered %s version %s", registered_name(params.tracking, params.data), version)
    watch.report_evaluation(metrics, read_tracking_state(paths.tracking_state))
    return metrics
