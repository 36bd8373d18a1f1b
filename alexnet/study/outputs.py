"""The files a study's runs leave (the runs stage's output, versioned with the code that made them).

- results.csv: one row per run, tuning runs included: the errors, the training loss it ended at, or
  the failure that stopped it (alexnet/study/table.py judges from these who trained);
- histories/<variant>__seed-<n>.csv: each run's per-epoch curve (the report's Figure 1, and the
  curve of a run that did not train);
- tuning.csv: each grid value, its score and the value picked;
- pilot.json: the SD of paired differences the pilot measured, written before the other runs;
- figures/: Figures 3 and 4 of the figures variant's first run, and figures.json with every run's
  numbers (colour specificity per tower with its permutation p, fc7 kNN accuracy, the LRN's scale);
- regime.json: what the runs were: the study file as run, the values tuned, this machine's CPU and torch.
"""

from __future__ import annotations

import csv
import io
import platform
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.core.atomic import atomic_write_json, atomic_write_text
from alexnet.study.results import HISTORIES_DIR, PILOT_FILE, REGIME_FILE, TUNING_FILE, history_name, results_csv
from alexnet.study.spec import StudySpec, seeds_of
from alexnet.study.table import pilot_sd, tuning_score


def write_pilot(spec: StudySpec, rows: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Any]:
    """The pilot's SD of paired differences, and what it predicts the planned n can find per claim."""
    from alexnet.study.stats import mde, power

    pilot = pilot_sd(spec, rows)
    m = max(len(spec.claims), 1)
    if pilot["sd"]:
        pilot["planned"] = [
            {"claim": c.variant, "n": len(seeds_of(spec, c.variant)), "effect": c.effect,
             "power": power(c.effect, pilot["sd"], len(seeds_of(spec, c.variant)), spec.design.alpha / m),
             "mde": mde(pilot["sd"], len(seeds_of(spec, c.variant)), spec.design.alpha / m, spec.design.power)}
            for c in spec.claims if c.metric == spec.design.metric]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PILOT_FILE, pilot)
    return pilot


def write_outputs(spec: StudySpec, rows: Sequence[Mapping[str, Any]], tuning: Sequence[Mapping[str, Any]],
                  figures: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """Every file of the runs' output folder (see the module docstring); the files, for MLflow."""
    out.mkdir(parents=True, exist_ok=True)
    every = [*tuning, *rows]
    atomic_write_text(out / "results.csv", results_csv(every))
    histories = out / HISTORIES_DIR
    histories.mkdir(exist_ok=True)
    for r in every:
        if Path(r["history"]).is_file():
            shutil.copyfile(r["history"], histories / history_name(r["label"]))
    atomic_write_text(out / TUNING_FILE, tuning_csv(spec, tuning))
    if figures:
        from alexnet.study.figures import write_figure_files

        write_figure_files(figures, out)
    atomic_write_json(out / REGIME_FILE, regime(spec, rows))
    return sorted(p for p in out.rglob("*") if p.is_file())


def tuning_csv(spec: StudySpec, tuning: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["variant", "key", "value", "judged_by", "score", "chosen"])
    for name, variant in spec.variants.items():
        rows = [r for r in tuning if r["variant"] == name]
        if not rows:
            continue
        scores = [tuning_score(r, variant.tune_by, spec.design) for r in rows]
        best = scores.index(min(scores))
        for i, (r, score) in enumerate(zip(rows, scores)):
            (key, value), = r["tuned"].items()
            writer.writerow([name, key, value, variant.tune_by, f"{score:.4f}", i == best])
    return buf.getvalue()


def regime(spec: StudySpec, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the runs were and where: the study as run, the tuned values, the machine and torch."""
    import torch

    return {"study": spec.model_dump(mode="json"),
            "tuned": {r["variant"]: r["tuned"] for r in rows if r.get("tuned")},
            "machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                        "processor": platform.processor() or platform.machine()}}
