"""A study's runs, each step a plain function that flows/study.py wraps in a task.

`prepare_study_data` builds the one dataset every variant reads (skipped when its params are
unchanged), `start_study_tracking` opens one MLflow parent run for the study, `run_variant_seed`
trains one (variant, seed) with alexnet.member.train_member into its own nested run, tagged with
both, and predicts the val and training images with one alexnet.member.LoadedMember. No second
training loop: a retried run resumes from train_member's checkpoint, and a finished one is not
trained again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.atomic import atomic_write_json
from alexnet.config import flatten
from alexnet.ensemble import dataset_name, entry_point
from alexnet.evaluate import load_probs
from alexnet.layout import CENTER, TEN_CROP, VAL
from alexnet.member import LoadedMember, train_member
from alexnet.metrics import topk_errs
from alexnet.provenance import fingerprint, git_commit
from alexnet.shards import ShardSet, data_version
from alexnet.study import StudySpec, variant_params
from alexnet.tracking import Tracker, check_tracking, local_artifact_root, provenance_tags, resolve_tracking_uri

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


def prepare_study_data(spec: StudySpec, paths: StudyPaths) -> str | None:
    """Prepare and preprocess the study's dataset into paths.work/data, unless built from the same params.

    Returns the data root the variants read (the subset tree, or None for the base's own).
    """
    from alexnet.prepare import prepare
    from alexnet.preprocess import preprocess
    from alexnet.study import subset_tree

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

    try:
        trained = train_member(0, params, prepared_dir=paths.prepared, shards_dir=paths.shards,
                               models_dir=where / "models", history_dir=where / "history",
                               checkpoints_dir=where / "checkpoints", on_epoch=after_epoch, progress=False)
        member = LoadedMember(Path(trained["model"]), params)  # verified once, for val and train alike
        probs = member.predict_val(paths.shards, where / "predictions", progress=False)
    except BaseException:
        tracker.end(run_id, status="FAILED")
        raise
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
    tracker.log_artifacts(run_id, [Path(trained["history"])])
    tracker.end(run_id)
    return row


def _val_labels(shards: Path):
    import torch

    return torch.from_numpy(ShardSet(shards, VAL, verify=False).labels)
