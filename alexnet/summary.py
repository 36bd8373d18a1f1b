"""Print the evaluate stage's figures as a short table: `python -m alexnet.summary reports/metrics.json`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alexnet.layout import VIEWS


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(name, {"center top-1 err": ..., ...}) for every member, then the ensemble."""
    views = [v for v in VIEWS if v in metrics]

    def row(entry: dict[str, Any]) -> dict[str, float]:
        return {f"{v} top-{k} err": entry[v][f"top{k}_err"] for v in views for k in (1, 5)}

    rows = [(name, row(m)) for name, m in metrics.get("members", {}).items()]
    rows.append(("ensemble", row(metrics["ensemble"] if "ensemble" in metrics else metrics)))
    return rows


def format_table(metrics: dict[str, Any]) -> str:
    rows = summary_rows(metrics)
    columns = list(rows[0][1])
    width = max(len(name) for name, _ in rows)
    lines = ["  ".join([" " * width, *(f"{c:>17}" for c in columns)])]
    for name, values in rows:
        lines.append("  ".join([f"{name:<{width}}", *(f"{values[c] * 100:16.2f}%" for c in columns)]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("metrics", type=Path)
    args = ap.parse_args(argv)
    if not args.metrics.is_file():
        raise SystemExit(f"{args.metrics}: no metrics file; run `dvc repro` first")
    metrics = json.loads(args.metrics.read_text())
    print(f"val images: {metrics.get('images', '?')}  (error = 1 - accuracy)")
    print(format_table(metrics))


if __name__ == "__main__":
    main()
