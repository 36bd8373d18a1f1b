"""preprocess.engine=dask: the shards are built as tasks on a Dask cluster.

One task builds one shard (preprocess.build_shard of one ShardTask): it writes the shard's
files and ledger into the output folder and returns the ledger record. The workers must see
the data and the output folder at the driver's paths (one machine, or a shared filesystem).
The driver gathers the records in plan order, and preprocess merges the exact statistics and
writes the manifest from them, as with the local engine: the same bytes come out.

A task that raises is retried (Dask's `retries`); a task whose worker dies is rescheduled on
another by the scheduler. A shard finished before a failure keeps its ledger, so a rerun keeps
it. preprocess.dask_address null: a local cluster of preprocess.workers single-threaded worker
processes, bound to 127.0.0.1, without dashboards, closed at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

RETRIES = 2  # a task that raises runs up to twice more before the stage fails
CONNECT_TIMEOUT_S = 5  # an address with no scheduler fails within this, not after minutes


def connect(address: str | None, workers: int) -> tuple[Any, Any]:
    """(client, the local cluster it owns or None) for `address`, or a local cluster when None."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("preprocess.engine=dask needs dask[distributed]: pip install -e '.[cluster]'") from None
    if address is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, worker_dashboard_address=None, silence_logs=logging.ERROR)
        return Client(cluster), cluster
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S), None
    except (OSError, TimeoutError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"preprocess.dask_address={address!r}: no Dask scheduler answers there ({reason})") from None


def run_on_dask(build: Callable[[Any], dict[str, Any]], tasks: Sequence[Any], address: str | None, workers: int,
                progress: bool) -> list[dict[str, Any]]:
    """build(task) for every task on the cluster; the results in task order."""
    from distributed import as_completed

    client, cluster = connect(address, workers)
    log.info("dask: %s, %d shard task(s)", cluster or address, len(tasks))
    try:
        # Keys name the shard and what it is built from: a rerun with other settings never
        # reuses a result the scheduler still holds. Bigger shards first (priority), as locally.
        futures = [client.submit(build, task, key=f"shard-{task.name}-{task.spec[:16]}", retries=RETRIES,
                                 pure=False, priority=len(task.paths)) for task in tasks]
        size = {future.key: len(task.paths) for future, task in zip(futures, tasks, strict=True)}
        # disable=None: a bar on a terminal only, no carriage-return redraws in a log file
        with tqdm(total=sum(size.values()), desc="preprocess (dask)", unit="img",
                  disable=None if progress else True) as bar:
            for future in as_completed(futures):
                future.result()  # re-raises a task's error (after its retries) here
                bar.update(size[future.key])
        return [future.result() for future in futures]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
