"""The pipeline's steps as Prefect tasks: what a flow hands a sequence of alexnet/pipeline/ or alexnet/study/.

A step over many inputs (the members, the study's runs) becomes one task run per input, submitted
in waves of `at_once` to the flow's task runner (threads, processes or Ray), with the retries the
flow gives that step; a single step runs as a task in the flow's own thread. Tasks pass file paths
and small dicts, never tensors, and cache nothing: DVC decides what is up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.waves import run_in_waves

T = TypeVar("T")


class PrefectSteps:
    """`Steps` for a flow: `options` gives a step's task options by name (retries, task_run_name, ...)."""

    def __init__(self, options: Mapping[str, Mapping[str, Any]] | None = None):
        self.options = dict(options or {})

    def _task(self, name: str, fn: Callable[..., T]):
        return task(fn, name=name, cache_policy=NO_CACHE, **self.options.get(name, {}))

    def one(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        return self._task(name, fn)(*args)

    def each(self, name: str, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], at_once: int) -> list[T]:
        return run_in_waves(self._task(name, fn), calls, at_once)
