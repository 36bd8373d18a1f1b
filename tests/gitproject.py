"""A git + DVC project in a test folder, as a user makes one: for the tests that run `dvc exp`."""

from __future__ import annotations

import subprocess
from pathlib import Path


def sh(cwd: Path, *cmd: str, env: dict) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd`; the test fails on a non-zero exit, showing the ends of its output."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def commit_project(project: Path, env: dict) -> None:
    """git init + dvc init (no analytics) in `project`, and everything in it committed."""
    sh(project, "git", "init", "-q", env=env)
    sh(project, "dvc", "init", "-q", env=env)
    sh(project, "dvc", "config", "core.analytics", "false", env=env)
    sh(project, "git", "add", "-A", env=env)
    sh(project, "git", "commit", "-qm", "project", env=env)
