"""How a pipeline sequence runs its steps: the sequence says what and in which order, a `Steps` says how.

The sequences (alexnet/pipeline/train.py, evaluate.py, alexnet/study/runs.py) call `steps.one` for a
single step and `steps.each` for a step over many inputs (the members, the study's runs). `InOrder`
runs them here, one after another; the Prefect flows pass steps that run each as a task, with
retries, on the flow's task runner (flows/steps.py). Either way the order and the failure policy
are the sequence's own, written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Steps(Protocol):
    def one(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` as the step `name`; its result."""
        ...

    def each(self, name: str, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], at_once: int) -> list[T]:
        """Run `fn(*args)` for every args tuple, at most `at_once` side by side; the results in order."""
        ...


class InOrder:
    """Every step here, now, in order: what a sequence needs without an orchestrator."""

    def one(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def each(self, name: str, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], at_once: int) -> list[T]:
        return [fn(*args) for args in calls]
