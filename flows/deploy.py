"""Serve the flows as deployments with cron schedules: `python -m flows.deploy`.

`flow.serve`/`prefect.serve` is what a Prefect 3 user reaches for on one machine: a long-running
process that registers the deployments (schedules included) with the server and runs their flow
runs itself, with no work pool or worker to set up. A `prefect.yaml` with a process work pool
suits teams that run workers on other machines; it can be added without changing the flows.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import pipeline

NIGHTLY_CRON = "0 2 * * *"  # 02:00 every night, the server's time zone unless --timezone


def deployments(project: str, cron: str = NIGHTLY_CRON, timezone: str | None = None) -> list[RunnerDeployment]:
    """The deployments this project serves: the whole DVC pipeline on a cron schedule."""
    return [
        pipeline.to_deployment(
            name="nightly",
            schedules=[Cron(cron, timezone=timezone)],
            parameters={"project": project},
            description="dvc repro of every stage; DVC skips what is up to date",
            tags=["alexnet"],
        )
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project", default=".", help="the project checkout the runs work in")
    ap.add_argument("--cron", default=NIGHTLY_CRON)
    ap.add_argument("--timezone", default=None, help="IANA name, e.g. Europe/Berlin")
    args = ap.parse_args(argv)
    serve(*deployments(args.project, args.cron, args.timezone))


if __name__ == "__main__":
    main()
