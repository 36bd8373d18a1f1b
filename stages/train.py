"""Stage train: the ensemble's members, through the Prefect flow (so DVC and Prefect agree).

    python -m stages.train --params params.yaml --prepared data/prepared --shards data/shards \
        --models models --history reports/train --checkpoints checkpoints --tracking-state models/tracking.json

With train.replicas R > 1 the stage runs itself again under `torchrun --standalone
--nproc-per-node R` with the same arguments (under a torchrun the user started, several
machines say, it launches nothing and checks LOCAL_WORLD_SIZE == R). Rank 0 runs the same flow
(members one after another, no task retries: torchrun restarts the whole group, and the members
resume from their checkpoints); the other ranks train the same members, in the same order, beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.config.sections import Params
from alexnet.pipeline.preflight import check_before_work
from stages import run_stage

FLAGS = (
    ("--prepared", "the prepare stage's output (classes.csv)"),
    ("--shards", "the preprocess stage's output"),
    ("--models", "output: one folder per member"),
    ("--history", "output: per-epoch CSV per member (DVC plots)"),
    ("--checkpoints", "resumable state; survives DVC's output cleanup"),
    ("--tracking-state", "output: the MLflow run ids"),
)


def work(params: Params, args: argparse.Namespace) -> None:
    from alexnet.pipeline.paths import TrainPaths
    from alexnet.tracking.store import check_tracking, resolve_tracking_uri
    from alexnet.training import distributed  # torch: imported once the params are known to be good

    check_before_work(params, args.params, args.prepared)  # this machine and the dataset, before Prefect starts
    check_tracking(resolve_tracking_uri(params.tracking.uri, Path(args.params).resolve().parent))  # one line
    tr = params.train
    if tr.replicas > 1 and not distributed.under_torchrun():
        launch_ranks(params, args)
        return
    paths = TrainPaths(
        root=Path(args.params).resolve().parent, prepared=Path(args.prepared), shards=Path(args.shards),
        models=Path(args.models), history=Path(args.history), checkpoints=Path(args.checkpoints),
        tracking_state=Path(args.tracking_state))
    with distributed.process_group(params.model.devices, tr.replicas, tr.rendezvous_timeout) as ranks:
        if not ranks.is_main:
            from alexnet.pipeline.train import train_members_on_rank

            train_members_on_rank(params, paths)
            return
        from flows.server import own_api_server

        own_api_server()  # Prefect's temporary server as the stage's child: it dies with it, even on kill -9
        from flows.train_ensemble import run_train_flow

        run_train_flow(params, paths, retries=0 if ranks.parallel else None)


def launch_ranks(params: Params, args: argparse.Namespace) -> None:
    """This stage again under `torchrun --standalone`, train.replicas ranks on this machine."""
    import torch

    from alexnet.training import distributed

    tr = params.train
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    distributed.check_fits(tr.replicas, params.model.devices, visible)
    argv = ["--params", args.params, *(a for flag, _ in FLAGS for a in (flag, getattr(args, _dest(flag))))]
    code = distributed.launch(tr.replicas, tr.max_restarts, "stages.train", argv)
    if code:
        print(f"train: torchrun with train.replicas={tr.replicas} ranks failed (exit code {code}); the ranks' "
              "errors are above", file=sys.stderr)
        raise SystemExit(code)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, FLAGS, work, argv)


if __name__ == "__main__":
    sys.exit(main())
