"""A table of runs read from MLflow (`python -m alexnet.compare` prints it).

One row per ensemble (the parent run) followed by its members (nested runs, indented), so the
members can be read against their average, the centre crop against the ten patches (§4.1), and
one experiment against another. Columns: top-1/top-5 error per view, any extra metric asked for,
then only the params whose values differ between the rows shown.

    python -m alexnet.compare                            # params.yaml's store and experiment
    python -m alexnet.compare --experiment a --experiment b --last 3 --metric val_top1_err
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from alexnet.core.layout import VIEWS
from alexnet.tracking.owners import PARENT_TAG

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
            raise ValueError(f"no experiment {name!r} in this tracking store (experiments: {known})")
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
    # Runs logged while model.lrn existed have model.norm null, meaning "as model.lrn says" (lrn or
    # none): shown as the network was built, so the paper's LRN does not read "None" beside "none".
    if params.get("model.norm") == "None" and params.get("model.lrn") in ("True", "False"):
        params["model.norm"] = "lrn" if params["model.lrn"] == "True" else "none"
    row["_params"] = params
    return row
