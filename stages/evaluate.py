"""Stage evaluate: top-1/top-5 of every member and of the ensemble, through the Prefect flow.

    python -m stages.evaluate --params params.yaml --prepared data/prepared --shards data/shards \
        --models models --reports reports/eval --metrics reports/metrics.json --tracking-state models/tracking.json
"""

from __future__ import annotations

import argparse
import sys

from alexnet.config import load_params
from alexnet.preflight import check_before_work
from alexnet.shards import ShardsError
from alexnet.tracking import TrackingUnavailable
from stages import run_stage

# dvc.yaml's params for this stage; tests/test_dvc_yaml.py checks them against what its code reads.
PARAMS = ("model", "train", "evaluate", "ensemble.members", "tracking.registered_model")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    ap.add_argument("--prepared", required=True, help="the prepare stage's output (classes.csv)")
    ap.add_argument("--shards", required=True, help="the preprocess stage's output")
    ap.add_argument("--models", required=True, help="the train stage's output")
    ap.add_argument("--reports", required=True, help="output folder: predictions, confusion matrix, plots")
    ap.add_argument("--metrics", required=True, help="output: the DVC metrics file")
    ap.add_argument("--tracking-state", required=True, help="the train stage's MLflow run ids")
    args = ap.parse_args(argv)

    def work() -> None:
        check_before_work(load_params(args.params), args.params, args.prepared)  # before Prefect's server starts
        from flows.evaluate_ensemble import evaluate_ensemble

        evaluate_ensemble(params_path=args.params, prepared=args.prepared, shards=args.shards, models=args.models,
                          reports=args.reports, metrics_path=args.metrics, tracking_state=args.tracking_state)

    return run_stage("evaluate", work, (ShardsError, TrackingUnavailable))


if __name__ == "__main__":
    sys.exit(main())
