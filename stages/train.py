"""Stage train: the ensemble's members, through the Prefect flow (so DVC and Prefect agree).

    python -m stages.train --params params.yaml --prepared data/prepared --shards data/shards \
        --models models --history reports/train --checkpoints checkpoints --tracking-state models/tracking.json

With train.replicas R > 1 the stage runs itself again under `torchrun --standalone
--nproc-per-node R` with the same arguments (under a torchrun the user started, several
machines say, it launches nothing and checks LOCAL_WORLD_SIZE == R). Rank 0 runs the flow (one
MLflow run per member, the flow's steps without Prefect); the other ranks train the same members,
in the same order, beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from alexnet.config import Params
from alexnet.preflight import check_before_work
from alexnet.shards import ShardsError
from alexnet.tracking import TrackingUnavailable
from stages import run_stage

if TYPE_CHECKING:
    from alexnet import distributed
    from alexnet.ensemble import TrainPaths

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
    from alexnet import distributed  # torch: imported once the params are known to be good
    from alexnet.ensemble import TrainPaths
    from alexnet.tracking import check_tracking, resolve_tracking_uri

    check_before_work(params, args.params, args.prepared)  # this machine and the dataset, before Prefect starts
    check_tracking(resolve_tracking_uri(params.tracking.uri, Path(args.params).resolve().parent))  # one line
    tr = params.train
    if tr.replicas > 1 and not distributed.under_torchrun():
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        distributed.check_fits(tr.replicas, params.model.devices, visible)
        argv = ["--params", args.params, *(a for flag, _ in FLAGS for a in (flag, getattr(args, _dest(flag))))]
        code = distributed.launch(tr.replicas, tr.max_restarts, "stages.train", argv)
        if code:
            print(f"train: torchrun with train.replicas={tr.replicas} ranks failed (exit code {code}); the ranks' "
                  "errors are above", file=sys.stderr)
            raise SystemExit(code)
        return
    paths = TrainPaths(
        root=Path(args.params).resolve().parent, prepared=Path(args.prepared), shards=Path(args.shards),
        models=Path(args.models), history=Path(args.history), checkpoints=Path(args.checkpoints),
        tracking_state=Path(args.tracking_state))
    with distributed.process_group(params.model.devices, tr.replicas, tr.rendezvous_timeout) as ranks:
        if not ranks.parallel:
            from flows.server import own_api_server

            own_api_server()  # Prefect's temporary server as the stage's child: it dies with it, even on kill -9
            from flows.train_ensemble import train_ensemble

            train_ensemble(params, paths)
        else:
            _train_ranks(params, paths, ranks)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _train_ranks(params: Params, paths: TrainPaths, ranks: distributed.Ranks) -> None:
    """Every rank trains the members one after another; rank 0 alone tracks them (one MLflow run each).

    These are the flow's own steps (alexnet/ensemble.py) without Prefect: the ranks' collectives
    must meet, so members run one at a time, and a failed rank is not retried member by member:
    torchrun restarts the whole group (train.max_restarts) and the members resume from their
    checkpoints.
    """
    from alexnet.ensemble import finish_ensemble_tracking, start_ensemble_tracking, train_logged_member
    from alexnet.member import train_member

    members = range(params.ensemble.members)
    if ranks.is_main:
        run = start_ensemble_tracking(params, paths)
        results = [train_logged_member(index, params, paths, run) for index in members]
        finish_ensemble_tracking(run, results, paths.tracking_state)
        return
    for index in members:
        train_member(index, params, prepared_dir=paths.prepared, shards_dir=paths.shards, models_dir=paths.models,
                     history_dir=paths.history, checkpoints_dir=paths.checkpoints, progress=False)


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, FLAGS, work, argv, (ShardsError, TrackingUnavailable))


if __name__ == "__main__":
    sys.exit(main())
