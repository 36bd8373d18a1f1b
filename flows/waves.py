"""Run a task over many inputs, `concurrency` at a time, through the flow's task runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import Task


def run_in_waves(task: Task, calls: Sequence[tuple[Any, ...]], concurrency: int) -> list[Any]:
    """Submit `task(*args)` for each args tuple, at most `concurrency` running at once, in order.

    Waves (rather than a pool) keep the order of results and the memory ceiling predictable:
    on a CPU box two trainings side by side each get half the cores.
    """
    results: list[Any] = []
    for start in range(0, len(calls), concurrency):
        futures = [task.submit(*args) for args in calls[start : start + concurrency]]
        results.extend(f.result() for f in futures)
    return results
