"""Stage train: the ensemble's members, through the Prefect flow (so DVC and Prefect agree).

    python -m stages.train --params params.yaml --prepared data/prepared --shards data/shards \
        --models models --history reports/train --checkpoints checkpoints --tracking-state models/tracking.json
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
PARAMS = ("model", "train", "evaluate", "ensemble.members", "data", "tracking.uri", "tracking.experiment")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    ap.add_argument("--prepared", required=True, help="the prepare stage's output (classes.csv)")
    ap.add_argument("--shards", required=True, help="the preprocess stage's output")
    ap.add_argument("--models", required=True, help="output: one folder per member")
    ap.add_argument("--history", required=True, help="output: per-epoch CSV per member (DVC plots)")
    ap.add_argument("--checkpoints", required=True, help="resumable state; survives DVC's output cleanup")
    ap.add_argument("--tracking-state", required=True, help="output: the MLflow run ids")
    args = ap.parse_args(argv)

    def work() -> None:
        check_before_work(load_params(args.params), args.params, args.prepared)  # before Prefect's server starts
        from flows.train_ensemble import train_ensemble

        train_ensemble(params_path=args.params, prepared=args.prepared, shards=args.shards, models=args.models,
                       history=args.history, checkpoints=args.checkpoints, tracking_state=args.tracking_state)

    return run_stage("train", work, (ShardsError, TrackingUnavailable))


if __name__ == "__main__":
    sys.exit(main())
