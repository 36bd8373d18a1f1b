"""A fault for the cluster tests, armed by the environment of one host: a process there stalls at a
known point of its work, says so in a file, and waits to be killed from outside (its host going
down, or the test killing it). Python imports this module at start-up when its folder is on
PYTHONPATH; without ALEXNET_CLUSTER_FAULT it does nothing.

    ALEXNET_CLUSTER_FAULT=forward:N:FOLDER  the Nth training forward pass of the network (a batch
        after epoch 1's checkpoint when N = steps per epoch + 2), once per FOLDER: the first
        process to get there stalls, torchrun's restart and a Ray retry go through
    ALEXNET_CLUSTER_FAULT=shard:FOLDER      the first shard a Dask worker is given to build

The file is FOLDER/stalled-<pid>: the test reads the pid from its name, or waits for it and
takes the whole host down.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path


def _stall(folder: str, what: str) -> None:
    Path(folder, f"stalled-{os.getpid()}").write_text(what + "\n")
    print(f"fault: stalled in {what}, pid {os.getpid()}", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `patch(module)` right after `name` is imported (the module is not imported any earlier)."""

    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run, patch = spec.loader.exec_module, self.patch

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _first(folder: str) -> bool:
    """Is this the first process to get here (FOLDER/fired created now)? The fault fires once a test,
    whatever restarts come before it: a rank restarted early under load must still meet it."""
    try:
        Path(folder, "fired").open("x").close()
    except FileExistsError:
        return False
    return True


def _on_forward(count: int, folder: str):
    def patch(network):
        import torch

        seen = [0]

        def hook(module, args, output):
            if isinstance(module, network.AlexNet) and module.training:
                seen[0] += 1
                if seen[0] == count and _first(folder):
                    _stall(folder, f"training forward {count}")

        torch.nn.modules.module.register_module_forward_hook(hook)
    return patch


def _on_shard(folder: str):
    def patch(preprocess):
        def build_shard(task):
            _stall(folder, f"shard {task.name}")
        preprocess.build_shard = build_shard
    return patch


def _arm(spec: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind == "forward":
        count, _, folder = rest.partition(":")
        sys.meta_path.insert(0, _AfterImport("alexnet.model.network", _on_forward(int(count), folder)))
    elif kind == "shard":
        sys.meta_path.insert(0, _AfterImport("alexnet.data.preprocess", _on_shard(rest)))


if os.environ.get("ALEXNET_CLUSTER_FAULT"):
    _arm(os.environ["ALEXNET_CLUSTER_FAULT"])
