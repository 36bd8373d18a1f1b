"""A study's sequence (`run_study`) and its steps, which flows/study.py runs as tasks.

The order and the failure policy, written once: the datasets; one MLflow parent run; the tuning
runs (each grid value once, judged on the held-out slice, never on val) and the values they pick;
the pilot (the first seeds of the pilot variants), whose SD of paired differences is written
before the other runs start; every other (variant, seed); the measurements of the figures
variant's runs (Figures 3 and 4, the LRN's denominators); the runs' files. Each run trains in its
nested run (alexnet/training/member.py's train_member: a retried run resumes from its checkpoint)
and its row is cached beside it (alexnet/study/measure.py), so a rerun repeats nothing finished.
A run whose loss becomes non-finite is a result (it did not train), not a failure of the study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.config.params import flatten
from alexnet.core.provenance import git_commit
from alexnet.core.signals import stop_requested
from alexnet.data.shards import data_version
from alexnet.pipeline.steps import InOrder, Steps
from alexnet.study.data import StudyData, build_dataset
from alexnet.study.measure import cached_row, failed_row, measure, row_key, save_row
from alexnet.study.spec import StudySpec, seeds_of, variant_params
from alexnet.tracking.lifecycle import dataset_name, entry_point, experiment_name, failed_on_error, finish
from alexnet.tracking.runs import Tracker, provenance_tags
from alexnet.tracking.store import check_tracking, local_artifact_root, resolve_tracking_uri
from alexnet.training.member import run_key, train_member

# Called after each epoch of a run with (variant, seed, the epoch's row): what it raises fails
# that attempt (a retry resumes there). Tests inject faults through it.
RunHook = Callable[[str, int, dict[str, float]], None]


@dataclass(frozen=True)
class StudyPaths:
    """Where a study lives (its dvc.yaml names them)."""

    root: Path  # the project: the default tracking store and mlartifacts/
    work: Path  # the study's data, checkpoints and models (kept between runs: resumes)
    out: Path  # the runs' files, versioned: rows, histories, tuning, pilot, figures

    def run_dir(self, label: str) -> Path:
        return self.work / "runs" / label


@dataclass(frozen=True)
class StudyRun:
    """The study's open parent run, as each task gets it (pickles: a Tracker does)."""

    tracker: Tracker
    parent: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class RunCall:
    """One training run: a variant on a seed and a dataset, with tuned values over its params."""

    variant: str
    seed: int
    data: StudyData
    tuned: tuple[tuple[str, float], ...] = ()
    tuning: bool = False  # a run of a tuning grid (judged on the held-out slice)

    @property
    def label(self) -> str:
        if self.tuning:
            return f"tune/{self.variant}/" + ",".join(f"{k}={v:g}" for k, v in self.tuned)
        return f"{self.variant}/seed-{self.seed}"


def run_study(spec: StudySpec, paths: StudyPaths, steps: Steps | None = None,
              on_epoch: RunHook | None = None) -> dict[str, Any]:
    """Train and measure every run of `spec` (see the module docstring); write the runs' files."""
    from alexnet.study.figures import measure_figures
    from alexnet.study.outputs import write_outputs, write_pilot
    from alexnet.study.table import did_not_train

    steps = steps or InOrder()
    data = steps.one("study-data", prepare_study_data, spec, paths)
    run = steps.one("open-study-run", start_study_tracking, spec, paths, data["main"])
    with failed_on_error(run.tracker, run.parent):
        tuning = _each(steps, "tune-run", tuning_calls(spec, data), spec, paths, run, on_epoch)
        pilot, rest = study_calls(spec, data["main"], chosen_values(spec, tuning))
        rows = _each(steps, "study-run", pilot, spec, paths, run, on_epoch)
        steps.one("pilot", write_pilot, spec, rows, paths.out)
        rows += _each(steps, "study-run", rest, spec, paths, run, on_epoch)
        trained = [r for r in rows if r["variant"] == spec.figures_variant and not spec.design.figure1
                   and did_not_train(r, spec.design) is None]  # Figures 3 and 4: trained networks of Figure 2
        figures = steps.each("figures", measure_figures, [(spec, r, paths, data["main"]) for r in trained],
                             spec.concurrency)
        files = steps.one("study-outputs", write_outputs, spec, rows, tuning, figures, paths.out)
    finish(run.tracker, run.parent, files)
    return {"parent_run": run.parent, "runs": {r["label"]: r["run_id"] for r in rows}, "rows": rows}


def _each(steps: Steps, name: str, calls: Sequence[RunCall], spec: StudySpec, paths: StudyPaths, run: StudyRun,
          on_epoch: RunHook | None) -> list[dict[str, Any]]:
    return steps.each(name, run_one, [(spec, c, paths, run, on_epoch) for c in calls], spec.concurrency)


def prepare_study_data(spec: StudySpec, paths: StudyPaths) -> dict[str, StudyData]:
    """Every dataset the study's runs read, built into paths.work/data unless built from the same params."""
    params = variant_params(spec, next(iter(spec.variants)), spec.seeds[0])
    kinds = ["main"] + sorted({"heldout_alone" if v.tune_by == "epochs_to_target" else "heldout"
                               for v in spec.variants.values() if v.tune})
    return {kind: build_dataset(params, paths.work, kind, spec.heldout_per_class, spec.train_per_class)
            for kind in kinds}


def tuning_calls(spec: StudySpec, data: Mapping[str, StudyData]) -> list[RunCall]:
    """Each tuned variant's grid, one run per value, on its held-out dataset."""
    calls = []
    for name, variant in spec.variants.items():
        for key, grid in variant.tune.items():
            kind = "heldout_alone" if variant.tune_by == "epochs_to_target" else "heldout"
            calls += [RunCall(name, spec.tune_seed, data[kind], ((key, value),), tuning=True) for value in grid]
    return calls


def chosen_values(spec: StudySpec, tuning: Sequence[Mapping[str, Any]]) -> dict[str, tuple[tuple[str, float], ...]]:
    """Per tuned variant, the grid value its criterion picks (ties: the first in the grid)."""
    from alexnet.study.table import tuning_score

    chosen = {}
    for name, variant in spec.variants.items():
        rows = [r for r in tuning if r["variant"] == name]
        if not rows:
            continue
        # A value whose run did not train scores inf; if none trained, the lowest raw score still picks
        # one, and the variant's own runs then show (by rule) that it does not train here.
        scored = [(tuning_score(r, variant.tune_by, spec.design), tuning_score(r, variant.tune_by, spec.design,
                                                                               rule=False), i, r)
                  for i, r in enumerate(rows)]
        best = min(scored, key=lambda s: s[:3])
        chosen[name] = tuple((k, float(v)) for k, v in best[3]["tuned"].items())
    return chosen


def study_calls(spec: StudySpec, data: StudyData, chosen: Mapping[str, tuple[tuple[str, float], ...]]
                ) -> tuple[list[RunCall], list[RunCall]]:
    """The pilot's runs (the first seeds of the pilot variants), then every other run, seed by seed."""
    calls = [RunCall(v, s, data, chosen.get(v, ())) for v in spec.variants for s in seeds_of(spec, v)]
    pilot_seeds = {v: set(seeds_of(spec, v)[:spec.design.pilot_seeds]) for v in spec.design.pilot_variants}
    pilot = [c for c in calls if c.seed in pilot_seeds.get(c.variant, ())]
    rest = sorted((c for c in calls if c not in pilot), key=lambda c: (c.seed, list(spec.variants).index(c.variant)))
    return pilot, rest


def start_study_tracking(spec: StudySpec, paths: StudyPaths, data: StudyData) -> StudyRun:
    """Check the store, open the study's parent run: the study's settings and the base params as params."""
    base = variant_params(spec, next(iter(spec.variants)), spec.seeds[0])  # the dataset the study subsets
    params = variant_params(spec, next(iter(spec.variants)), spec.seeds[0], data_root=data.root)
    uri = resolve_tracking_uri(params.tracking.uri, paths.root)
    check_tracking(uri)
    tracker = Tracker(uri, experiment_name(base.tracking, base.data),
                      artifact_root=local_artifact_root(uri, paths.root))
    tags = provenance_tags(source=entry_point(paths.root), git_commit=git_commit(paths.root),
                           data_version=data_version(data.shards), dataset=dataset_name(params.data),
                           devices=params.model.devices)
    tags = {**tags, "study": spec.name}
    study_params = {"study.seeds": spec.seeds, "study.base": str(spec.base), "study.design": spec.design.model_dump(),
                    "study.train_per_class": spec.train_per_class, "study.heldout_per_class": spec.heldout_per_class,
                    **{f"study.variant.{v}": d.model_dump() for v, d in spec.variants.items()}, **flatten(params)}
    parent = tracker.start_parent(f"study-{spec.name}", params=study_params, tags={**tags, "role": "study"})
    return StudyRun(tracker, parent, tags)


def run_one(spec: StudySpec, call: RunCall, paths: StudyPaths, run: StudyRun,
            on_epoch: RunHook | None = None) -> dict[str, Any]:
    """Train and measure one run in its nested run; its row (cached: a finished run is read back)."""
    params = variant_params(spec, call.variant, call.seed, data_root=call.data.root, tuned=dict(call.tuned))
    where, key = paths.run_dir(call.label), row_key(run_key(params, 0, call.data.shards))
    if (row := cached_row(where, key)) is not None:
        return row
    tracker = run.tracker
    run_id = tracker.start_member(run.parent, call.label, params=flatten(params),
                                  tags={**run.tags, "variant": call.variant, "seed": str(call.seed),
                                        "tuning": str(call.tuning).lower()})

    def after_epoch(row: dict[str, float]) -> None:
        tracker.log_epoch(run_id, row, step=int(row["epoch"]))
        if on_epoch is not None:
            on_epoch(call.variant, call.seed, row)

    row: dict[str, Any] = {"label": call.label, "variant": call.variant, "seed": call.seed,
                           "tuned": dict(call.tuned), "tuning": call.tuning, "key": key, "run_id": run_id,
                           "history": str(where / "history" / "member-0.csv")}
    with failed_on_error(tracker, run_id):
        try:
            trained = train_member(0, params, prepared_dir=call.data.prepared, shards_dir=call.data.shards,
                                   models_dir=where / "models", history_dir=where / "history",
                                   checkpoints_dir=where / "checkpoints", on_epoch=after_epoch, progress=False,
                                   should_stop=stop_requested)  # SIGTERM & co: checkpoint now, resume later
        except FloatingPointError as err:  # a fact of the run, the same on every retry: a row that says so
            row.update(failed_row(str(err)))
            _history_until_failure(params, call, where)
        else:
            row.update(epochs=trained["epochs"], model=trained["model"], num_classes=trained["num_classes"],
                       final_train_loss=trained["final"]["train_loss"],
                       **measure(Path(trained["model"]), params, call.data.shards, where))
    metrics = {k: v for k, v in row.items() if k.endswith(("_err", "_val")) and isinstance(v, float)
               and math.isfinite(v)}
    tracker.best_effort("logging the run's figures", run_id, tracker.log_metrics, run_id, metrics)
    finish(tracker, run_id, [Path(row["history"])] if Path(row["history"]).is_file() else [])
    save_row(where, row)
    return row


def _history_until_failure(params: Any, call: RunCall, where: Path) -> None:
    """The epochs a failed run finished, from its last checkpoint, as its history file (the report's curve)."""
    from alexnet.training.checkpoint import load_resumable
    from alexnet.training.member import MemberPaths, write_history

    paths = MemberPaths.of(0, where / "models", where / "history", where / "checkpoints",
                           run_key(params, 0, call.data.shards))
    state = load_resumable(paths.checkpoint)
    write_history(paths.history, list(state["history"]) if state else [])
