"""`python -m alexnet.servers`: a team's MLflow and Prefect on one PostgreSQL (alexnet/team/servers.py).

    python -m alexnet.servers start --db postgresql://alexnet:PASSWORD@127.0.0.1:5432
    python -m alexnet.servers status
    python -m alexnet.servers stop
"""

from __future__ import annotations

import argparse
import sys

from alexnet.core.cli import exit_code
from alexnet.team.servers import DEFAULT_STATE, ENV_DB, start, status, stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.servers", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("start", "stop", "status"))
    ap.add_argument("--state", default=DEFAULT_STATE, help=f"logs, pid files, state.json (default {DEFAULT_STATE})")
    ap.add_argument("--db", help=f"postgresql://USER:PASSWORD@HOST:PORT (default ${ENV_DB})")
    ap.add_argument("--mlflow-db", default="mlflow", help="MLflow's database (created if missing)")
    ap.add_argument("--prefect-db", default="prefect", help="Prefect's database (created if missing)")
    ap.add_argument("--host", default="127.0.0.1", help="interface both servers bind (default 127.0.0.1)")
    ap.add_argument("--mlflow-port", type=int, default=5000)
    ap.add_argument("--prefect-port", type=int, default=4200)
    ap.add_argument("--mlflow-workers", type=int, help="MLflow's worker processes (default: MLflow's)")
    ap.add_argument("--artifacts", help="MLflow's --artifacts-destination (default <state>/mlartifacts)")
    ap.add_argument("--auth-config", help="start MLflow's basic-auth app with this ini file")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for both to be healthy")
    args = ap.parse_args(argv)
    return exit_code("servers", lambda: {"start": start, "stop": stop, "status": status}[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
