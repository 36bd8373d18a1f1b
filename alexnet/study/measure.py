"""What a study measures of one trained run: its row (val errors, the training images' error), once.

A row is a pure function of the trained weights (the training closure's run key) and of this
module's own code, so it is cached beside the run under both fingerprints: a rerun of the study
stage, after an edit anywhere else, reads the rows back instead of predicting 40,000 crops again.
A run whose loss became non-finite gets a row too, saying so: it did not train, and the study's
report leaves it out of every verdict by rule (alexnet/study/table.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from alexnet.config.sections import Params
from alexnet.core.atomic import atomic_write_json
from alexnet.core.closure import closure_fingerprint
from alexnet.core.layout import CENTER, TEN_CROP, VAL
from alexnet.data.shards import ShardSet
from alexnet.evaluation.members import LoadedMember
from alexnet.evaluation.reports import load_probs
from alexnet.training.metrics import topk_errs

ROW_FILE = "row.json"
ERRORS = ("center_top1_err", "center_top5_err", "ten_crop_top1_err", "ten_crop_top5_err")


def row_key(run_key: str) -> str:
    """The trained weights' key and the code that measures them."""
    return f"{run_key}:{closure_fingerprint(__name__)}"


def cached_row(where: Path, key: str) -> dict[str, Any] | None:
    """The row measured for this key before, if any."""
    path = where / ROW_FILE
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return row if row.get("key") == key else None


def save_row(where: Path, row: dict[str, Any]) -> None:
    atomic_write_json(where / ROW_FILE, row)


def measure(model_path: Path, params: Params, shards: Path, where: Path) -> dict[str, float]:
    """Top-1/top-5 error on val (centre and ten patches, §4.1) and the training images' top-1 error.

    Overfitting is train minus val with the training images measured as val is (centre crops, eval
    mode): the last epoch's augmented, dropout-on batches would make the variants without dropout or
    augmentation look overfitted.
    """
    member = LoadedMember(model_path, params)  # verified once, for val and train alike
    probs = member.predict_val(shards, where / "predictions", progress=False)
    labels = torch.from_numpy(ShardSet(shards, VAL, verify=False).labels)
    out: dict[str, float] = {}
    for view in (CENTER, TEN_CROP):
        errs = topk_errs(load_probs(probs[view]), labels) if view in probs else {"top1_err": math.nan,
                                                                                "top5_err": math.nan}
        out.update({f"{view}_{k}": v for k, v in errs.items()})
    out["train_top1_err"] = member.errors(shards)["top1_err"]
    out["train_minus_val"] = out["train_top1_err"] - out["center_top1_err"]
    return out


def failed_row(reason: str) -> dict[str, float | str]:
    """The row of a run that stopped with a non-finite loss: no errors, the reason."""
    return {**{k: math.nan for k in (*ERRORS, "train_top1_err", "train_minus_val")}, "failure": reason}
