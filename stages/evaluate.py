"""Stage evaluate: top-1/top-5 of every member and of the ensemble, through the Prefect flow.

    python -m stages.evaluate --params params.yaml --prepared data/prepared --shards data/shards \
        --models models --reports reports/eval --metrics reports/metrics.json --tracking-state models/tracking.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.config.sections import Params
from alexnet.core.layout import VAL
from alexnet.pipeline.preflight import check_before_work, check_shards
from stages import run_stage

FLAGS = (
    ("--prepared", "the prepare stage's output (classes.csv)"),
    ("--shards", "the preprocess stage's output"),
    ("--models", "the train stage's output"),
    ("--reports", "output folder: predictions, confusion matrix, plots"),
    ("--metrics", "output: the DVC metrics file"),
    ("--tracking-state", "the train stage's MLflow run ids"),
)


def work(params: Params, args: argparse.Namespace) -> None:
    check_before_work(params, args.params, args.prepared)  # this machine and the dataset, before Prefect starts
    check_shards(params, args.shards, args.params, splits=(VAL,))  # the images it reads, as the manifest says
    from alexnet.pipeline.evaluate import member_models
    from alexnet.pipeline.paths import EvalPaths
    from alexnet.training.checkpoint import verify_file

    for model in member_models(params, Path(args.models)).values():
        verify_file(model)  # damaged weights are refused by name here, not inside a task
    from flows.server import own_api_server

    ready = own_api_server()  # Prefect's temporary server as the stage's child: it dies with it, even on kill -9
    from flows.evaluate_ensemble import evaluate_ensemble_flow  # imported while the server starts

    ready()
    evaluate_ensemble_flow(params, EvalPaths(
        prepared=Path(args.prepared), shards=Path(args.shards), models=Path(args.models),
        reports=Path(args.reports), metrics=Path(args.metrics), tracking_state=Path(args.tracking_state)))


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, FLAGS, work, argv)


if __name__ == "__main__":
    sys.exit(main())
