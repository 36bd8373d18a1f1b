"""`python -m alexnet.summary reports/metrics.json`: the evaluate stage's figures as a short table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from alexnet.core.cli import exit_code
from alexnet.core.layout import VIEWS
from alexnet.core.tables import format_table


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """{"": name, "center top-1 err": ..., ...} for every member, then the ensemble."""
    views = [v for v in VIEWS if v in metrics]

    def row(name: str, entry: dict[str, Any]) -> dict[str, Any]:
        return {"": name, **{f"{v} top-{k} err": entry[v][f"top{k}_err"] for v in views for k in (1, 5)}}

    rows = [row(name, m) for name, m in metrics.get("members", {}).items()]
    rows.append(row("ensemble", metrics["ensemble"] if "ensemble" in metrics else metrics))
    return rows


def summary_table(metrics: dict[str, Any]) -> str:
    """Every member and the ensemble, each error in per cent."""
    import pandas as pd

    return format_table(pd.DataFrame(summary_rows(metrics)), left=("",), number=lambda v: f"{v * 100:.2f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("metrics", type=Path)
    args = ap.parse_args(argv)

    def work() -> None:
        if not args.metrics.is_file():
            raise FileNotFoundError(f"{args.metrics}: no metrics file; run `dvc repro` first")
        metrics = json.loads(args.metrics.read_text())
        print(f"val images: {metrics.get('images', '?')}  (error = 1 - accuracy)")
        print(summary_table(metrics))

    return exit_code("summary", work)


if __name__ == "__main__":
    sys.exit(main())
