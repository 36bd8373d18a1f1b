"""A study's sequence (`run_study`) and its steps, which flows/study.py runs as tasks.

`prepare_study_data` builds the one dataset every variant reads (skipped when its params are
unchanged), `start_study_tracking` opens one MLflow parent run for the study, `run_variant_seed`
trains one (variant, seed) with alexnet.training.member.train_member into its own nested run, tagged with
both, and predicts the val and training images with one alexnet.training.member.LoadedMember. No second
training loop: a retried run resumes from train_member's checkpoint, and a finished one is not
trained again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.config.params import flatten
from alexnet.core.atomic import atomic_write_json
from alexnet.core.layout import CENTER, FIGURES_DIR, TEN_CROP, VAL
from alexnet.core.provenance import fingerprint, git_commit
from alexnet.data.shards import ShardSet, data_version
from alexnet.evaluation.members import LoadedMember
from alexnet.evaluation.reports import load_probs
from alexnet.pipeline.steps import InOrder, Steps
from alexnet.study.spec import StudySpec, variant_params
from alexnet.tracking.lifecycle import dataset_name, entry_point, failed_on_error, finish
from alexnet.tracking.runs import Tracker, provenance_tags
from alexnet.tracking.store import check_tracking, local_artifact_root, resolve_tracking_uri
from alexnet.training.member import train_member
from alexnet.training.metrics import topk_errs

STAMP_FILE = "study-data.json"  # what the study's data was built from

# Called after each epoch of a run with (variant, seed, the epoch's row): what it raises fails
# that attempt (a retry resumes there). Tests inject faults through it.
RunHook = Callable[[str, int, dict[str, float]], None]


@dataclass(frozen=True)
class StudyPaths:
    """Where a study lives (study/dvc.yaml names them)."""

    root: Path  # the project: the default tracking store and mlartifacts/
    work: Path  # the study's data, checkpoints and models (kept between runs: resumes)
    out: Path  # reports/study: the versioned tables, plots and figures

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.work / "runs" / variant / f"seed-{seed}"

    @property
    def prepared(self) -> Path:
        return self.work / "data" / "prepared"

    @property
    def shards(self) -> Path:
        return self.work / "data" / "shards"


@dataclass(frozen=True)
class StudyRun:
    """The study's open parent run, as each task gets it (pickles: a Tracker does)."""

    tracker: Tracker
    parent: str
    tags: Mapping[str, str]
    data_root: str | None  # the subset tree, when the study takes one


def run_study(spec: StudySpec, paths: StudyPaths, steps: Steps | None = None, on_epoch: RunHook | None = None,
              report: bool = True) -> dict[str, Any]:
    """Train every (variant, seed) of `spec`, write the study's files, log the study to MLflow.

    The order and the failure policy, written once: the dataset once, one parent run; each run in
    its nested run (the step the flow retries; it resumes from its checkpoint); then the table,
    Figure 1, Figures 3 and 4 of one member and REPORT.md into paths.out and the parent run. A run
    that fails for good closes the parent FAILED and the error goes on up.
    """
    steps = steps or InOrder()
    data_root = steps.one("study-data", prepare_study_data, spec, paths)
    run = steps.one("open-study-run", start_study_tracking, spec, paths, data_root)
    calls = [(spec, v, s, paths, run, on_epoch) for s in spec.seeds for v in spec.variants]
    with failed_on_error(run.tracker, run.parent):
        rows = steps.each("study-run", run_variant_seed, calls, spec.concurrency)
        summary = steps.one("study-files", write_outputs, spec, rows, paths, report)
        run.tracker.log_metrics(run.parent, {"figures": summary["figures"]["figure3"]["colour_specificity"]})
    finish(run.tracker, run.parent, sorted(paths.out.iterdir()))
    return {**summary, "parent_run": run.parent, "runs": {f"{r['variant']}/seed-{r['seed']}": r["run_id"]
                                                          for r in rows}}


def write_outputs(spec: StudySpec, rows: list[dict[str, Any]], paths: StudyPaths,
                  report: bool = True) -> dict[str, Any]:
    """The study's files from its rows: table, Figure 1 and the error plot, Figures 3 and 4 of the
    figures variant's first seed, REPORT.md; the summary."""
    from alexnet.evaluation.figures import write_figures
    from alexnet.evaluation.members import load_member
    from alexnet.study.files import write_study_files

    summary = write_study_files(spec, rows, paths.out)
    member = next(r for r in rows if r["variant"] == spec.figures_variant)
    params = variant_params(spec, member["variant"], member["seed"])
    model = load_member(Path(member["model"]), params, devices=("cpu",))
    summary["figures"] = write_figures(model, paths.shards, paths.out / FIGURES_DIR, crop_size=params.model.crop_size,
                                       divisor=params.model.input_scale)
    if report:
        from alexnet.study.report import write_report

        write_report(paths.out, params)
    return summary


def prepare_study_data(spec: StudySpec, paths: StudyPaths) -> str | None:
    """Prepare and preprocess the study's dataset into paths.work/data, unless built from the same params.

    Returns the data root the variants read (the subset tree, or None for the base's own).
    """
    from alexnet.data.prepare import prepare
    from alexnet.data.preprocess import preprocess
    from alexnet.study.spec import subset_tree

    params = variant_params(spec, "baseline", spec.seeds[0])
    data_root = None
    if spec.train_per_class is not None:
        if params.data.root is None:
            raise ValueError(f"train_per_class needs a data.root (source {params.data.source} has none)")
        data_root = str(subset_tree(params.data.root, paths.work / "data" / "subset", spec.train_per_class))
        params = variant_params(spec, "baseline", spec.seeds[0], data_root=Path(data_root))
    stamp = {"data": params.data.model_dump(mode="json"), "preprocess": params.preprocess.model_dump(mode="json"),
             "train_per_class": spec.train_per_class}
    stamp_path = paths.work / "data" / STAMP_FILE
    if stamp_path.is_file() and (paths.shards / "manifest.json").is_file():
        import json

        if json.loads(stamp_path.read_text()).get("key") == fingerprint(stamp):
            return data_root
    prepare(paths.prepared, params.data, workers=params.preprocess.workers, progress=False)
    preprocess(paths.prepared, paths.shards, params.preprocess, progress=False)
    atomic_write_json(stamp_path, {"key": fingerprint(stamp), **stamp})
    return data_root


def start_study_tracking(spec: StudySpec, paths: StudyPaths, data_root: str | None) -> StudyRun:
    """Check the store, open the study's parent run: the study's settings and the base params as params."""
    params = variant_params(spec, "baseline", spec.seeds[0], data_root=Path(data_root) if data_root else None)
    uri = resolve_tracking_uri(params.tracking.uri, paths.root)
    check_tracking(uri)
    tracker = Tracker(uri, params.tracking.experiment, artifact_root=local_artifact_root(uri, paths.root))
    tags = provenance_tags(source=entry_point(paths.root), git_commit=git_commit(paths.root),
                           data_version=data_version(paths.shards), dataset=dataset_name(params.data),
                           devices=params.model.devices)
    tags = {**tags, "study": spec.name}
    study_params = {"study.seeds": spec.seeds, "study.variants": sorted(spec.variants),
                    "study.base": str(spec.base), "study.train_per_class": spec.train_per_class,
                    **{f"study.variant.{v}": over for v, over in spec.variants.items()}, **flatten(params)}
    parent = tracker.start_parent(f"study-{spec.name}", params=study_params, tags={**tags, "role": "study"})
    return StudyRun(tracker, parent, tags, data_root)


def member_label(variant: str, seed: int) -> str:
    """The nested run's name and `member` tag: one per (variant, seed)."""
    return f"{variant}/seed-{seed}"


def run_variant_seed(spec: StudySpec, variant: str, seed: int, paths: StudyPaths, run: StudyRun,
                     on_epoch: RunHook | None = None) -> dict[str, Any]:
    """Train and evaluate one (variant, seed) in its nested run; its row of the study's table."""
    params = variant_params(spec, variant, seed, data_root=Path(run.data_root) if run.data_root else None)
    label, tracker, where = member_label(variant, seed), run.tracker, paths.run_dir(variant, seed)
    run_id = tracker.start_member(run.parent, label, params=flatten(params),
                                  tags={**run.tags, "variant": variant, "seed": str(seed)})

    def after_epoch(row: dict[str, float]) -> None:
        tracker.log_epoch(run_id, row, step=int(row["epoch"]))
        if on_epoch is not None:
            on_epoch(variant, seed, row)

    with failed_on_error(tracker, run_id):
        trained = train_member(0, params, prepared_dir=paths.prepared, shards_dir=paths.shards,
                               models_dir=where / "models", history_dir=where / "history",
                               checkpoints_dir=where / "checkpoints", on_epoch=after_epoch, progress=False)
        member = LoadedMember(Path(trained["model"]), params)  # verified once, for val and train alike
        probs = member.predict_val(paths.shards, where / "predictions", progress=False)
    labels = _val_labels(paths.shards)
    row: dict[str, Any] = {"variant": variant, "seed": seed, "epochs": trained["epochs"],
                           "model": trained["model"], "history": trained["history"], "run_id": run_id}
    for view in (CENTER, TEN_CROP):
        errs = topk_errs(load_probs(probs[view]), labels) if view in probs else {"top1_err": float("nan"),
                                                                                "top5_err": float("nan")}
        row.update({f"{view}_{k}": v for k, v in errs.items()})
    # Overfitting: the training images' error measured as val's is (centre crops, eval mode) minus
    # the centre val error. The error of the last epoch's augmented batches in training mode would
    # not do: dropout and augmentation raise it, so the variants without them would look overfitted.
    row["train_top1_err"] = member.errors(paths.shards)["top1_err"]
    row["train_minus_val"] = row["train_top1_err"] - row["center_top1_err"]
    # As evaluate logs them ("center.top1_err"), so `python -m alexnet.compare` shows a study's runs too.
    tracker.log_metrics(run_id, {**{view: {k: row[f"{view}_{k}"] for k in ("top1_err", "top5_err")}
                                    for view in (CENTER, TEN_CROP)},
                                 "train_top1_err": row["train_top1_err"], "train_minus_val": row["train_minus_val"]})
    finish(tracker, run_id, [Path(trained["history"])])
    return row


def _val_labels(shards: Path):
    import torch

    return torch.from_numpy(ShardSet(shards, VAL, verify=False).labels)
