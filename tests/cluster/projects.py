"""What the cluster tests share besides the hosts: the fault folder and waiting for a file."""

from __future__ import annotations

import time
from pathlib import Path

FAULTS = Path(__file__).resolve().parent / "faults"  # on PYTHONPATH: its sitecustomize arms ALEXNET_CLUSTER_FAULT


def wait_for_file(folder: Path, pattern: str, timeout: float) -> Path | None:
    """The first file matching `pattern` in `folder` within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.2)
    return None


HEALTH_PROBE = """
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as answer:
            if answer.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"{sys.argv[1]} did not answer within {sys.argv[2]} s")
    time.sleep(0.5)
"""


def wait_healthy(host, url: str, timeout: float = 240) -> None:
    """Wait until `url` answers 200 when asked from `host` (a server's health endpoint)."""
    host.run(["python", "-c", HEALTH_PROBE, url, str(timeout)], timeout=timeout + 30)
