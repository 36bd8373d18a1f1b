"""Stage train: the ensemble's members, through the Prefect flow (so DVC and Prefect agree).

    python -m stages.train --params params.yaml --prepared data/prepared --shards data/shards \
        --models models --history reports/train --checkpoints checkpoints --tracking-state models/tracking.json

With train.replicas R > 1 the stage runs itself again under `torchrun --standalone
--nproc-per-node R` with the same arguments (under a torchrun the user started, several
machines say, it launches nothing and checks LOCAL_WORLD_SIZE == R). Rank 0 runs the same flow
(members one after another, no task retries: torchrun restarts the whole group, and the members
resume from their checkpoints); the other ranks train the same members, in the same order, beside it.

On SIGTERM, SIGINT or the loss of its parent (`dvc repro` killed alone) every rank stops after its
current step, writes a checkpoint of the epoch in progress and exits, naming the signal; a rerun
resumes bit-exactly. One trainer at a time: the stage holds the checkpoints folder's lock
(alexnet/core/locks.py) and waits for a stopping predecessor before failing in one line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from alexnet.config.sections import Params
from alexnet.core import signals
from alexnet.core.cli import Interrupted
from alexnet.core.locks import exclusive
from alexnet.pipeline.placement import member_devices
from alexnet.pipeline.preflight import check_before_work, check_shards
from stages import run_stage

FLAGS = (
    ("--prepared", "the prepare stage's output (classes.csv)"),
    ("--shards", "the preprocess stage's output"),
    ("--models", "output: one folder per member"),
    ("--history", "output: per-epoch CSV per member (DVC plots)"),
    ("--checkpoints", "resumable state; survives DVC's output cleanup"),
    ("--tracking-state", "output: the MLflow run ids"),
)
GRACE_S = 60.0  # the longest a step may take before a stopped stage exits without its checkpoint


def work(params: Params, args: argparse.Namespace) -> None:
    from alexnet.tracking.store import check_tracking, in_home_project, resolve_tracking_uri
    from alexnet.training import distributed  # torch: imported once the params are known to be good

    check_before_work(params, args.params, args.prepared)  # this machine and the dataset, before Prefect starts
    check_shards(params, args.shards, args.params)  # every file as its manifest says: once, before any task
    check_tracking(resolve_tracking_uri(params.tracking.uri, Path(args.params).resolve().parent))  # one line
    member_devices(params)  # a pool too small for one member: one line, before the lock makes any folder
    # In a copy `dvc exp run --queue/--temp` made, the checkpoints go to the project itself: DVC deletes the
    # copy, and they must outlive it as the tracking store does. Experiments may share the folder: a
    # checkpoint's name is keyed by everything that decides the weights.
    args.checkpoints = str(in_home_project(Path(args.checkpoints))[1])  # before the lock, the ranks and the flow
    if distributed.under_torchrun():  # the process that launched torchrun (or the user) holds the lock
        train(params, args)
        return
    with exclusive(Path(args.checkpoints), "trainer", wait_s=GRACE_S + 10):
        if params.train.replicas > 1:
            launch_ranks(params, args)
        else:
            train(params, args)


def train(params: Params, args: argparse.Namespace) -> None:
    """This process's part: rank 0 runs the flow, other ranks train beside it; both stop when told."""
    from alexnet.pipeline.paths import TrainPaths
    from alexnet.training import distributed

    paths = TrainPaths(
        root=Path(args.params).resolve().parent, prepared=Path(args.prepared), shards=Path(args.shards),
        models=Path(args.models), history=Path(args.history), checkpoints=Path(args.checkpoints),
        tracking_state=Path(args.tracking_state))
    with distributed.process_group(params.model.devices, params.train.replicas,
                                   params.train.rendezvous_timeout) as ranks:
        if not ranks.is_main:
            from alexnet.pipeline.train import train_members_on_rank

            signals.run_beside(lambda: train_members_on_rank(params, paths, should_stop=signals.stop_requested))
            return
        from flows.server import own_api_server

        ready = own_api_server()  # Prefect's temporary server as the stage's child: it dies with it, even on kill -9
        import mlflow  # noqa: F401 - the flow's first task needs it: imported, as the flow is, while the server starts

        from flows.train_ensemble import run_train_flow

        ready()
        retries = 0 if ranks.parallel else None
        signals.run_beside(lambda: run_train_flow(params, paths, should_stop=signals.stop_requested, retries=retries))


def launch_ranks(params: Params, args: argparse.Namespace) -> None:
    """This stage again under `torchrun --standalone`, train.replicas ranks on this machine."""
    import torch

    from alexnet.training import distributed

    tr = params.train
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    distributed.check_fits(tr.replicas, params.model.devices, visible)
    argv = ["--params", args.params, *(a for flag, _ in FLAGS for a in (flag, getattr(args, _dest(flag))))]
    code = _wait_forwarding_stop(subprocess.Popen(distributed.torchrun_command(tr.replicas, tr.max_restarts,
                                                                                  "stages.train", argv)))
    if signals.stop_requested():
        raise Interrupted(f"stopped by {signals.STOP.reason}; the ranks wrote their checkpoints",
                                  signals.STOP.code)
    if code:
        print(f"train: torchrun with train.replicas={tr.replicas} ranks failed (exit code {code}); the ranks' "
              "errors are above", file=sys.stderr)
        raise SystemExit(code)


def _wait_forwarding_stop(proc: subprocess.Popen) -> int:
    """Wait for torchrun; a stop told to this process alone (its parent gone, a SIGTERM to it) goes on
    to torchrun as SIGTERM, which passes it to the ranks."""
    forwarded = False
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if signals.stop_requested() and not forwarded:
                proc.terminate()
                forwarded = True


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, FLAGS, work, argv, grace_s=GRACE_S)


if __name__ == "__main__":
    sys.exit(main())
