"""The task runner a flow's members run on: this machine's threads or processes, or Ray (ensemble.runner).

With Ray the flow opens the Ray session itself, before any work, so an unreachable
`ensemble.ray_address` ends in one line naming it (in seconds, not after Ray's own retries), and
Ray is shut down when the flow ends however it ends. Prefect's RayTaskRunner then finds Ray up
and submits each member to it with the resources the member asks for (`member_options`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

# How long a Ray head may take to accept a TCP connection before the address counts as unreachable.
CONNECT_TIMEOUT_S = 5.0
# A local Ray's shared-memory object store: tasks pass paths and small dicts, never tensors.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2


class RayUnavailable(ValueError):
    """ensemble.ray_address cannot be reached, or Ray cannot start there (one line, naming the key)."""


def head_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of "ray://HOST:PORT" or "HOST:PORT"; None for "auto" (Ray finds a local head)."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnavailable(f"ensemble.ray_address: {address!r} is not ray://HOST:PORT, HOST:PORT or auto")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connection to the head, within `timeout`: what Ray's client would retry for a minute."""
    endpoint = head_endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise RayUnavailable(
            f"ensemble.ray_address: cannot reach {address} ({reason}); is the Ray head running there "
            "and its port open to this machine?") from None


def local_init_kwargs() -> dict[str, Any]:
    """ray.init's settings for a local Ray: every CPU of this machine, no dashboard, a small object store.

    Ray cannot be bound to loopback from ray.init: it turns 127.0.0.1 into the node's own address
    (ray._private.services.resolve_ip_for_localhost) and its servers listen on every interface.
    Its token authentication, on by default in the Ray this project pins, keeps others off them.
    """
    return {
        "num_cpus": os.cpu_count() or 1,
        "include_dashboard": False,
        "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
    }


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray started (None: a local one) or joined at ensemble.ray_address for the block, shut down after it."""
    import ray

    if address is not None:
        check_reachable(address)
    kwargs = local_init_kwargs() if address is None else {"include_dashboard": False}
    try:
        ray.init(address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as err:
        ray.shutdown()
        where = address or "a local Ray"
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise RayUnavailable(f"ensemble.ray_address: Ray did not start at {where}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()


def task_runner(runner: str, address: str | None, concurrency: int) -> TaskRunner:
    """ensemble.runner's task runner: this machine (`concurrency` members at once), or Prefect's Ray task runner.

    On this machine one member at a time runs in a thread of this process; several at once run
    in processes of their own (Prefect's process pool, spawned). torch's random generator, which
    seeds a member's initialisation and draws its dropout masks, is one per process: members in
    threads side by side would interleave their draws and lose their solo weights.
    """
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=1) if concurrency == 1 else ProcessPoolTaskRunner(concurrency)
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=address, init_kwargs=local_init_kwargs() if address is None else {})


def member_options(resources: dict[str, float]) -> contextlib.AbstractContextManager[Any]:
    """The context members are submitted in on Ray: each task's resource request (GPUs, CPUs)."""
    from prefect_ray.context import remote_options

    return remote_options(**resources)
