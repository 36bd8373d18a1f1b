"""A study's files in reports/study/: the runs, the table per variant, Figure 1 and the error plot.

- results.csv: one row per (variant, seed) (alexnet.study.spec.RESULT_FIELDS).
- summary.json: per variant and figure the mean over seeds with its 95 % t-interval, and the
  paired difference to the baseline; Figure 1's epochs and ratio; the study's settings.
- table.md: the same as a table, in percentage points.
- errors.png: centre/ten-crop top-1 error per variant with intervals. figure1.png, figure1.csv:
  training error against epochs, ReLU (baseline) and tanh (a DVC plot).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.core.atomic import atomic_write_json, atomic_write_text
from alexnet.core.layout import (
    ERRORS_PLOT,
    FIGURE1_CSV,
    FIGURE1_PLOT,
    STUDY_RESULTS_FILE,
    STUDY_SUMMARY_FILE,
    STUDY_TABLE_FILE,
)
from alexnet.core.plots import pyplot, save
from alexnet.study.spec import BASELINE, ERRORS, StudySpec, figure1, interval_of, results_csv, summarise

FIGURE1_VARIANTS = (BASELINE, "tanh")


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def write_study_files(spec: StudySpec, rows: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Any]:
    """Every file of reports/study/ but the figures and REPORT.md; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    variants = list(spec.variants)
    histories = {(r["variant"], int(r["seed"])): [h["train_top1_err"] for h in read_history(Path(r["history"]))]
                 for r in rows}
    summary = {
        "study": spec.name, "base": str(spec.base), "seeds": spec.seeds, "variants": spec.variants,
        "overrides": spec.overrides, "train_per_class": spec.train_per_class,
        "table": summarise(rows, variants),
        "figure1": figure1(histories, spec.target_train_err) if "tanh" in spec.variants else None,
    }
    atomic_write_text(out / STUDY_RESULTS_FILE, results_csv(rows))
    atomic_write_json(out / STUDY_SUMMARY_FILE, summary)
    atomic_write_text(out / STUDY_TABLE_FILE, table_markdown(summary["table"]))
    atomic_write_text(out / FIGURE1_CSV, _figure1_csv(histories))
    _errors_plot(summary["table"], out / ERRORS_PLOT)
    _figure1_plot(histories, spec.target_train_err, out / FIGURE1_PLOT)
    return summary


def table_markdown(table: Mapping[str, Any]) -> str:
    """Per variant: errors (mean ± half-width, n) and the paired difference to baseline, in points."""
    head = ["variant", "n", *ERRORS, "train - val top-1", *(f"Δ {k}" for k in ERRORS), "Δ train - val"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, e in table.items():
        cells = [v, str(len(e["seeds"]))]
        cells += [interval_of(e[k]).text() for k in (*ERRORS, "train_minus_val")]
        cells += [interval_of(e[f"{k}_vs_baseline"]).text() if f"{k}_vs_baseline" in e else "—"
                  for k in (*ERRORS, "train_minus_val")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nErrors in percent, mean ± half-width of the 95 % t-interval over seeds; Δ: the " \
        "variant minus baseline on the same seeds. train - val: the training images' top-1 error " \
        "(centre crops, eval mode, as val is measured) minus the centre-crop val error; more negative is more " \
        "overfitting.\n"


def _figure1_csv(histories: Mapping[tuple[str, int], Sequence[float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "epoch", "train_top1_err"])
    for (v, s), errs in sorted(histories.items()):
        if v in FIGURE1_VARIANTS:
            writer.writerows([f"{v}/seed-{s}", i + 1, f"{e:.6f}"] for i, e in enumerate(errs))
    return buf.getvalue()


def _errors_plot(table: Mapping[str, Any], path: Path) -> None:
    plt = pyplot()
    names = list(table)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    for j, (key, label) in enumerate((("center_top1_err", "centre top-1"), ("ten_crop_top1_err", "ten-crop top-1"))):
        ivs = [interval_of(table[v][key]) for v in names]
        xs = [i + 0.2 * (j - 0.5) for i in range(len(names))]
        yerr = [iv.half_width * 100 if iv.n > 1 else 0 for iv in ivs]
        ax.errorbar(xs, [iv.mean * 100 for iv in ivs], yerr=yerr, fmt="o", capsize=3, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("val error, % (95 % CI over seeds)")
    ax.legend(fontsize=8)
    save(fig, path)


def _figure1_plot(histories: Mapping[tuple[str, int], Sequence[float]], target: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (v, s), errs in sorted(histories.items()):
        if v in FIGURE1_VARIANTS:
            ax.plot(range(1, len(errs) + 1), [e * 100 for e in errs], "-" if v == BASELINE else "--",
                    color="C0" if v == BASELINE else "C3", label=f"{'ReLU' if v == BASELINE else 'tanh'} seed {s}")
    ax.axhline(target * 100, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training error, %")
    ax.set_title("Figure 1: ReLU (solid) vs tanh (dashed)", fontsize=9)
    ax.legend(fontsize=6)
    save(fig, path)
