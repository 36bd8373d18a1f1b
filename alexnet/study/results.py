"""The rows of a study's runs as a file, results.csv, and back: what the report stage reads (nothing heavy)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULT_FIELDS = ("label", "variant", "seed", "tuning", "tuned", "epochs", "num_classes", "final_train_loss",
                 "center_top1_err", "center_top5_err", "ten_crop_top1_err", "ten_crop_top5_err", "train_top1_err",
                 "train_minus_val", "failure")
PILOT_FILE, TUNING_FILE, REGIME_FILE, HISTORIES_DIR = "pilot.json", "tuning.csv", "regime.json", "histories"


def history_name(label: str) -> str:
    return label.replace("/", "__") + ".csv"


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "tuned": json.dumps(r.get("tuned") or {}, sort_keys=True)})
    return buf.getvalue()


def read_results(path: Path) -> list[dict[str, Any]]:
    """results.csv back as rows: numbers as floats, tuned as a mapping, the history beside it."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row: dict[str, Any] = {k: v for k, v in r.items() if v != ""}
        for k in RESULT_FIELDS[5:-1]:
            if k in row:
                row[k] = float(row[k])
        row.update(seed=int(r["seed"]), tuning=r["tuning"] == "True", tuned=json.loads(r["tuned"] or "{}"),
                   history=str(path.parent / HISTORIES_DIR / history_name(r["label"])))
        out.append(row)
    return out
