"""Prefect flows over the alexnet library: they orchestrate, the library computes."""

import os

# Without PREFECT_API_URL a flow starts Prefect's temporary local server; its default 20 s start-up
# budget is too short on a busy 2-core machine (seen timing out there). Set before prefect loads.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The temporary server tries to send usage telemetry, which fails (and logs an error) offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The library logs through `logging`; let Prefect show those lines in the run logs and the UI.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "alexnet")

import logging  # noqa: E402

# INFO from the library (epoch summaries, resumes) belongs in flow run logs; root stays at WARNING.
logging.getLogger("alexnet").setLevel(logging.INFO)


def retry_unless_hopeless(task, task_run, state) -> bool:
    """A task's retry_condition_fn: no retry for what a retry cannot fix (a full disk), nor once the
    stage has been told to stop (a signal, its parent gone: alexnet/core/signals.py)."""
    from alexnet.core.atomic import disk_full_cause
    from alexnet.core.cli import Interrupted
    from alexnet.core.signals import stop_requested

    err = getattr(state, "data", None)  # the exception, for a task run that raised
    if stop_requested() or isinstance(err, Interrupted):
        return False
    return not (isinstance(err, BaseException) and disk_full_cause(err) is not None)
