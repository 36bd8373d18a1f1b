"""Test-session isolation, and shared fixtures: a tiny synthetic tree and its prepared index."""

import atexit
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# No test may touch the user's ~/.prefect or the project's mlflow.db: Prefect's home goes to a
# throwaway folder before anything imports prefect, and MLflow gets a URI only from each test.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="alexnet-tests-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
# The library's log lines outside a flow (most tests call it directly) stay out of the shared server
# below, without a warning each.
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"


# The suite's peak in the temporary folder, three workers (docs/results.md): full-size AlexNet
# checkpoints and logged models in module fixtures. Less free space fails test after test with
# "No space left on device"; one line at the start says it instead.
NEEDS_FREE_GB = 12


def pytest_sessionstart(session):
    if hasattr(session.config, "workerinput"):  # the controller checks, once
        return
    where = tempfile.gettempdir()
    free = shutil.disk_usage(where).free / 2**30
    if free < NEEDS_FREE_GB and not os.environ.get("ALEXNET_TESTS_IGNORE_DISK"):
        pytest.exit(f"{where}: {free:.1f} GB free; the tests need about {NEEDS_FREE_GB} GB there (free some, "
                    "point TMPDIR elsewhere, or set ALEXNET_TESTS_IGNORE_DISK=1 to run anyway)", returncode=4)


@pytest.fixture(scope="session", autouse=True)
def shared_prefect_server(request, tmp_path_factory):
    """One Prefect API server per test process, for every flow and stage the tests start.

    A stage without PREFECT_API_URL starts a server of its own (flows/server.py), about 10 s of CPU
    each time; most tests are not about that server. The ones that are (kill -9 and signals, an
    unwritable PREFECT_HOME, the project's own run listing) drop PREFECT_API_URL from their stage's
    environment. In-process flows get the server through Prefect's settings: prefect is imported
    at collection, before this runs, and reads its environment once. A session without the slow
    tests (`make test-fast`) starts few stages: no server then, its start would cost more.
    """
    if not any(item.get_closest_marker("slow") for item in request.session.items):
        yield None
        return
    from flows.server import start_api_server, stop_server

    proc, url = _first_or_seeded_server(tmp_path_factory, start_api_server)
    os.environ["PREFECT_API_URL"] = url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
    os.environ.pop("PREFECT_API_URL", None)
    stop_server(proc)


def _first_or_seeded_server(factory, start):
    """This process's server: the session's first migrates a new database, which becomes the template
    the others' and the stages' homes copy (tests/tiny.prefect_home); the pytest workers of one
    session share it (xdist's run id names it beside their temporary folders)."""
    from tests.tiny import PREFECT_TEMPLATE_ENV, prefect_home, save_prefect_template

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    template = factory.getbasetemp().parent / f"prefect-template-{run}" if run else factory.mktemp("prefect-template")
    home = factory.mktemp("prefect-server")
    with open(f"{template}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait for the first's database, then copy it
        first = not (template / "prefect.db").exists()
        os.environ[PREFECT_TEMPLATE_ENV] = str(template)  # read by prefect_home, which copies none while it is absent
        proc, url = start(prefect_home(home))
        if first:
            save_prefect_template(home, template)
    return proc, url


# 3 classes x (4 train + 2 val): room for every train-split quirk, and seconds to generate.
TINY = dict(classes=3, train_per_class=4, val_per_class=2, min_side=40, max_side=80, seed=0)


@pytest.fixture(scope="session")
def tiny() -> dict:
    """data.synthetic params of the tiny tree."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared synthetic dataset (prepare stage output); read-only for the tests."""
    from alexnet.config.sections import DataParams, SyntheticParams
    from alexnet.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(out, DataParams(synthetic=SyntheticParams(**TINY)), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """tests/tiny.py's training data (prepared + shards), built once per test process; read-only."""
    from tests.tiny import build_tiny_data

    return build_tiny_data(tmp_path_factory.mktemp("tiny-data"))


# Every file that takes 15 s or more, longest first (seconds summed over its tests under `make test`,
# `pytest --durations=0`; docs/results.md). `make test` hands whole files to its workers in this
# order (--no-loadscope-reorder) and the rest after them, so that no long file starts last while
# the other workers go idle: xdist's default (files with many tests first) let test_watch.py's 110 s
# start at 650 s, the last 110 s with one core idle. A file missing here runs among the short ones.
LONGEST_FIRST = (
    "tests/test_team.py",  # 244
    "tests/faults/test_signals.py",  # 191
    "tests/faults/test_kill_model_stages.py",  # 150
    "tests/test_ray.py",  # 136
    "tests/test_nightly.py",  # 133
    "tests/test_watch.py",  # 110
    "tests/faults/test_credentials.py",  # 108
    "tests/test_ddp.py",  # 102
    "tests/test_study.py",  # 67
    "tests/test_sweep.py",  # 67
    "tests/faults/test_tracking_faults.py",  # 61
    "tests/test_train.py",  # 52
    "tests/faults/test_dvc_exp_temp.py",  # 48
    "tests/test_imagenet_profiles.py",  # 46
    "tests/test_serving.py",  # 41
    "tests/test_flows.py",  # 41
    "tests/test_ensemble.py",  # 37
    "tests/test_tracking.py",  # 37
    "tests/test_heap.py",  # 34
    "tests/test_closure.py",  # 31
    "tests/test_device_finish.py",  # 22
    "tests/faults/test_dvc_cache.py",  # 20
    "tests/faults/test_weights_integrity.py",  # 20
    "tests/faults/test_kill_data_stages.py",  # 18
    "tests/faults/test_disk_full.py",  # 16
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: files keep their order
