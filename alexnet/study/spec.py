"""A study file: the paper's claims of §3-§4 (docs/paper.md) as variants of one configuration, over seeds,
with the design that judges them fixed before any run.

A study file (params/study*.yaml) names a base params file, overrides for every run, the variants
(each a few params over the base, its seeds, and optionally a learning-rate grid to tune it on),
the claims (each a variant against the baseline, the metric and the effect the paper reports) and
the design: the primary metric, the test (paired t over seeds, Holm over the claims), alpha, the
power wanted, the pilot that measures the SD of paired differences, and the training rule that
flags a run that did not train. Every (variant, seed) is one member trained with `train.seed` =
the seed, so a variant and the baseline on one seed share their batch order and augmentation
draws: their per-seed difference is the comparison (alexnet/study/stats.py).

Data: the first `heldout_per_class` training images of each class (by name) are held out to pick
learning rates; the next `train_per_class` (or all the rest) are trained on. The val set picks
nothing: it is measured once, at the end of each run. All variants read one dataset.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alexnet.config.file import ParamsError, read_params_file
from alexnet.config.params import parse_params
from alexnet.config.sections import Params

BASELINE = "baseline"
METRICS = ("center_top1_err", "center_top5_err", "ten_crop_top1_err", "ten_crop_top5_err", "train_minus_val")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Variant(_Strict):
    """One configuration: params over the base, its seeds, and a grid to tune one param on the held-out slice."""

    params: dict[str, Any] = {}
    seeds: int | list[int] | None = None  # a count (seeds 0..n-1), a list, or None: the study's seeds
    # One dotted params key and its grid, e.g. {"train.lr": [0.003, 0.01, 0.03]}: each value trained
    # once (the study's tune_seed) and judged by its centre top-1 error on the held-out slice.
    tune: dict[str, list[float]] = {}
    # How a grid value is judged: "heldout_error", the centre top-1 error on the held-out slice of a
    # run trained on the study's training images; "epochs_to_target", the epochs a run trained on the
    # held-out slice alone takes to reach design.figure1's training error (training as fast as
    # possible, Figure 1's criterion).
    tune_by: Literal["heldout_error", "epochs_to_target"] = "heldout_error"

    @field_validator("tune")
    @classmethod
    def _one_key(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        if len(v) > 1 or any(len(grid) < 2 for grid in v.values()):
            raise ValueError("tune: one params key with a grid of at least two values")
        return v


class Claim(_Strict):
    """A claim of the paper: undoing its choice (`variant`) changes `metric` by `effect` against `against`."""

    variant: str
    against: str = BASELINE
    section: str  # "§3.3"
    says: str  # what the paper claims, in a few words
    metric: str = "ten_crop_top1_err"
    # The change the study is designed to detect (the paper's, where it gives one), signed as the
    # paper expects: +0.014 = the variant's error 1.4 points higher.
    effect: float
    note: str = ""  # said in advance, e.g. "out of reach on this hardware"

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"metric: {v!r}; one of {', '.join(METRICS)}")
        return v


class Figure1(_Strict):
    """Figure 1's protocol: epochs to a training error, the fast and the slow nonlinearity, per seed."""

    fast: str = "relu"
    slow: str = "tanh"
    target_train_err: float = Field(0.25, gt=0, lt=1)  # the paper's
    # Stated before the runs: used only if the fast variant's runs do not reach the target at all.
    fallback_train_err: float | None = Field(None, gt=0, lt=1)


class Design(_Strict):
    """Fixed before any run: what is measured, how it is judged, and how much it can show."""

    metric: str = "ten_crop_top1_err"  # the primary metric
    test: Literal["paired_t"] = "paired_t"
    correction: Literal["holm"] = "holm"
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    pilot_variants: list[str] = [BASELINE]  # the runs that measure the SD of paired differences first
    pilot_seeds: int = Field(3, ge=2)
    # The training rule: a run whose final val error is within chance_margin of chance (1 - 1/classes),
    # or whose training loss ends non-finite or above ln(classes), did not train.
    chance_margin: float = Field(0.01, ge=0, lt=1)
    previous_sd: float | None = None  # the SD of paired differences of the design this one replaces
    figure1: Figure1 | None = None


class StudySpec(_Strict):
    """A study file, validated. Paths are relative to the project root (DVC runs the stage there)."""

    name: str = Field("study", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    base: Path = Path("params.yaml")  # the params file every variant starts from
    overrides: dict[str, Any] = {}  # for every run (shorter runs, another dataset)
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    variants: dict[str, Variant] = {BASELINE: Variant()}
    claims: list[Claim] = []
    design: Design = Design()
    concurrency: int = Field(1, ge=1)  # runs side by side
    retries: int = Field(1, ge=0)  # a failed run is retried and resumes from its checkpoint
    train_per_class: int | None = Field(None, ge=1)  # null: every training image not held out
    heldout_per_class: int = Field(0, ge=0)  # picks learning rates (`tune`); 0: no held-out slice
    tune_seed: int = 1000  # the seed of the tuning runs, none of the study's own
    figures_variant: str = BASELINE  # whose runs Figures 3 and 4 are measured on
    class_names: dict[str, str] = {}  # wnid -> readable name, for the figures (a folder tree has only wnids)

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if BASELINE not in self.variants and not self.design.figure1:
            raise ValueError(f"variants: no {BASELINE!r}; every variant is compared with it")
        for name, variant in self.variants.items():
            for section in ("data", "preprocess"):
                if section in variant.params:
                    raise ValueError(f"variants.{name}: changes {section}; a study compares variants on one "
                                     f"dataset (set it in overrides)")
            if variant.tune and not self.heldout_per_class:
                raise ValueError(f"variants.{name}.tune needs heldout_per_class: the val set picks nothing")
            if len(set(seeds_of(self, name))) != len(seeds_of(self, name)):
                raise ValueError(f"variants.{name}.seeds repeat")
        names = set(self.variants)
        for claim in self.claims:
            if {claim.variant, claim.against} - names:
                raise ValueError(f"claims: {claim.variant} against {claim.against}: not variants of this study")
        fig1 = self.design.figure1
        if fig1 and {fig1.fast, fig1.slow} - names:
            raise ValueError(f"design.figure1: {fig1.fast} and {fig1.slow} must be variants")
        if self.figures_variant not in names and not fig1:
            raise ValueError(f"figures_variant: {self.figures_variant!r} is not a variant")
        if set(self.design.pilot_variants) - names:
            raise ValueError(f"design.pilot_variants: {self.design.pilot_variants} are not all variants")
        return self


def seeds_of(spec: StudySpec, variant: str) -> list[int]:
    """The seeds `variant` runs with: its own count or list, else the study's."""
    seeds = spec.variants[variant].seeds
    if seeds is None:
        return list(spec.seeds)
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


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
    for name, variant in spec.variants.items():
        variant_params(spec, name, seeds_of(spec, name)[0], source=str(path))
        for key, grid in variant.tune.items():
            for value in grid:
                variant_params(spec, name, spec.tune_seed, tuned={key: value}, source=str(path))
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


def dotted(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.03} -> {"train": {"lr": 0.03}}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = value
    return out


def variant_params(spec: StudySpec, variant: str, seed: int, data_root: Path | None = None,
                   tuned: Mapping[str, Any] | None = None, source: str = "study") -> Params:
    """The params of one (variant, seed): base, overrides, the variant's params, its tuned values, that seed.

    data_root replaces data.root (the study's subset of the training images).
    """
    if variant not in spec.variants:
        raise ValueError(f"{source}: no variant {variant!r}; variants: {', '.join(spec.variants)}")
    raw = merge(merge(read_params_file(spec.base) or {}, spec.overrides), spec.variants[variant].params)
    raw = merge(raw, dotted(tuned or {}))
    raw = merge(raw, {"train": {"seed": seed}, "ensemble": {"members": 1}})
    if data_root is not None:
        raw = merge(raw, {"data": {"root": str(data_root)}})
    return parse_params(raw, f"{source}: variants.{variant} (on {spec.base})")
