"""`python -m alexnet.compare`: a table of runs read from MLflow.

`--help` shows alexnet/tracking/compare.py's account.

    python -m alexnet.compare                            # params.yaml's store and experiment
    python -m alexnet.compare --experiment a --experiment b --last 3 --metric val_top1_err
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from alexnet.config.params import load_params
from alexnet.core.cli import exit_code
from alexnet.core.tables import format_table
from alexnet.tracking.compare import __doc__ as compare_doc
from alexnet.tracking.compare import compare_table
from alexnet.tracking.credentials import take_credentials
from alexnet.tracking.lifecycle import experiment_name
from alexnet.tracking.store import check_tracking, resolve_tracking_uri


def main(argv: Sequence[str] | None = None) -> int:
    return exit_code("compare", lambda: _compare(argv))


def _compare(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.compare", description=compare_doc.splitlines()[0])
    ap.add_argument("--params", default="params.yaml",
                    help="params file giving the default store and experiment (tracking section)")
    ap.add_argument("--uri", help="tracking URI (default: tracking.uri, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    ap.add_argument("--experiment", action="append", help="experiment name; repeat to compare several")
    ap.add_argument("--last", type=int, help="only the N newest ensembles of each experiment")
    ap.add_argument("--metric", action="append", default=[], help="extra metric column, e.g. val_top1_err")
    args = ap.parse_args(argv)

    param_uri, experiment, wanted, given = None, "alexnet.synthetic", args.experiment or [], None
    params_path = Path(args.params)
    if params_path.is_file():
        params = load_params(params_path)
        param_uri, experiment = params.tracking.uri, experiment_name(params.tracking, params.data)
        given = params.tracking.experiment
    uri = take_credentials(args.uri) if args.uri else resolve_tracking_uri(param_uri, params_path.resolve().parent)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no tracking database at {uri}: nothing has been logged there yet")
    check_tracking(uri)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    # tracking.experiment as written, where no experiment has that name: its runs on the params' dataset
    wanted = [experiment if name == given and client.get_experiment_by_name(name) is None else name
              for name in wanted]
    table = compare_table(client, wanted or [experiment], args.last, args.metric)
    if table.empty:
        print(f"no runs in {', '.join(wanted or [experiment])} at {uri}")
        return 0
    print(format_table(table, left=("experiment", "run")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
