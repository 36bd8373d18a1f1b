"""The nightly run a teammate can pick up: a local bare git remote, a local DVC remote (a folder), the
project's deployment served by `python -m flows.deploy` against a real Prefect server.

The scheduled run fast-forwards its checkout to the team's code, runs every stage, pushes the
outputs to the DVC remote and dvc.lock + metrics to the branch `nightly`; a fresh clone of that
branch pulls and finds everything up to date. A second run triggered meanwhile waits for the first
(Prefect's AwaitingConcurrencySlot), and a run by hand in the same checkout is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.tiny import tiny_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 1500.0  # two scheduled runs of the tiny pipeline on a busy 2-core machine


@pytest.fixture
def own_tmp():
    """A folder of this test's own: another pytest session may prune pytest-of-<user> meanwhile."""
    with tempfile.TemporaryDirectory(prefix="alexnet-nightly-") as tmp:
        yield Path(tmp)


@pytest.fixture
def env(monkeypatch) -> dict[str, str]:
    """The environment of every command here, and of the processes Prefect starts: this venv, this code."""
    for key, value in {"PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
                       "GIT_COMMITTER_EMAIL": "t@localhost"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return dict(os.environ)


def sh(cwd: Path, *cmd: str, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def team(root: Path, files: dict[str, str], env: dict) -> tuple[Path, Path]:
    """A bare git remote holding a DVC project (`files`, its DVC remote a folder): (seed checkout, bare remote)."""
    seed, bare = root / "seed", root / "remote.git"
    sh(root, "git", "init", "-q", "--bare", "-b", "main", str(bare), env=env)
    seed.mkdir()
    for name, text in files.items():
        (seed / name).parent.mkdir(parents=True, exist_ok=True)
        (seed / name).write_text(text)
    sh(seed, "git", "init", "-q", "-b", "main", env=env)
    sh(seed, "dvc", "init", "-q", env=env)
    sh(seed, "dvc", "config", "core.analytics", "false", env=env)
    sh(seed, "dvc", "remote", "add", "-d", "team", str(root / "dvc-remote"), env=env)
    sh(seed, "git", "add", "-A", env=env)
    sh(seed, "git", "commit", "-qm", "project", env=env)
    sh(seed, "git", "remote", "add", "origin", str(bare), env=env)
    sh(seed, "git", "push", "-q", "-u", "origin", "main", env=env)
    return seed, bare


def push_change(seed: Path, name: str, text: str, env: dict) -> str:
    """A teammate's commit on main, pushed: its id."""
    (seed / name).write_text(text)
    sh(seed, "git", "add", name, env=env)
    sh(seed, "git", "commit", "-qm", f"change {name}", env=env)
    sh(seed, "git", "push", "-q", "origin", "main", env=env)
    return sh(seed, "git", "rev-parse", "HEAD", env=env).stdout.strip()


COUNT_SCRIPT = ("import json, yaml; n = yaml.safe_load(open('params.yaml'))['n']; open('out.txt', 'w').write('x' * n); "
                "json.dump({'n': n}, open('metrics.json', 'w'))")


def counting_project() -> dict[str, str]:
    """A one-stage DVC project: a cached output and a metrics file git tracks, from one param."""
    stage = {"cmd": f"{sys.executable} -c \"{COUNT_SCRIPT}\"", "params": ["n"], "outs": ["out.txt"],
             "metrics": [{"metrics.json": {"cache": False}}]}
    return {"params.yaml": "n: 1\n", "dvc.yaml": yaml.safe_dump({"stages": {"count": stage}}),
            ".gitignore": "/out.txt\n"}


def test_update_fast_forwards_keeps_the_pipelines_files_and_refuses_local_edits(own_tmp, env):
    from flows.checkout import CheckoutError, update_checkout

    seed, bare = team(own_tmp, counting_project(), env)
    nightly = own_tmp / "nightly"
    sh(own_tmp, "git", "clone", "-q", str(bare), str(nightly), env=env)
    sh(nightly, "dvc", "repro", env=env)  # last night's run: dvc.lock and metrics.json new, uncommitted
    last_lock = (nightly / "dvc.lock").read_text()
    head = push_change(seed, "README", "the team's code moved on\n", env)

    assert update_checkout(nightly) == head
    assert (nightly / "README").read_text() == "the team's code moved on\n"
    assert (nightly / "dvc.lock").read_text() == last_lock  # still describes the outputs in the workspace
    assert "Data and pipelines are up to date." in sh(nightly, "dvc", "status", env=env).stdout

    (nightly / "params.yaml").write_text("n: 5\n")  # an edit by hand: not the pipeline's to keep
    with pytest.raises(CheckoutError, match=r"local changes to params\.yaml"):
        update_checkout(nightly)
    assert (nightly / "params.yaml").read_text() == "n: 5\n"


def test_publish_pushes_data_and_a_results_commit_per_new_result(own_tmp, env):
    from flows.checkout import publish_results

    seed, bare = team(own_tmp, counting_project(), env)
    nightly = own_tmp / "nightly"
    sh(own_tmp, "git", "clone", "-q", str(bare), str(nightly), env=env)
    sh(nightly, "dvc", "repro", env=env)
    first = publish_results(nightly, "nightly", "first run")
    assert publish_results(nightly, "nightly", "same results") is None  # nothing new: no commit
    code = push_change(seed, "params.yaml", "n: 3\n", env)
    sh(nightly, "git", "pull", "-q", "--ff-only", env=env)
    sh(nightly, "dvc", "repro", env=env)
    second = publish_results(nightly, "nightly", "second run")

    parents = sh(nightly, "git", "rev-list", "--parents", "-n", "1", second, env=env).stdout.split()[1:]
    assert parents == [first, code]  # the previous results, and the code this run started from
    assert sh(bare, "git", "rev-parse", "nightly", env=env).stdout.strip() == second
    assert sh(nightly, "git", "rev-parse", "main", env=env).stdout.strip() == code  # nothing committed on main

    teammate = own_tmp / "teammate"
    sh(own_tmp, "git", "clone", "-q", "-b", "nightly", str(bare), str(teammate), env=env)
    sh(teammate, "dvc", "pull", env=env)
    assert (teammate / "out.txt").read_text() == "xxx"
    assert json.loads((teammate / "metrics.json").read_text()) == {"n": 3}
    assert "Data and pipelines are up to date." in sh(teammate, "dvc", "status", env=env).stdout


def test_a_publisher_that_lost_a_race_publishes_on_top_of_the_winner(own_tmp, env):
    """The remote's branch moves between a run's look at it and its push (another machine published):
    the push is refused, never forced, and the run publishes again with the winner as a parent."""
    from flows.checkout import publish_results

    seed, bare = team(own_tmp, counting_project(), env)
    nightly = own_tmp / "nightly"
    sh(own_tmp, "git", "clone", "-q", str(bare), str(nightly), env=env)
    sh(nightly, "dvc", "repro", env=env)
    first = publish_results(nightly, "nightly", "first run")
    tree = sh(bare, "git", "rev-parse", f"{first}^{{tree}}", env=env).stdout.strip()
    winner = sh(bare, "git", "commit-tree", tree, "-p", first, "-m", "another machine's run", env=env).stdout.strip()
    code = push_change(seed, "params.yaml", "n: 2\n", env)
    sh(nightly, "git", "pull", "-q", "--ff-only", env=env)
    sh(nightly, "dvc", "repro", env=env)
    # Once: move the branch to the winner's commit (outside the push's quarantine), and refuse this push.
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\n[ -e {own_tmp}/raced ] && exit 0\ntouch {own_tmp}/raced\n"
                    f"env -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES "
                    f"git update-ref refs/heads/nightly {winner}\nexit 1\n")
    hook.chmod(0o755)

    second = publish_results(nightly, "nightly", "second run")
    assert (own_tmp / "raced").exists()
    assert sh(bare, "git", "rev-parse", "nightly", env=env).stdout.strip() == second
    assert sh(bare, "git", "rev-list", "--parents", "-n", "1", second, env=env).stdout.split()[1:] == [winner, code]


def test_both_deployments_update_publish_and_run_one_at_a_time():
    """flows.deploy's served deployment and prefect.yaml's work-pool one ask for the same."""
    from prefect.cli.deploy._models import PrefectYamlModel

    from flows.deploy import RESULTS_BRANCH, deployments, nightly_parameters

    served = deployments("/srv/alexnet", publish_to=RESULTS_BRANCH)[0]
    assert served.parameters == nightly_parameters("/srv/alexnet", RESULTS_BRANCH) == {
        "project": "/srv/alexnet", "update": True, "publish_to": "nightly"}
    assert served.concurrency_limit == 1 and served.concurrency_options.collision_strategy == "ENQUEUE"
    solo = deployments("/srv/alexnet")[0]  # one person's checkout: no remote needed, still one run at a time
    assert solo.parameters == {"project": "/srv/alexnet"} and solo.concurrency_limit == 1
    (pooled,) = PrefectYamlModel.model_validate(yaml.safe_load((REPO / "prefect.yaml").read_text())).deployments
    assert pooled.parameters == nightly_parameters(".", RESULTS_BRANCH)
    assert (pooled.concurrency_limit.limit, pooled.concurrency_limit.collision_strategy) == (1, "ENQUEUE")


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.mark.slow
def test_prefect_yaml_pull_steps_bring_the_workers_checkout_to_the_teams_code(own_tmp, env, prefect_api,
                                                                               monkeypatch):
    """prefect.yaml's pull steps, run by Prefect's own step runner as a worker runs them."""
    from prefect.deployments.steps.core import run_steps

    seed, bare = team(own_tmp, counting_project(), env)
    nightly = own_tmp / "nightly"
    sh(own_tmp, "git", "clone", "-q", str(bare), str(nightly), env=env)
    head = push_change(seed, "params.yaml", "n: 2\n", env)
    monkeypatch.setenv("ALEXNET_PROJECT", str(nightly))
    monkeypatch.chdir(own_tmp)  # set_working_directory moves the process; monkeypatch moves it back
    asyncio.run(run_steps(yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"]))
    assert sh(nightly, "git", "rev-parse", "HEAD", env=env).stdout.strip() == head


def pipeline_project() -> dict[str, str]:
    """The project's four stages on tiny params, their outputs git-ignored as in the project's own files."""
    common = ("--params params.yaml --prepared data/prepared --shards data/shards --models models "
              "--tracking-state models/tracking.json")
    plots = [{f"reports/eval/{name}": {"cache": False}} for name in ("per_class.csv", "confusion.png", "ensemble.png")]
    stages = {
        "prepare": {"cmd": "python -m stages.prepare --params params.yaml --out data/prepared", "params": ["data"],
                    "outs": ["data/prepared"]},
        "preprocess": {"cmd": "python -m stages.preprocess --params params.yaml --prepared data/prepared "
                              "--out data/shards", "deps": ["data/prepared"], "params": ["preprocess"],
                       "outs": ["data/shards"]},
        "train": {"cmd": f"python -m stages.train {common} --history reports/train --checkpoints checkpoints",
                  "deps": ["data/prepared/classes.csv", "data/shards"], "params": ["model", "train"],
                  "outs": ["models", {"reports/train": {"cache": False}}]},
        "evaluate": {"cmd": f"python -m stages.evaluate {common} --reports reports/eval --metrics reports/metrics.json",
                     "deps": ["models", "data/shards"], "params": ["evaluate"], "outs": ["reports/eval/predictions"],
                     "metrics": [{"reports/metrics.json": {"cache": False}}], "plots": plots},
    }
    return {"params.yaml": yaml.safe_dump(tiny_params(epochs=1)),
            "dvc.yaml": yaml.safe_dump({"stages": stages}, sort_keys=False),  # the flow runs them in this order
            ".gitignore": "/models\n/mlflow.db\n/mlartifacts/\n/checkpoints/\n",
            "data/.gitignore": "/prepared\n/shards\n", "reports/eval/.gitignore": "/predictions\n"}


def wait_for(what: str, check, timeout: float = RUN_TIMEOUT_S, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s\n{log.read_text()[-5000:] if log else ''}")
        time.sleep(2)
    return found


@pytest.mark.slow
def test_a_scheduled_run_publishes_what_a_fresh_clone_pulls_up_to_date(own_tmp, env, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    seed, bare = team(own_tmp, pipeline_project(), env)
    nightly = own_tmp / "nightly"
    sh(own_tmp, "git", "clone", "-q", str(bare), str(nightly), env=env)
    # Pushed after the checkout was made: the scheduled run must pull it first.
    code = push_change(seed, "params.yaml", yaml.safe_dump(tiny_params(epochs=1, lr=0.02)), env)

    log = own_tmp / "serve.log"
    with get_client(sync_client=True) as client, log.open("w") as out:
        runner = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--project", str(nightly), "--cron",
                                   "0 0 1 1 *", "--publish-to", "nightly"], cwd=REPO,
                                  env={**env, "PREFECT_API_URL": prefect_api}, stdout=out, stderr=subprocess.STDOUT)
        try:
            def deployed():
                try:
                    return client.read_deployment_by_name("pipeline/nightly")
                except ObjectNotFound:
                    return None

            wait_for("deployment", deployed, 300, log)
            first = run_deployment("pipeline/nightly", timeout=0)

            def training():  # the first run's train stage going (or the first run over, to fail below)
                return client.read_flow_run(first.id).state.is_final() or any(
                    t.name == "dvc repro train" for t in client.read_task_runs() if t.flow_run_id == first.id)

            wait_for("training under the first run", training, log=log)
            assert not client.read_flow_run(first.id).state.is_final(), log.read_text()[-5000:]
            # A run by hand in the same checkout meanwhile: refused in one line, nothing touched.
            by_hand = sh(REPO, sys.executable, "-m", "flows.checkout", "update", "--project", str(nightly), env=env,
                         ok=False)
            assert by_hand.returncode == 2 and "another pipeline run" in by_hand.stderr, by_hand.stderr
            second = run_deployment("pipeline/nightly", timeout=0)

            def finished():
                runs = [client.read_flow_run(run.id) for run in (first, second)]
                return runs if all(run.state.is_final() for run in runs) else None

            first, second = wait_for("two finished runs", finished, log=log)
            history = [s.name for s in client.read_flow_run_states(second.id)]
        finally:
            runner.terminate()
            runner.wait(timeout=120)
    assert first.state.is_completed() and second.state.is_completed(), (first.state, second.state, log.read_text())
    assert "AwaitingConcurrencySlot" in history, history  # queued, and Prefect says so
    assert second.start_time >= first.end_time  # never side by side

    assert sh(nightly, "git", "rev-parse", "HEAD", env=env).stdout.strip() == code  # the team's code, pulled
    results = sh(bare, "git", "rev-list", "main..nightly", env=env).stdout.split()
    assert len(results) == 1  # the second run found nothing new to publish
    assert sh(bare, "git", "rev-list", "--parents", "-n", "1", "nightly", env=env).stdout.split()[1:] == [code]
    assert sh(bare, "git", "log", "-1", "--format=%s", "nightly", env=env).stdout.startswith("pipeline run ")

    teammate = own_tmp / "teammate"
    sh(own_tmp, "git", "clone", "-q", "-b", "nightly", str(bare), str(teammate), env=env)
    sh(teammate, "dvc", "pull", env=env)
    assert "Data and pipelines are up to date." in sh(teammate, "dvc", "status", env=env).stdout
    dry = sh(teammate, "dvc", "repro", "--dry", env=env).stdout
    assert "Running stage" not in dry and dry.count("didn't change, skipping") == 4, dry
    lock = yaml.safe_load((teammate / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["lr"] == 0.02
    metrics = json.loads((teammate / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["ensemble"]["center"]["top1_err"] <= 1.0, metrics
