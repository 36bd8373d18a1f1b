"""Stage train: the ensemble's members, through the Prefect flow (so DVC and Prefect agree).

    python -m stages.train --params params.yaml --prepared data/prepared --shards data/shards \
        --models models --history reports/train --checkpoints checkpoints --tracking-state models/tracking.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.config import Params
from alexnet.preflight import check_before_work
from alexnet.shards import ShardsError
from alexnet.tracking import TrackingUnavailable
from stages import run_stage

# dvc.yaml's params for this stage; tests/test_dvc_yaml.py checks them against what its code reads.
PARAMS = (
    "data",
    "ensemble.members",
    "evaluate.batch_size",
    "evaluate.ten_crop",
    "model",
    "tracking.experiment",
    "tracking.registered_model",
    "tracking.uri",
    "train",
)
FLAGS = (
    ("--prepared", "the prepare stage's output (classes.csv)"),
    ("--shards", "the preprocess stage's output"),
    ("--models", "output: one folder per member"),
    ("--history", "output: per-epoch CSV per member (DVC plots)"),
    ("--checkpoints", "resumable state; survives DVC's output cleanup"),
    ("--tracking-state", "output: the MLflow run ids"),
)


def work(params: Params, args: argparse.Namespace) -> None:
    check_before_work(params, args.params, args.prepared)  # this machine and the dataset, before Prefect starts
    from alexnet.tracking import check_tracking, resolve_tracking_uri

    check_tracking(resolve_tracking_uri(params.tracking.uri, Path(args.params).resolve().parent))  # one line
    from alexnet.ensemble import TrainPaths
    from flows.server import own_api_server

    own_api_server()  # Prefect's temporary server as this stage's child: it dies with the stage, even on kill -9
    from flows.train_ensemble import train_ensemble

    train_ensemble(params, TrainPaths(
        root=Path(args.params).resolve().parent, prepared=Path(args.prepared), shards=Path(args.shards),
        models=Path(args.models), history=Path(args.history), checkpoints=Path(args.checkpoints),
        tracking_state=Path(args.tracking_state)))


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, FLAGS, work, argv, (ShardsError, TrackingUnavailable))


if __name__ == "__main__":
    sys.exit(main())
