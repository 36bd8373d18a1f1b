"""The checkout a scheduled pipeline runs in: brought to the team's code before a run, its results published after.

A nightly run must start from the code the team pushed, and end with something a teammate can
fetch. Its checkout tracks a branch of a git remote (main, say); the run
1. fast-forwards it to that branch (`update_checkout`), keeping the files the pipeline itself
   writes as the last run left them: dvc.lock and the outputs git tracks (`cache: false`), which
   describe the outputs in the workspace. Any other local change stops the run, naming the files;
2. runs the stages (flows/pipeline.py);
3. `dvc push`es the outputs to the DVC remote, then commits dvc.lock, the metrics and the other
   git-tracked outputs on a results branch (`nightly`) and pushes it (`publish_results`). The
   outputs go first: a published dvc.lock then names only data the remote has.

The results commit is made with git's plumbing on a temporary index, so the checkout's own branch,
index and files stay as they are. Its parents are the previous results commit and the code commit
the run started from: the push is a fast-forward, never forced, so a publisher that raced another
(a second machine, a run started by hand) is refused by the remote instead of overwriting it, and
publishes again on top. On one machine, `run_lock` keeps a second run out of the checkout altogether.

    python -m flows.checkout update --project .   # step 1 alone: prefect.yaml's pull step
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from alexnet.core.cli import InputError
from alexnet.core.locks import exclusive

LOCK_DIR = Path(".dvc") / "tmp" / "pipeline-run"  # DVC keeps .dvc/tmp out of git
PUBLISH_TRIES = 3  # a results branch that moved meanwhile is fetched again and published on top
DEFAULT_IDENTITY = {"GIT_AUTHOR_NAME": "alexnet pipeline", "GIT_AUTHOR_EMAIL": "pipeline@localhost",
                    "GIT_COMMITTER_NAME": "alexnet pipeline", "GIT_COMMITTER_EMAIL": "pipeline@localhost"}


class CheckoutError(InputError):
    """The checkout cannot be updated or its results published; the message says why and what to do."""


@contextlib.contextmanager
def run_lock(project: Path) -> Iterator[None]:
    """One pipeline run per checkout: a second one (another deployment, a run by hand) stops in one line."""
    with exclusive(Path(project) / LOCK_DIR, "pipeline run", wait_s=0.0):
        yield


def git(project: Path, *args: str, env: dict[str, str] | None = None, strip: bool = True) -> str:
    """`git args` in the project (an argument list, never a shell string): its stdout, or CheckoutError."""
    proc = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise CheckoutError(f"{project}: git {' '.join(args[:2])} failed: {said[-1] if said else proc.returncode}")
    return proc.stdout.strip() if strip else proc.stdout


def dvc(project: Path, *args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise CheckoutError(f"{project}: dvc {' '.join(args)} failed: {said[-1] if said else proc.returncode}")
    return proc.stdout


def pipeline_files(project: Path) -> list[str]:
    """What the pipeline writes that git tracks: dvc.lock and every `cache: false` output, metric and plot."""
    stages = (yaml.safe_load((Path(project) / "dvc.yaml").read_text()) or {}).get("stages", {})
    found = ["dvc.lock"]
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                if isinstance(entry, dict):
                    found += [path for path, opts in entry.items() if (opts or {}).get("cache", True) is False]
    return found


def _is_under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _changed(project: Path) -> tuple[list[str], list[str]]:
    """(tracked files changed in the index or the workspace, untracked files git does not ignore)."""
    entries = git(project, "status", "--porcelain=v1", "-z", "--untracked-files=all", strip=False).split("\0")
    tracked, untracked, i = [], [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if code == "??":
            untracked.append(path)
            continue
        tracked.append(path)
        if "R" in code or "C" in code:  # a rename's source follows as its own entry
            tracked.append(entries[i])
            i += 1
    return tracked, untracked


def update_checkout(project: Path, remote: str = "origin") -> str:
    """Fast-forward the checkout to its upstream branch at `remote`; the pipeline's files stay as the last
    run left them. The commit the checkout is at afterwards, or CheckoutError (one line)."""
    project = Path(project)
    try:
        upstream = git(project, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}")
    except CheckoutError:
        raise CheckoutError(f"{project}: the checked-out branch tracks no remote branch; set one with "
                            f"`git branch --set-upstream-to {remote}/main`") from None
    git(project, "fetch", "--quiet", remote)
    ours = pipeline_files(project)
    tracked, untracked = _changed(project)
    foreign = [p for p in tracked if not _is_under(p, ours)]
    if foreign:
        raise CheckoutError(f"{project}: local changes to {', '.join(sorted(foreign)[:5])}: this checkout takes its "
                            f"code from {upstream} only; commit them elsewhere or `git restore` them")
    kept = {p: (project / p).read_bytes() if (project / p).is_file() else None
            for p in tracked + [p for p in untracked if _is_under(p, ours)]}
    # Out of git's way for the fast-forward (which may change them too), then back as the run left them.
    if tracked:
        git(project, "restore", "--source=HEAD", "--staged", "--worktree", "--", *tracked)
    for path in set(untracked) & set(kept):
        (project / path).unlink()
    try:
        git(project, "merge", "--ff-only", "--quiet", upstream)
    finally:
        for path, content in kept.items():
            target = project / path
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
    return git(project, "rev-parse", "HEAD")


def _identity(project: Path) -> dict[str, str]:
    """The checkout's git identity where it has one, else a default, so that an unattended commit works."""
    try:
        git(project, "config", "user.email")
        return {}
    except CheckoutError:
        return dict(DEFAULT_IDENTITY)


def _results_tree(project: Path) -> str:
    """A tree: the commit the run started from, with the pipeline's files as the run left them."""
    index = Path(git(project, "rev-parse", "--absolute-git-dir")) / "alexnet-results-index"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        git(project, "read-tree", "HEAD", env=env)
        present = [p for p in pipeline_files(project) if (project / p).exists()]
        ignored = set(_ignored(project, present))
        paths = [p for p in present if p not in ignored]
        if paths:
            git(project, "add", "-A", "--", *paths, env=env)
        return git(project, "write-tree", env=env)
    finally:
        index.unlink(missing_ok=True)


def _ignored(project: Path, paths: list[str]) -> list[str]:
    if not paths:
        return []
    proc = subprocess.run(["git", "check-ignore", "--", *paths], cwd=project, capture_output=True, text=True)
    return proc.stdout.split() if proc.returncode == 0 else []


def _remote_tip(project: Path, remote: str, branch: str) -> str | None:
    listed = git(project, "ls-remote", "--heads", remote, f"refs/heads/{branch}")
    if not listed:
        return None
    tip = listed.split()[0]
    git(project, "fetch", "--quiet", remote, f"refs/heads/{branch}")  # its objects, to build on it
    return tip


def publish_results(project: Path, branch: str, message: str, remote: str = "origin") -> str | None:
    """`dvc push` the outputs, then commit the pipeline's files on `branch` at `remote` and push it there.
    The results commit, or None when the branch holds these results already."""
    project = Path(project)
    dvc(project, "push", "dvc.yaml")  # the data first: the lock published next must name only what the remote has
    tree, head = _results_tree(project), git(project, "rev-parse", "HEAD")
    for attempt in range(1, PUBLISH_TRIES + 1):
        previous = _remote_tip(project, remote, branch)
        if previous is not None and git(project, "rev-parse", f"{previous}^{{tree}}") == tree:
            return None
        parents = [p for p in (previous, head) if p is not None]
        commit = git(project, "commit-tree", tree, *(a for p in parents for a in ("-p", p)), "-m", message,
                     env=_identity(project))
        try:
            git(project, "push", "--quiet", remote, f"{commit}:refs/heads/{branch}")
            return commit
        except CheckoutError:
            if attempt == PUBLISH_TRIES:
                raise
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["update"])
    ap.add_argument("--project", default=".", help="the checkout (default: this folder)")
    ap.add_argument("--remote", default="origin")
    args = ap.parse_args(argv)
    try:
        with run_lock(Path(args.project)):
            print(update_checkout(Path(args.project), args.remote))
    except InputError as err:
        print(f"checkout: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
