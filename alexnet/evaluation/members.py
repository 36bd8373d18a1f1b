"""The predict side of a member: its exported weights loaded (checksum-verified), its probabilities on a split.

Centre crops and the ten patches of §4.1, in eval mode. Nothing here is in the training closure
(alexnet/training/member.py's): changing how members are evaluated reruns no training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alexnet.config.sections import Params
from alexnet.core.layout import CENTER, TEN_CROP, TRAIN, VAL
from alexnet.evaluation.reports import predictions_file, save_probs
from alexnet.loading import loader as loaders
from alexnet.model.network import build_model
from alexnet.training.checkpoint import load_checkpoint
from alexnet.training.heap import keep_freed_memory
from alexnet.training.metrics import topk_errs
from alexnet.training.precision import resolve_precision
from alexnet.training.predict import predict


def load_member(path: Path, params: Params, devices: tuple[str, ...] | None = None) -> torch.nn.Module:
    """Rebuild a member from its exported file, placed on `devices` (default: params.model.devices)."""
    state = load_checkpoint(path)
    cfg = params.model if devices is None else params.model.model_copy(update={"devices": devices})
    model = build_model(cfg, int(state["meta"]["num_classes"]))
    model.load_state_dict(state["model"])
    return model.eval()


class LoadedMember:
    """A member's exported weights, loaded and checksum-verified once, to predict any split with."""

    def __init__(self, model_path: Path, params: Params) -> None:
        if params.train.keep_freed_memory:
            keep_freed_memory()
        self.params = params  # on self alone: scripts/dvc_deps.py follows it into the methods
        self.name = model_path.parent.name
        self.model = load_member(model_path, params)

    def predict_val(self, shards_dir: Path, out_dir: Path, progress: bool = True) -> dict[str, str]:
        """Class probabilities of every val image for the centre crop and (if enabled) the ten patches,
        saved under out_dir; {view: path}."""
        out: dict[str, str] = {}
        views = {CENTER: False, **({TEN_CROP: True} if self.params.evaluate.ten_crop else {})}
        for view, ten in views.items():
            probs, _ = _predict_split(self.model, self.params, shards_dir, VAL, ten, f"{self.name} {view}",
                                      progress)
            path = out_dir / predictions_file(self.name, view)
            save_probs(path, probs)
            out[view] = str(path)
        return out

    def errors(self, shards_dir: Path, split: str = TRAIN, progress: bool = False) -> dict[str, float]:
        """Top-1/top-5 error on a split's images measured as val is: centre crops, eval mode (no dropout,
        no lighting). On the training images it is what the network fits, whatever the variant's
        dropout and augmentation, so train minus val compares overfitting across variants."""
        probs, labels = _predict_split(self.model, self.params, shards_dir, split, False,
                                       f"{self.name} {split}", progress)
        return topk_errs(probs, labels)


def predict_member(
    model_path: Path, params: Params, *, shards_dir: Path, out_dir: Path, progress: bool = True
) -> dict[str, str]:
    """LoadedMember.predict_val of the member at model_path."""
    return LoadedMember(model_path, params).predict_val(shards_dir, out_dir, progress)


def _predict_split(model: torch.nn.Module, params: Params, shards_dir: Path, split: str, ten: bool, desc: str,
                   progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    device = params.model.devices[0]
    data = loaders.EvalLoader(
        shards_dir, split, batch_size=params.evaluate.batch_size, crop_size=params.model.crop_size,
        ten_crop=ten, workers=loaders.resolve_workers(params.train.workers), divisor=params.model.input_scale,
        pin_memory=torch.device(device).type == "cuda",
        finish_on=loaders.finish_device(params.train.finish, device),
    )
    with data:
        return predict(model, data, device=device, precision=resolve_precision(params.train.precision, device),
                       total=len(data), desc=desc, progress=progress)
