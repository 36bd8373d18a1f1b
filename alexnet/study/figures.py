"""Figures 3 and 4 and what the LRN does, measured on every trained run of the figures variant.

Per run (cached beside it, like its row): the towers' colour specialisation with its permutation p
(Figure 3), the fc7 nearest-neighbour accuracy over every val image against chance (Figure 4), and
the spread of the LRN's scale factor (is it more than a constant gain?). The first run's pictures
go to the runs' files; every run's numbers go to figures.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from alexnet.core.atomic import atomic_write_json
from alexnet.core.closure import closure_fingerprint
from alexnet.core.layout import FIGURE3_FILE, FIGURE4_FILE, FIGURES_DIR, FIGURES_JSON, TRAIN, VAL
from alexnet.data.shards import ShardSet
from alexnet.evaluation.figures import figure3, figure4, knn_accuracy, specialisation, split_features
from alexnet.evaluation.lrn_scale import lrn_scale_spread
from alexnet.evaluation.members import load_member
from alexnet.study.data import StudyData
from alexnet.study.spec import StudySpec, seeds_of, variant_params

NEIGHBOUR_COUNTS = (1, 6)  # 1-NN, and a vote of the six the paper's Figure 4 shows


def measure_figures(spec: StudySpec, row: Mapping[str, Any], paths: Any, data: StudyData) -> dict[str, Any]:
    """Figure 3's and 4's numbers and the LRN's scale for one trained run (pictures for the first seed)."""
    where = paths.run_dir(row["label"]) / FIGURES_DIR
    key = f"{row['key']}:{closure_fingerprint(__name__)}"
    if (where / FIGURES_JSON).is_file() and (cached := json.loads((where / FIGURES_JSON).read_text()))["key"] == key:
        return cached
    params = variant_params(spec, row["variant"], row["seed"], data_root=data.root, tuned=row["tuned"])
    model = load_member(Path(row["model"]), params, devices=("cpu",))
    crop, divisor = params.model.crop_size, params.model.input_scale
    feats = split_features(model, data.shards, crop_size=crop, divisor=divisor)
    labels = {s: torch.from_numpy(ShardSet(data.shards, s, verify=False).labels).long() for s in (TRAIN, VAL)}
    classes = len(ShardSet(data.shards, VAL, verify=False).classes)
    out: dict[str, Any] = {
        "key": key, "label": row["label"], "seed": row["seed"],
        "specialisation": specialisation(model, seed=row["seed"]),
        "knn": {f"k{k}": knn_accuracy(feats[TRAIN], labels[TRAIN], feats[VAL], labels[VAL], k)
                for k in NEIGHBOUR_COUNTS},
        "chance": 1 / classes, "val_images": int(labels[VAL].numel()), "lrn": _lrn(model, params, data),
    }
    if row["seed"] == seeds_of(spec, spec.figures_variant)[0]:
        figure3(model, where / FIGURE3_FILE)
        figure4(model, data.shards, where / FIGURE4_FILE, crop_size=crop, divisor=divisor, names=spec.class_names,
                feats=feats)
        out["pictures"] = [str(where / FIGURE3_FILE), str(where / FIGURE4_FILE)]
    atomic_write_json(where / FIGURES_JSON, out)
    return out


def _lrn(model: torch.nn.Module, params: Any, data: StudyData) -> dict[str, Any]:
    from alexnet.loading.loader import EvalLoader

    with EvalLoader(data.shards, VAL, batch_size=100, crop_size=params.model.crop_size, ten_crop=False, workers=1,
                    divisor=params.model.input_scale) as batches:
        return lrn_scale_spread(model, batches)


def write_figure_files(figures: Sequence[Mapping[str, Any]], out: Path) -> None:
    """figures/figures.json (every run's numbers) and the first run's pictures into the runs' files."""
    folder = out / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for f in figures:
        for picture in f.get("pictures", []):
            shutil.copyfile(picture, folder / Path(picture).name)
    atomic_write_json(folder / FIGURES_JSON, [{k: v for k, v in f.items() if k not in ("key", "pictures")}
                                              for f in sorted(figures, key=lambda f: f["seed"])])
