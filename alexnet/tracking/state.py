"""The training's tracking record, models/tracking.json: the store and the run ids the evaluate stage logs into.

It names the store relative to the project when the store lies inside it (`sqlite:///mlflow.db`,
with `project_root` giving the project relative to the file itself), so a copied project logs
into its own copy of the store, whatever the current directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alexnet.core.atomic import atomic_write_json
from alexnet.tracking.store import portable_uri, uri_in_project


def write_tracking_state(path: Path, *, uri: str, experiment: str, parent: str, member_runs: Mapping[str, str],
                         root: Path | None) -> None:
    """The run ids for the evaluate stage; the store relative to the project when it lies inside it."""
    state: dict[str, Any] = {"uri": uri, "experiment": experiment, "parent_run": parent,
                             "member_runs": dict(member_runs)}
    if root is not None and (relative := portable_uri(uri, root)) != uri:
        state["uri"] = relative
        state["project_root"] = Path(os.path.relpath(Path(root).resolve(), Path(path).parent.resolve())).as_posix()
    atomic_write_json(path, state)


def read_tracking_state(path: Path) -> dict[str, Any]:
    """tracking.json with "uri" made absolute against the project it lies in now."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        uri = state["uri"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no tracking state (run the train stage first)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tracking state written by the train stage ({err})") from None
    if "project_root" in state:
        state["uri"] = uri_in_project(uri, (path.parent / state["project_root"]).resolve())
    return state
