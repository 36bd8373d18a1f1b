"""The standing fault-injection suite: each test is a way a user broke the pipeline, kept broken-proof."""

import pytest


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    # One marker for the whole folder: `pytest -m faults` runs the suite alone.
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: the fault-injection suite (tests/faults/)")
