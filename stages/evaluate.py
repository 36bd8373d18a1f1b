"""DVC stage `evaluate`: top-1/top-5 of members and ensemble, through the Prefect flow."""

from __future__ import annotations

import argparse

from flows.evaluate_ensemble import evaluate_ensemble


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--reports", required=True, help="output folder: predictions, confusion matrix, plots")
    ap.add_argument("--metrics", required=True, help="output: DVC metrics file")
    ap.add_argument("--tracking-state", required=True)
    args = ap.parse_args(argv)
    evaluate_ensemble(
        params_path=args.params, prepared=args.prepared, shards=args.shards, models=args.models,
        reports=args.reports, metrics_path=args.metrics, tracking_state=args.tracking_state,
    )


if __name__ == "__main__":
    main()
