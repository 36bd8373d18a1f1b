"""A tiny, fast training setup shared by the training and flow tests."""

import atexit
import functools
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from alexnet.config.params import parse_params


def tiny_params(**train) -> dict:
    """Raw params: 3 synthetic classes, 72 px stored, 64 px crops, fp32, deterministic, 1 thread."""
    return {
        "data": {"synthetic": {"classes": 3, "train_per_class": 16, "val_per_class": 4, "min_side": 64,
                               "max_side": 96, "seed": 1}},
        "preprocess": {"stored_size": 72, "shard_size": 16, "workers": 1},
        "model": {"crop_size": 64, "init": "kaiming", "input_scale": 58.0},
        "train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "precision": "fp32", "deterministic": True,
                  "workers": 1, "threads": 1, "lr_patience": 10, **train},
        "evaluate": {"batch_size": 16},
        "ensemble": {"members": 1},
    }


@functools.cache
def _empty_store() -> Path:
    """This process's empty, migrated MLflow store, made on first use and removed at exit."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    where = Path(tempfile.mkdtemp(prefix="alexnet-empty-mlflow-"))
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    SqlAlchemyStore(f"sqlite:///{where / 'mlflow.db'}", str(where / "artifacts")).engine.dispose()
    return where / "mlflow.db"


def sqlite_store(folder: Path) -> str:
    """The URI of an MLflow SQLite store at folder/mlflow.db that starts as a copy of an empty one.

    MLflow makes a new store by running every schema migration (2-3 s a store, most of it alembic);
    the tests' stores copy one made once per test process instead: the same empty schema, the same
    default experiment. A store already there is kept (several runs into one project).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "mlflow.db").exists():
        shutil.copyfile(_empty_store(), folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


# The test session's empty, migrated Prefect database (tests/conftest.py sets it once its first server is up).
PREFECT_TEMPLATE_ENV = "ALEXNET_TESTS_PREFECT_TEMPLATE"
PREFECT_FILES = ("prefect.db", "memo_store.toml")  # the database; the hash of the block types it registered


def prefect_home(folder: Path) -> Path:
    """`folder`, a Prefect server's home, holding a copy of the session's empty database if it has none.

    A Prefect server on a new home runs every schema migration and registers its block types before
    it answers (about 5 s of CPU of its 9). Tests whose stages start their own server in a new
    project give it this copy instead, as a project's second `dvc repro` finds its own database; the
    session's first server migrates a new one (tests/conftest.py). Without a template: nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    template = os.environ.get(PREFECT_TEMPLATE_ENV)
    if template and not (folder / "prefect.db").exists():
        for name in PREFECT_FILES:
            if (Path(template) / name).exists():
                shutil.copyfile(Path(template) / name, folder / name)
    return folder


def save_prefect_template(home: Path, template: Path) -> None:
    """A consistent copy of a running server's database (SQLite's backup: the write-ahead log
    included) and its block-type hash into `template`, for `prefect_home`."""
    template.mkdir(parents=True, exist_ok=True)
    source, copy = sqlite3.connect(home / "prefect.db"), sqlite3.connect(template / "prefect.db.partial")
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    if (home / "memo_store.toml").exists():
        shutil.copyfile(home / "memo_store.toml", template / "memo_store.toml")
    os.replace(template / "prefect.db.partial", template / "prefect.db")  # last: its presence means complete


def build_tiny_data(root: Path) -> Path:
    """Run the real prepare and preprocess library functions into root/prepared and root/shards."""
    from alexnet.data.prepare import prepare
    from alexnet.data.preprocess import preprocess

    params = parse_params(tiny_params())
    prepare(root / "prepared", params.data, workers=1, progress=False)
    preprocess(root / "prepared", root / "shards", params.preprocess, progress=False)
    return root


_TRAIN_SCRIPT = """
import sys, yaml
from pathlib import Path
from alexnet.config.params import parse_params
from alexnet.training.member import train_member
raw, data, out = yaml.safe_load(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), Path(sys.argv[3])
fail_after, fired = int(sys.argv[4]), out / "fault-fired"

def on_epoch(row):
    print(EPOCH_LINE.format(int(row["epoch"])), flush=True)
    if int(row["epoch"]) == fail_after and not fired.exists():  # once: the rerun goes on
        fired.touch()
        raise RuntimeError(FAULT_LINE.format(fail_after))

train_member(0, parse_params(raw), prepared_dir=data / "prepared", shards_dir=data / "shards",
             models_dir=out / "models", history_dir=out / "history", checkpoints_dir=out / "checkpoints",
             on_epoch=on_epoch, progress=False)
"""
# What the training process prints once an epoch's checkpoint is written: a test waits for it.
EPOCH_LINE = "checkpointed epoch {}"
# What it raises when told to fail once after an epoch (a crash between epochs, for resume tests).
FAULT_LINE = "injected fault after epoch {}"


def train_command(params_file: Path, data: Path, out: Path, fail_after: int = 0) -> list[str]:
    """A fresh Python process that trains member 0 with params_file on build_tiny_data's data into out.

    fail_after=N: the first run into `out` fails right after epoch N's checkpoint; a rerun resumes.
    """
    script = f"EPOCH_LINE = {EPOCH_LINE!r}\nFAULT_LINE = {FAULT_LINE!r}\n{_TRAIN_SCRIPT}"
    return [sys.executable, "-c", script, str(params_file), str(data), str(out), str(fail_after)]
