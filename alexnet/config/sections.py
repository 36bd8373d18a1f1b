"""The params sections as typed, frozen objects: one class per section of params.yaml, Params over them.

The field defaults are the paper's settings (docs/paper.md); params.yaml holds the project's
default demo profile, and every place it departs from the paper is a named key. Unknown keys,
wrong types and impossible values fail validation naming the key (alexnet/config/params.py
loads and checks across sections).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Section(BaseModel):
    # frozen: params are facts of a run, never mutated; forbid: a typo is an error, not a no-op.
    # allow_inf_nan=False: an infinite or NaN float (YAML .inf, .nan) is refused in every field.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1, 2.0 as 2 and "0.01" as 0.01. In a params file each
        # is a slip more often than a wish (members: true), so a number field takes a YAML number:
        # an int field a whole number written as one (2, not 2.0), a float field any finite number.
        # Being on the base section, this covers every field, including ones added later.
        field = cls.model_fields.get(info.field_name or "")
        kinds = _scalar_kinds(field.annotation) if field else set()
        if bool in kinds and type(value) is not bool and not kinds & {str, int, float, type(None)} - {bool}:
            # A boolean takes true or false. `yes`, `on` (and their opposites) are strings in YAML 1.2, as
            # DVC reads params: were they accepted here, `dvc params diff` and the run would disagree.
            raise ValueError("true or false is expected (YAML 1.2, as DVC reads params, keeps yes/no/on/off strings)")
        if not kinds & {int, float} or type(value) in kinds:
            return value
        if isinstance(value, bool):
            raise ValueError("a boolean where a number is expected")
        if isinstance(value, float) and float not in kinds:
            raise ValueError("a whole number is expected")
        if isinstance(value, str) and str not in kinds:
            raise ValueError("a number is expected, not a string (remove the quotes)")
        return value


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field takes: int | None -> {int, NoneType}; Literal[1, 2] -> {int}."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    return {annotation} if isinstance(annotation, type) else set()


class SyntheticParams(_Section):
    """The built-in synthetic ImageNet-layout dataset (the default source)."""

    classes: int = Field(10, ge=2, le=1000)
    # Bounded so that a slip (an extra 0, a stray exponent) fails here, not as a 70 GB allocation.
    train_per_class: int = Field(150, ge=1, le=10_000)
    val_per_class: int = Field(50, ge=1, le=10_000)
    min_side: int = Field(150, ge=32, le=4096)
    max_side: int = Field(500, ge=32, le=4096)
    seed: int = 0

    @model_validator(mode="after")
    def _sides(self) -> SyntheticParams:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side={self.min_side} must not exceed max_side={self.max_side}")
        return self


# PIL.Image.MAX_IMAGE_PIXELS (1024**3 // 4 // 3), written out so loading params needs no Pillow;
# tests/faults/test_bad_images.py checks they agree.
PILLOW_MAX_IMAGE_PIXELS = 89_478_485


class DataParams(_Section):
    source: Literal["synthetic", "imagenet", "folder"] = "synthetic"
    # Root of the image tree for source=imagenet|folder (relative to the project root).
    root: Path | None = None
    on_bad_image: Literal["skip", "fail"] = "skip"
    # source=imagenet only: "tars" reads the official ILSVRC-2012 release as downloaded (the train
    # and val tars and the devkit, never extracted); "tree" an extracted train/ + val/ tree; "auto"
    # picks "tars" when root holds the three files (alexnet/data/ilsvrc.py), else "tree".
    layout: Literal["auto", "tree", "tars"] = "auto"
    # An image with more pixels (width x height, read from its header) is unusable ("too many
    # pixels": a decompression bomb, or a scan too big to decode), before any pixel is decoded.
    # Default: Pillow's own limit (PIL.Image.MAX_IMAGE_PIXELS), but enforced at the limit itself,
    # where Pillow only warns until twice it. null: no limit. Preprocess decodes with the limit
    # prepare checked (recorded in dataset.json), in every worker.
    max_image_pixels: int | None = Field(PILLOW_MAX_IMAGE_PIXELS, ge=1)
    synthetic: SyntheticParams = SyntheticParams()

    @model_validator(mode="after")
    def _root(self) -> DataParams:
        if self.source != "synthetic" and self.root is None:
            raise ValueError(f"root is required when source={self.source!r} (a folder holding train/ and val/)")
        return self


class PreprocessParams(_Section):
    stored_size: int = Field(256, ge=32, le=1024)  # §2: shorter side -> 256, central 256x256
    format: Literal["raw", "jpeg"] = "raw"
    jpeg_quality: int = Field(90, ge=1, le=100)
    shard_size: int = Field(1024, ge=1)  # images per shard
    workers: int = Field(2, ge=1)
    # §2's resize + centre crop: byte-equal to torchvision's Resize + CenterCrop, or the central
    # square in exact geometry with one resample (faster; see alexnet/data/imageops.py).
    resize: Literal["torchvision", "central_square"] = "torchvision"
    # Where shards are built: "local" (a process pool of `workers`) or "dask": the cluster at
    # dask_address (e.g. tcp://scheduler:8786; workers must see the same data and output paths),
    # or, when null, a local Dask cluster of `workers` processes on 127.0.0.1. Same bytes either way.
    engine: Literal["local", "dask"] = "local"
    dask_address: str | None = None


class ModelParams(_Section):
    # "alexnet": the network of Figure 2. "figure1_cnn": the small network of Figure 1's experiment (three
    # 5x5 convolutions and one fully connected layer, for 32x32 images; docs/paper.md §3.1), which has
    # one tower, no normalisation and no dropout.
    arch: Literal["alexnet", "figure1_cnn"] = "alexnet"
    towers: Literal[1, 2] = 2  # §3.2: two towers, half of the kernels each
    # towers=1 only. "full": one tower with the two towers' kernel counts; "half": the paper's §3.2
    # baseline, conv1-conv4 with half the kernels, conv5 and the fully connected layers full size.
    width: Literal["full", "half"] = "full"
    activation: Literal["relu", "tanh"] = "relu"  # §3.1: ReLU; tanh is Figure 1's comparison
    # The normalisation (§3.3). "lrn": the paper's, after conv1's and conv2's ReLU; "none"; "batchnorm":
    # batch normalisation in the LRN's two places; "batchnorm_every_conv": batch normalisation where it
    # is usually put, after every convolution and before its nonlinearity. Batch norm: one device only.
    norm: Literal["lrn", "none", "batchnorm", "batchnorm_every_conv"] = "lrn"
    lrn_impl: Literal["fast", "torch"] = "fast"  # same formula; "torch" is nn.LocalResponseNorm
    # CUDA only, how the "fast" LRN runs there: "triton" one fused kernel pass forward and one backward
    # (alexnet/model/lrn_triton.py), "compiled" the windowed formula through torch.compile, "eager" that
    # formula op by op (no compile time). Each falls back to the next when it cannot run.
    lrn_gpu: Literal["triton", "compiled", "eager"] = "triton"
    pooling: Literal["overlapping", "non_overlapping"] = "overlapping"  # §3.4: 3/2 vs 2/2
    # None: the number of classes in the prepared dataset.
    num_classes: int | None = Field(None, ge=2)
    crop_size: int = Field(224, ge=32)  # §4.1: 224x224 patches of the 256x256 image
    # One device, or two: tower A on the first, tower B on the second (§3.2).
    devices: tuple[str, ...] = ("cpu",)
    init: Literal["paper", "kaiming"] = "paper"  # §5: N(0, 0.01), biases 1 in conv2,4,5, fc6,7
    dropout: float = Field(0.5, ge=0.0, lt=1.0)  # §4.2
    # The network sees (pixel - mean image) / input_scale. The paper: 1 (raw 0..255 units, which its
    # N(0, 0.01) init is sized for). Kaiming init expects unit-variance inputs: about 58.
    input_scale: float = Field(1.0, gt=0.0)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) not in (1, 2):
            raise ValueError(f"give one or two devices, got {len(v)}: {list(v)}")
        for d in v:
            if not (d == "cpu" or d == "cuda" or d.startswith("cuda:") or d == "mps"):
                raise ValueError(f"unknown device {d!r}; allowed: cpu, cuda, cuda:N, mps")
        return v

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "lrn" in raw:
            was = raw["lrn"]
            instead = {True: "norm: lrn", False: "norm: none"}.get(was, "norm: lrn or norm: none")
            raise ValueError(f"lrn: {was} is retired; write {instead} instead (model.norm names the normalisation)")
        return raw

    @model_validator(mode="after")
    def _switches(self) -> ModelParams:
        if self.width == "half" and self.towers != 1:
            raise ValueError("width: half is the one-tower baseline of §3.2; it needs towers: 1")
        if self.norm.startswith("batchnorm") and len(self.devices) != 1:
            raise ValueError(f"norm: {self.norm} runs on one device; give one device")
        figure1 = (self.towers, self.norm, self.dropout, len(self.devices))
        if self.arch == "figure1_cnn" and figure1 != (1, "none", 0, 1):
            raise ValueError("arch: figure1_cnn is one tower on one device without normalisation or dropout; "
                             "set towers: 1, norm: none, dropout: 0 and one device")
        return self

    @property
    def layout(self) -> str:
        """"two_towers", "one_tower_full" or "one_tower_half" (the paper's §3.2 baseline)."""
        return "two_towers" if self.towers == 2 else f"one_tower_{self.width}"


class AugmentParams(_Section):
    random_crop: bool = True  # §4.1: random 224 patches; false: always the centre patch
    flip: bool = True  # §4.1: horizontal reflections
    pca_lighting: bool = True  # §4.1: PCA colour augmentation
    pca_std: float = Field(0.1, ge=0.0)  # a_i ~ N(0, 0.1)
    # Units of the eigenvalues in [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T (alexnet/loading/augment.py says more):
    # unit_range = covariance of pixels in [0, 1] (a shift of a few levels), the common reading.
    pca_scale: Literal["unit_range", "sqrt", "pixel_range"] = "unit_range"


class TrainParams(_Section):
    seed: int = 0
    epochs: int = Field(90, ge=1, le=10_000)  # §5: about 90 epochs
    batch_size: int = Field(128, ge=1)  # §5
    lr: float = Field(0.01, gt=0.0)  # §5
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    # "plateau" (§5): lr times lr_factor when val error stops improving (lr_patience epochs without a
    # new best), lr_drops times, then stop at the next plateau. "step": lr times lr_factor after each
    # epoch listed in lr_steps, and always train.epochs epochs: the val set then decides nothing.
    schedule: Literal["plateau", "step"] = "plateau"
    lr_factor: float = Field(0.1, gt=0.0, lt=1.0)
    lr_patience: int = Field(5, ge=0)  # plateau: epochs without improvement before a drop
    lr_drops: int = Field(3, ge=0)  # plateau: drops before the last plateau stops training
    lr_steps: tuple[int, ...] = ()  # step: the epochs (1-based) after which lr drops
    # The val pass after every val_every-th epoch and the last (schedule plateau needs every one):
    # with a fixed schedule the val error decides nothing, and a pass over it costs half an epoch.
    val_every: int = Field(1, ge=1)
    # A linear warm-up of the learning rate over the first warmup_epochs epochs, step by step from
    # lr / steps to lr (not in the paper; batch normalisation is often trained with one).
    warmup_epochs: float = Field(0.0, ge=0.0)
    # "paper": v <- m v - wd eps w - eps g (§5); "pytorch": torch.optim.SGD's v <- m v + g + wd w.
    update_rule: Literal["paper", "pytorch"] = "paper"
    # auto: bf16 where the hardware computes it natively (AVX-512 BF16/AMX CPUs, bf16 GPUs), else fp32.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    deterministic: bool = False
    # Background loader processes; "auto": the cores this process may use, less one (at least 1).
    workers: int | Literal["auto"] = 2
    # Where a batch is finished (float conversion, mean windows, lighting) from its uint8 crops:
    # "cpu" the main process, "device" the training device (alexnet/loading/device_finish.py; the same
    # batch bit for bit, a quarter of the bytes to copy to a GPU), "auto" the device when it is a GPU.
    finish: Literal["auto", "cpu", "device"] = "auto"
    # Whole-model torch.compile: fewer kernels on a GPU; fused ops round differently from eager
    # ones, so a compiled run's weights differ from an eager run's (it is part of the run key).
    compile: bool = False
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None: torch's default
    # glibc keeps freed memory for the next step instead of unmapping it (alexnet/training/heap.py): the
    # paper model's CPU training step 1.2x faster at batch 128; the process keeps its peak memory.
    keep_freed_memory: bool = True
    augment: AugmentParams = AugmentParams()
    # Data parallelism inside one member (alexnet/training/distributed.py): DDP ranks on this machine
    # (torchrun's --nproc-per-node). The global batch stays batch_size; each rank takes a slice.
    replicas: int = Field(1, ge=1)
    # bf16: gradients rounded to bf16 for the all-reduce (DDP's bf16_compress_hook): half the bytes,
    # different numbers. Only used when the world size is above 1.
    grad_compression: Literal["none", "bf16"] = "none"
    max_restarts: int = Field(0, ge=0)  # torchrun --max-restarts when the stage launches it
    rendezvous_timeout: int = Field(300, ge=1)  # seconds a rank waits for the others to join

    @model_validator(mode="after")
    def _steps(self) -> TrainParams:
        if self.schedule == "step" and any(not 1 <= e < self.epochs for e in self.lr_steps):
            raise ValueError(f"lr_steps: {list(self.lr_steps)} must be epochs in 1..{self.epochs - 1}")
        if self.schedule == "plateau" and self.val_every != 1:
            raise ValueError(f"val_every: {self.val_every} needs schedule: step; the plateau schedule reads the val "
                             "error after every epoch")
        if self.schedule == "plateau" and self.lr_steps:
            raise ValueError("lr_steps is for schedule: step; with schedule: plateau the val error decides the drops")
        if list(self.lr_steps) != sorted(set(self.lr_steps)):
            raise ValueError(f"lr_steps: {list(self.lr_steps)} must increase")
        return self

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        # One line for a bad value, not one per member of the union.
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError('a number of processes >= 1 or "auto" is expected')


class EvaluateParams(_Section):
    batch_size: int = Field(128, ge=1)
    ten_crop: bool = True  # §4.1: four corners + centre and their mirrors


class EnsembleParams(_Section):
    # §6: the paper averages 5. At most 100: each member is a whole training run (disk and time are
    # checked against what the members need before any work, alexnet/pipeline/preflight.py).
    members: int = Field(1, ge=1, le=100)
    concurrency: int = Field(1, ge=1, le=64)  # members trained side by side
    retries: int = Field(1, ge=0)
    # The pool members take disjoint device groups from (alexnet/training/placement.py), e.g. cuda:0..cuda:7;
    # None: every member on model.devices (one group). Where a member runs never changes its weights.
    devices: tuple[str, ...] | None = None
    # "threads": Prefect's thread pool in this process; "ray": each member a Ray task (many machines).
    runner: Literal["threads", "ray"] = "threads"
    # With runner "ray": a cluster ("ray://HEAD:10001", "HEAD:6379"); None starts a local Ray for the run.
    ray_address: str | None = None

    @field_validator("devices")
    @classmethod
    def _pool(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and not v:
            raise ValueError("an empty pool; give devices, or null for model.devices")
        return v


class TrackingParams(_Section):
    # Where runs are logged: $MLFLOW_TRACKING_URI when set (MLflow's own convention: the environment
    # wins), else this, else sqlite:///mlflow.db in the project. It changes no result, so no stage
    # reruns for it (scripts/dvc_deps.py counts it among the runtime knobs).
    uri: str | None = None
    experiment: str = Field("alexnet", min_length=1)
    registered_model: str = Field("alexnet-ensemble", min_length=1)


class Params(_Section):
    data: DataParams = DataParams()
    preprocess: PreprocessParams = PreprocessParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    ensemble: EnsembleParams = EnsembleParams()
    tracking: TrackingParams = TrackingParams()
