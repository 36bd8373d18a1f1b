"""A study (issue 14): the claims of §3-§4 of docs/paper.md as variants of one configuration, over seeds.

A study file (params/study.yaml) names a base params file, overrides for every run, the seeds
and the variants, each a few overrides of the base (`no_lrn: {model: {norm: none}}`). Every
(variant, seed) is one ensemble member trained by alexnet.training.member.train_member with
`train.seed` = seed, so a variant and the baseline with one seed share their initialisation
draws where the layers agree, the batch order and the augmentation draws: their per-seed
difference is the comparison (alexnet/study/stats.py). All variants read one dataset: a variant
may not change the data or preprocess sections.

This module is the spec, the data a study trains on, and the table maths; flows/study.py runs
it and alexnet/study/files.py writes the files.
"""

from __future__ import annotations

import copy
import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alexnet.config.file import ParamsError, read_params_file
from alexnet.config.params import parse_params
from alexnet.config.sections import Params
from alexnet.study.stats import Interval, paired, t_interval

BASELINE = "baseline"
# One row per (variant, seed): the figures a study compares, all errors as fractions.
RESULT_FIELDS = ("variant", "seed", "center_top1_err", "center_top5_err", "ten_crop_top1_err",
                 "ten_crop_top5_err", "train_top1_err", "train_minus_val", "epochs")
ERRORS = ("center_top1_err", "center_top5_err", "ten_crop_top1_err", "ten_crop_top5_err")
# The paper's claims (docs/paper.md): the change of top-1 / top-5 error when its choice is undone.
PAPER_CLAIMS = {
    "no_lrn": ("§3.3 local response normalisation", 0.014, 0.012),
    "non_overlapping_pool": ("§3.4 overlapping pooling", 0.004, 0.003),
    "one_tower": ("§3.2 two towers vs the half-kernel one-tower net", 0.017, 0.012),
}


class StudySpec(BaseModel):
    """A study file, validated. Paths are relative to the project root (DVC runs the stage there)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("study", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    base: Path = Path("params.yaml")  # the params file every variant starts from
    overrides: dict[str, Any] = {}  # applied to the base for every variant (shorter runs, another dataset)
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    variants: dict[str, dict[str, Any]] = {BASELINE: {}}
    concurrency: int = Field(1, ge=1)  # (variant, seed) runs side by side
    retries: int = Field(1, ge=0)  # a failed run is retried and resumes from its checkpoint
    # A fixed subset of the training images: the first N files of each class by name (folder and
    # imagenet sources). Validation images are all kept. null: every image.
    train_per_class: int | None = Field(None, ge=1)
    # Figure 1: the training error at which ReLU's and tanh's epochs are compared (the paper: 0.25).
    target_train_err: float = Field(0.25, gt=0.0, lt=1.0)
    figures_variant: str = BASELINE  # whose seed-0 member Figures 3 and 4 show

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @model_validator(mode="after")
    def _variants(self) -> StudySpec:
        if BASELINE not in self.variants:
            raise ValueError(f"variants: no {BASELINE!r}; every variant is compared with it")
        for name, over in self.variants.items():
            if not isinstance(over, dict):
                raise ValueError(f"variants.{name}: overrides must be a mapping, got {over!r}")
            for section in ("data", "preprocess"):
                if section in over:
                    raise ValueError(f"variants.{name}: changes {section}; a study compares variants on one "
                                     f"dataset (set it in overrides)")
        if self.figures_variant not in self.variants:
            raise ValueError(f"figures_variant: {self.figures_variant!r} is not a variant")
        return self


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file, and every variant's params: bad input fails here, naming the key."""
    path = Path(path)
    try:
        spec = StudySpec.model_validate(read_params_file(path))
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in err.errors()]
        raise ParamsError(f"{path}: invalid study\n" + "\n".join(lines)) from None
    if not spec.base.is_file():
        raise FileNotFoundError(f"{path}: base: {spec.base} is not a file (from {Path.cwd()})")
    for variant in spec.variants:
        variant_params(spec, variant, spec.seeds[0], source=str(path))
    return spec


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid onto `base`, mappings merged key by key, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_params(spec: StudySpec, variant: str, seed: int, data_root: Path | None = None,
                   source: str = "study") -> Params:
    """The params of one (variant, seed): base, then overrides, then the variant's, one member, that seed.

    data_root replaces data.root (the study's subset of the training images).
    """
    if variant not in spec.variants:
        raise ValueError(f"{source}: no variant {variant!r}; variants: {', '.join(spec.variants)}")
    raw = merge(merge(read_params_file(spec.base) or {}, spec.overrides), spec.variants[variant])
    raw = merge(raw, {"train": {"seed": seed}, "ensemble": {"members": 1}})
    if data_root is not None:
        raw = merge(raw, {"data": {"root": str(data_root)}})
    return parse_params(raw, f"{source}: variants.{variant} (on {spec.base})")


def subset_tree(root: Path, out: Path, per_class: int) -> Path:
    """out/{train,val}: symlinks to the first `per_class` training files of each class (by name), all of val.

    A fixed subset: the same files whatever the order the file system lists them in.
    """
    root = root.resolve()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"data.root {root}: no {split}/ folder for train_per_class")
    out.mkdir(parents=True, exist_ok=True)
    _link(root / "val", out / "val")
    for cls in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
        target = out / "train" / cls.name
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(p for p in cls.iterdir() if p.is_file())[:per_class]:
            _link(f, target / f.name)
    return out


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    if dst.is_symlink():
        dst.unlink()
    dst.symlink_to(src)


# ---- the table -------------------------------------------------------------------------------


def epochs_to_reach(errors: Sequence[float], target: float) -> int | None:
    """The first epoch (1-based) whose training error is at or below target; None if never."""
    return next((i + 1 for i, e in enumerate(errors) if e <= target), None)


def summarise(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Per variant and figure: the mean over seeds with its interval, and the paired difference to baseline."""
    by = {v: {int(r["seed"]): r for r in rows if r["variant"] == v} for v in variants}
    base = by.get(BASELINE, {})
    out: dict[str, Any] = {}
    for v in variants:
        runs = by[v]
        if not runs:
            continue
        entry: dict[str, Any] = {"seeds": sorted(runs)}
        for key in (*ERRORS, "train_top1_err", "train_minus_val"):
            entry[key] = t_interval([float(r[key]) for r in runs.values()]).as_dict()
            if v != BASELINE and set(runs) & set(base):
                diff = paired({s: float(r[key]) for s, r in runs.items()}, {s: float(r[key]) for s, r in base.items()})
                entry[f"{key}_vs_baseline"] = diff.as_dict()
        out[v] = entry
    return out


def interval_of(d: Mapping[str, Any]) -> Interval:
    return Interval(d["mean"], d["low"], d["high"], d["n"], d["confidence"])


def figure1(histories: Mapping[tuple[str, int], Sequence[float]], target: float,
            fast: str = BASELINE, slow: str = "tanh") -> dict[str, Any]:
    """Figure 1: epochs to reach `target` training error for ReLU (`fast`) and tanh (`slow`), per seed,
    and their ratio (tanh / ReLU) with its interval over the seeds where both reached it."""
    epochs = {(v, s): epochs_to_reach(errs, target) for (v, s), errs in histories.items() if v in (fast, slow)}
    seeds = sorted({s for (_, s) in epochs})
    ratios = [epochs[(slow, s)] / epochs[(fast, s)] for s in seeds
              if epochs.get((slow, s)) and epochs.get((fast, s))]
    return {
        "target_train_err": target,
        "epochs": {f"{v}/seed-{s}": e for (v, s), e in sorted(epochs.items())},
        "ratio": t_interval(ratios).as_dict() if ratios else None,
        "seeds_with_both": len(ratios),
    }


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-run rows as CSV text (the atomic write is the caller's)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
