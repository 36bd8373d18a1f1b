"""DVC stage `train`: the ensemble's members, through the Prefect flow (so DVC and Prefect agree)."""

from __future__ import annotations

import argparse

from flows.train_ensemble import train_ensemble


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", required=True, help="prepare stage output (classes.csv)")
    ap.add_argument("--shards", required=True, help="preprocess stage output")
    ap.add_argument("--models", required=True, help="output: one folder per member")
    ap.add_argument("--history", required=True, help="output: per-epoch CSV per member (DVC plots)")
    ap.add_argument("--checkpoints", required=True, help="resumable state; survives DVC's output cleanup")
    ap.add_argument("--tracking-state", required=True, help="output: the MLflow run ids")
    args = ap.parse_args(argv)
    train_ensemble(
        params_path=args.params, prepared=args.prepared, shards=args.shards, models=args.models,
        history=args.history, checkpoints=args.checkpoints, tracking_state=args.tracking_state,
    )


if __name__ == "__main__":
    main()
