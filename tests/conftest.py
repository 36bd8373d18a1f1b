"""Test-session isolation, and shared fixtures: a tiny synthetic tree and its prepared index."""

import atexit
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


# The files that take longest, longest first (`pytest --durations` under `make test`; figures in
# docs/results.md). `make test` hands whole files to two workers in collection order
# (--no-loadscope-reorder), so no long file starts last with the other worker idle, as xdist's
# default (files with many tests first) allows. It bounds the tail; it does not shorten a suite
# whose two workers are busy throughout (measured: no gain).
LONGEST_FIRST = (
    "tests/test_team.py",
    "tests/faults/test_kill_model_stages.py",
    "tests/faults/test_signals.py",
    "tests/test_ray.py",
    "tests/test_study.py",
    "tests/faults/test_credentials.py",
    "tests/test_nightly.py",
    "tests/faults/test_tracking_faults.py",
    "tests/test_ddp.py",
    "tests/test_sweep.py",
    "tests/test_ensemble.py",
    "tests/faults/test_dvc_exp_temp.py",
    "tests/test_flows.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: files keep their order
