"""`python -m alexnet.compare`: a table of runs read from MLflow.

One row per ensemble (the parent run) followed by its members (nested runs, indented), so the
members can be read against their average, the centre crop against the ten patches (§4.1), and
one experiment against another. Columns: top-1/top-5 error per view, any extra metric asked for,
then only the params whose values differ between the rows shown.

    python -m alexnet.compare                            # params.yaml's store and experiment
    python -m alexnet.compare --experiment a --experiment b --last 3 --metric val_top1_err
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alexnet.config import ModelParams, ParamsError, load_params
from alexnet.layout import VIEWS
from alexnet.tracking import PARENT_TAG, TrackingUnavailable, check_tracking, resolve_tracking_uri

ERRORS = ("top1_err", "top5_err")


def error_columns() -> list[str]:
    return [f"{view}.{err}" for view in VIEWS for err in ERRORS]


def fetch_runs(client, experiment_id: str) -> list:
    """Every active run of an experiment, newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, order_by=["attributes.start_time DESC"],
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def compare_table(client, experiments: Sequence[str], last: int | None = None,
                  metrics: Sequence[str] = ()) -> pd.DataFrame:
    """Rows: each experiment's `last` newest ensembles (parent runs), each followed by its members.

    A member's errors are its own run's (e.g. "center.top1_err") or, if it has none, the parent's
    "members.<member>.<view>.<err>" from the ensemble's metrics.json.
    """
    rows: list[dict[str, Any]] = []
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise KeyError(f"no experiment {name!r} in this tracking store (experiments: {known})")
        runs = fetch_runs(client, experiment.experiment_id)
        parents = [r for r in runs if PARENT_TAG not in r.data.tags]
        children: dict[str, list] = {}
        for r in runs:
            if PARENT_TAG in r.data.tags:
                children.setdefault(r.data.tags[PARENT_TAG], []).append(r)
        for parent in parents[:last] if last else parents:
            rows.append(_row(name, parent, None, metrics))
            for child in sorted(children.get(parent.info.run_id, []), key=_member_name):
                rows.append(_row(name, child, parent, metrics))
    table = pd.DataFrame(rows, columns=["experiment", "run", "role", "run_id", "status",
                                        *error_columns(), *metrics])
    params = pd.DataFrame([r.pop("_params") for r in rows] if rows else [], index=table.index)
    differing = [c for c in sorted(params.columns) if params[c].fillna("<unset>").nunique() > 1]
    return pd.concat([table, params[differing]], axis=1)


def _member_name(run) -> str:
    return run.data.tags.get("member", run.info.run_name or "")


def _row(experiment: str, run, parent, metrics: Sequence[str]) -> dict[str, Any]:
    own = run.data.metrics
    row: dict[str, Any] = {
        "experiment": experiment,
        "run": run.info.run_name if parent is None else f"  {run.info.run_name}",
        "role": run.data.tags.get("role", "ensemble" if parent is None else "member"),
        "run_id": run.info.run_id[:8],
        "status": run.info.status,
    }
    for column in error_columns():
        value = own.get(column)
        if value is None and parent is not None:
            value = parent.data.metrics.get(f"members.{_member_name(run)}.{column}")
        row[column] = value
    for key in metrics:
        row[key] = own.get(key)  # the last logged value
    # A member inherits its ensemble's params; its own (seed, index) come on top.
    params = {**(parent.data.params if parent is not None else {}), **run.data.params}
    # model.norm null means "as model.lrn says": shown as the model resolves it, so the paper's LRN
    # does not read "None" beside norm: none's "none".
    if params.get("model.norm") == "None" and params.get("model.lrn") in ("True", "False"):
        params["model.norm"] = ModelParams(lrn=params["model.lrn"] == "True").normalisation
    row["_params"] = params
    return row


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml",
                    help="params file giving the default store and experiment (tracking section)")
    ap.add_argument("--uri", help="tracking URI (default: tracking.uri, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    ap.add_argument("--experiment", action="append", help="experiment name; repeat to compare several")
    ap.add_argument("--last", type=int, help="only the N newest ensembles of each experiment")
    ap.add_argument("--metric", action="append", default=[], help="extra metric column, e.g. val_top1_err")
    args = ap.parse_args(argv)

    param_uri, experiment = None, "alexnet"
    params_path = Path(args.params)
    if params_path.is_file():
        try:
            tracking = load_params(params_path).tracking
        except ParamsError as err:
            print(err, file=sys.stderr)
            return 2
        param_uri, experiment = tracking.uri, tracking.experiment
    uri = args.uri or resolve_tracking_uri(param_uri, params_path.resolve().parent)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"no tracking database at {uri}: nothing has been logged there yet", file=sys.stderr)
        return 2
    try:
        check_tracking(uri)
    except TrackingUnavailable as err:
        print(err, file=sys.stderr)
        return 2

    from mlflow import MlflowClient

    try:
        table = compare_table(MlflowClient(uri), args.experiment or [experiment], args.last, args.metric)
    except KeyError as err:
        print(err.args[0], file=sys.stderr)
        return 2
    if table.empty:
        print(f"no runs in {', '.join(args.experiment or [experiment])} at {uri}")
        return 0
    print(format_table(table))
    return 0


def format_table(table: pd.DataFrame) -> str:
    """The table as text; names left-aligned so members stay indented under their ensemble."""
    shown = table.copy()
    for column in ("experiment", "run"):
        width = max(len(column), int(shown[column].astype(str).map(len).max()))
        shown[column] = shown[column].map(lambda value, w=width: f"{value:<{w}}")
        shown = shown.rename(columns={column: column.ljust(width)})
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")


if __name__ == "__main__":
    sys.exit(main())
