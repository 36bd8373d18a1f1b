"""Serve the flows as deployments with cron schedules: `python -m flows.deploy`.

`flow.serve`/`prefect.serve` is what a Prefect 3 user reaches for on one machine: a long-running
process that registers the deployments (schedules included) with the server and runs their flow
runs itself, with no work pool or worker to set up. A `prefect.yaml` with a process work pool
suits teams that run workers on other machines; it can be added without changing the flows.

The nightly deployment runs one flow run at a time (a deployment concurrency limit of 1). A run
that comes while one is going (a slow night, a run started by hand) is queued, not dropped: Prefect
puts it in the state AwaitingConcurrencySlot and starts it when the first ends; it then finds DVC up
to date except for what changed meanwhile. With `--publish-to BRANCH` (a team's nightly) each run
first fast-forwards its checkout to the team's code and last publishes its results: the outputs to
the DVC remote, dvc.lock and metrics to BRANCH (flows/checkout.py; docs/team.md says where a
teammate finds them). Without it the runs use the checkout as it is and need no git or DVC remote.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import pipeline

NIGHTLY_CRON = "0 2 * * *"  # 02:00 every night, the server's time zone unless --timezone
RESULTS_BRANCH = "nightly"  # where a team's nightly publishes its dvc.lock and metrics (prefect.yaml too)
# One run at a time; one that would overlap waits for the slot (Prefect's AwaitingConcurrencySlot).
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def nightly_parameters(project: str, publish_to: str | None = None) -> dict[str, object]:
    """The flow's parameters for a scheduled run; publishing to a branch also updates the checkout first."""
    if publish_to is None:
        return {"project": project}
    return {"project": project, "update": True, "publish_to": publish_to}


def deployments(project: str, cron: str = NIGHTLY_CRON, timezone: str | None = None,
                publish_to: str | None = None) -> list[RunnerDeployment]:
    """The deployments this project serves: the whole DVC pipeline on a cron schedule, one run at a time."""
    shared = f"git pull first, then dvc push and dvc.lock + metrics to the {publish_to} branch; " if publish_to else ""
    return [
        pipeline.to_deployment(
            name="nightly",
            schedules=[Cron(cron, timezone=timezone)],
            parameters=nightly_parameters(project, publish_to),
            concurrency_limit=ONE_AT_A_TIME,
            description=f"dvc repro of every stage (DVC skips what is up to date); {shared}one run at a time, "
                        "later ones queued",
            tags=["alexnet"],
        )
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project", default=".", help="the project checkout the runs work in")
    ap.add_argument("--cron", default=NIGHTLY_CRON)
    ap.add_argument("--timezone", default=None, help="IANA name, e.g. Europe/Berlin")
    ap.add_argument("--publish-to", default=None, metavar="BRANCH",
                    help=f"a team's nightly: pull the checkout's upstream before each run, then push the outputs to "
                         f"the DVC remote and dvc.lock + metrics to this branch (docs/team.md uses {RESULTS_BRANCH!r})")
    args = ap.parse_args(argv)
    serve(*deployments(args.project, args.cron, args.timezone, args.publish_to))


if __name__ == "__main__":
    main()
