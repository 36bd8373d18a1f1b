"""Where a result came from: git commit, a stable hash of any settings, the data version DVC recorded.

The code behind a result is alexnet/core/closure.py's.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from alexnet.core.layout import DVC_LOCK_FILE


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, with '-dirty' when tracked files differ; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def fingerprint(obj: Any) -> str:
    """Short, stable hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dvc_lock_version(stage: str, lock_path: str | Path = DVC_LOCK_FILE) -> str | None:
    """The md5 DVC recorded for `stage`'s first output in dvc.lock (the versioned data), if any."""
    import yaml

    path = Path(lock_path)
    if not path.is_file():
        return None
    lock = yaml.safe_load(path.read_text()) or {}
    outs = lock.get("stages", {}).get(stage, {}).get("outs", [])
    return outs[0].get("md5") if outs else None
